"""Commands over finished interpretation runs and the LLM they talk to: report (tables and plots of
scored runs), serve-llm (a local model behind an OpenAI-compatible API). Options: ReportConfig
(interpret/report.py), LlmServerConfig (interpret/llm_server.py)."""

from __future__ import annotations

from ..options import add_config_command, build_config


def cmd_report(a) -> None:
    from ..interpret.report import ReportConfig, write_report

    write_report(build_config(ReportConfig, a, a.config))


def cmd_serve_llm(a) -> None:
    from ..interpret.llm_server import LlmServerConfig, serve

    serve(build_config(LlmServerConfig, a, a.config))


def register(sub) -> None:
    from ..interpret.llm_server import LlmServerConfig
    from ..interpret.report import ReportConfig

    add_config_command(
        sub, "report", ReportConfig, cmd_report, help="summarise and compare interpretation runs (table + PNG plots)"
    )
    add_config_command(
        sub,
        "serve-llm",
        LlmServerConfig,
        cmd_serve_llm,
        help="serve a local chat model through an OpenAI-compatible HTTP API",
        description="POST /v1/chat/completions (with logprobs/top_logprobs), GET /v1/models. Concurrent "
        "requests are batched. Binds to loopback by default.",
    )
