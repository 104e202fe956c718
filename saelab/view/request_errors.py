"""How the web app answers a request it cannot serve: always one sentence, never raw validation JSON.

FastAPI answers a body or query that fails its schema (a feature id of -1 or "abc", a missing prompt) with
422 and pydantic's list of error objects, which the pages used to print as it was. `sentence` turns that
list into one line a person can act on ("the feature id must be a whole number, 0 or more; got -1"); the
handlers below give it, like every other refusal, as `{"detail": "..."}` to the API and as a small HTML
page to a person's browser (never a file, never a traceback).
"""

from __future__ import annotations

import html
import json

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from ..errors import UserError

ERROR_PAGE = (
    '<!doctype html><html lang="en"><head><meta charset="utf-8"><title>saelab: @TITLE@</title></head><body>'
    '<h1>@TITLE@</h1><p id="detail">@DETAIL@</p><p><a href="/">back to the app</a></p></body></html>'
)
# what a field is called in a sentence (the last name of its location; others by their own name)
FIELD_WORDS = {
    "latent": "the feature id",
    "i": "the feature id",
    "edits": "the edits",
    "value": "the edit's value",
    "max_new_tokens": "the number of tokens to generate",
    "temperature": "the temperature",
    "seed": "the seed",
    "strengths": "the strengths",
    "prompt": "the prompt",
    "text": "the text",
    "top": "the number of features per token",
    "feature": "the feature id",
}


def _got(value) -> str:
    try:
        shown = json.dumps(value)
    except (TypeError, ValueError):
        shown = repr(value)
    return shown if len(shown) <= 40 else shown[:37] + "..."


def _one(err: dict) -> str:
    loc = [p for p in err.get("loc", ()) if p not in ("body", "query", "path")]
    kind, ctx = err.get("type", ""), err.get("ctx") or {}
    if kind == "json_invalid":
        return "the request body is not valid JSON"
    names = [p for p in loc if isinstance(p, str)]
    what = FIELD_WORDS.get(names[-1], names[-1].replace("_", " ")) if names else "the request"
    if kind == "missing":
        return f"{what} is missing"
    got = f"; got {_got(err['input'])}" if "input" in err else ""
    if what == "the feature id" and kind in ("int_parsing", "int_type", "int_from_float", "greater_than_equal"):
        return f"the feature id must be a whole number, 0 or more{got}"
    if kind in ("greater_than_equal", "less_than_equal", "greater_than", "less_than"):
        bound = {"greater_than_equal": ">=", "less_than_equal": "<=", "greater_than": ">", "less_than": "<"}[kind]
        limit = next(iter(ctx.values()), "?")
        return f"{what} must be {bound} {limit}{got}"
    msg = str(err.get("msg", "is not valid"))
    return f"{what}: {msg[:1].lower()}{msg[1:]}{got}"


def sentence(errors: list[dict]) -> str:
    """pydantic's error list -> one line: the first problem, and how many more there are."""
    if not errors:
        return "the request is not valid"
    more = f" (and {len(errors) - 1} more problem{'s' if len(errors) > 2 else ''})" if len(errors) > 1 else ""
    return _one(errors[0]) + more


def _answer(request: Request, status: int, detail, headers=None):
    """JSON for the API, a small HTML page for a person's browser."""
    if request.url.path.startswith("/api/") or "text/html" not in request.headers.get("accept", ""):
        return JSONResponse({"detail": detail}, status_code=status, headers=headers)
    title = "Not found" if status == 404 else f"Error {status}"
    page = ERROR_PAGE.replace("@TITLE@", title).replace("@DETAIL@", html.escape(str(detail)))
    return HTMLResponse(page, status_code=status)


def add_error_handlers(api: FastAPI) -> None:
    """UserError -> 400, HTTPException -> its status, a schema failure -> 422, anything else -> 500: each
    with a one-line detail."""

    @api.exception_handler(UserError)
    async def user_error(request: Request, exc: UserError):
        return JSONResponse({"detail": str(exc)}, status_code=400)

    @api.exception_handler(Exception)
    async def unexpected(request: Request, exc: Exception):
        return JSONResponse({"detail": f"internal error ({type(exc).__name__})"}, status_code=500)

    @api.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException):
        return _answer(request, exc.status_code, exc.detail, exc.headers)

    @api.exception_handler(RequestValidationError)
    async def invalid(request: Request, exc: RequestValidationError):
        return _answer(request, 422, sentence(list(exc.errors())))
