"""`saelab serve`: a JSON request body with NaN / Infinity literals, or nested too deeply to parse, is a 400.

Why: Python's json (which FastAPI uses) accepts `NaN`, `Infinity` and `-Infinity`, which are not JSON, and
pydantic's float fields take them, so a steering strength of NaN would run and answer garbage. Checking
the literal once, here, covers every route and every float field, present and future. The body is read
(it is already bounded by web_app.limit_body, which runs outside this wrapper), parsed once with a
parse_constant that refuses, and handed on unchanged to the route.
"""

from __future__ import annotations

import json

from starlette.exceptions import HTTPException


class _NotJson(ValueError):
    pass


def _refuse(literal: str):
    raise _NotJson(f"request body has the literal {literal}, which is not JSON (send a finite number)")


def body_problem(body: bytes) -> str | None:
    """Why `body` is refused (a one-line reason), or None: NaN / Infinity literals and too deep nesting.
    A body that is otherwise malformed is left to the route (FastAPI's own 422 names the position)."""
    try:
        json.loads(body, parse_constant=_refuse)
    except _NotJson as e:
        return str(e)
    except RecursionError:
        return "request body is nested too deeply to parse"
    except ValueError:  # malformed JSON, bad UTF-8: the route's own validation answers
        return None
    return None


def guard_json(app):
    """ASGI wrapper: a JSON body that body_problem refuses -> 400 {"detail": reason}, before any route."""

    async def wrapped(scope, receive, send):
        if scope["type"] != "http" or scope.get("method") not in ("POST", "PUT", "PATCH"):
            return await app(scope, receive, send)
        headers = dict(scope.get("headers") or [])
        if b"json" not in headers.get(b"content-type", b""):
            return await app(scope, receive, send)
        chunks, more = [], True
        try:
            while more:
                msg = await receive()
                if msg["type"] != "http.request":  # the client left
                    return
                chunks.append(msg.get("body", b""))
                more = msg.get("more_body", False)
        except HTTPException as e:  # limit_body's 413 for a chunked body over the limit
            return await _answer(send, e.status_code, str(e.detail))
        body = b"".join(chunks)
        problem = body_problem(body) if body else None
        if problem:
            return await _answer(send, 400, problem)
        sent = False

        async def replay():
            nonlocal sent
            if sent:
                return await receive()
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}

        return await app(scope, replay, send)

    return wrapped


async def _answer(send, status: int, detail: str) -> None:
    body = json.dumps({"detail": detail}).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})
