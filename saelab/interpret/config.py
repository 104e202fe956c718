"""What `saelab explain` and `saelab score` take (and `explain` / `score` in the Python API): one
dataclass each, whose fields are the command's options. The LLM client's options are declared once
(`ClientOptions`) and shared by both."""

from __future__ import annotations

from dataclasses import dataclass

from ..errors import UserError
from ..option_checks import check_device, check_types, need_at_least, need_positive
from ..options import device_option, opt, out_option, overwrite_option, threads_option
from .examples import ExampleConfig
from .scorers import SCORERS

LATENTS_HELP = "latent ids: ranges and lists, `0-9,12` or `0 1 2` (both accepted)"


@dataclass(kw_only=True)
class ClientOptions:
    """The LLM that explains (explain) or judges (score), and the machine the local models run on."""

    client: str = opt("local", "local (a HF chat model in-process) | openai (any OpenAI-compatible server) | anthropic")
    llm: str | None = opt(
        None, "model: for local a model spec (none: embedded), for openai/anthropic the served model name"
    )
    base_url: str | None = opt(
        None,
        "server URL: openai: an OpenAI-compatible server, e.g. http://127.0.0.1:8000/v1 (none: $OPENAI_BASE_URL); "
        "anthropic: a Messages API base, without /v1 (none: $ANTHROPIC_BASE_URL, else Anthropic's)",
    )
    concurrency: int = opt(4, "parallel requests to an HTTP server")
    timeout: float = opt(60.0, "seconds per HTTP request")
    max_retries: int = opt(4, "retries with exponential backoff")
    price_in: float = opt(0.0, "USD per million prompt tokens, for cost accounting")
    price_out: float = opt(0.0, "USD per million completion tokens")
    batch_size: int = opt(8, "prompts per forward pass of the local client (64 or more on a GPU)")
    threads: int | None = threads_option()
    device: str = device_option()

    def client_options(self) -> dict:
        """The keywords of `clients.make_client` beyond kind, model and base URL."""
        return {
            "concurrency": self.concurrency,
            "timeout": self.timeout,
            "max_retries": self.max_retries,
            "batch_size": self.batch_size,
            "price_in": self.price_in,
            "price_out": self.price_out,
        }

    def check_client(self) -> None:
        check_types(self)
        need_at_least(self, 1, "concurrency", "batch_size", "threads")
        need_at_least(self, 0, "max_retries", "price_in", "price_out")
        need_positive(self, "timeout")
        check_device(self.device)


@dataclass(kw_only=True)
class _ExplainFields:
    cache: str = opt(help="latent cache folder (saelab cache)", positional=True)
    out: str = out_option("run folder")
    dictionary: str | None = opt(None, "which dictionary of the cache (needed when it holds several)")
    latents: list[int] | None = opt(None, LATENTS_HELP + " (none: --n-latents chosen at random)")
    n_latents: int = opt(200, "random latents to explain")
    explainer: str = opt("llm", "llm | stats (top tokens and contexts, no LLM)")
    show_activations: bool = opt(False, "show activation levels 1-9 after marked tokens")
    batch_latents: int = opt(4, "latents explained per generation batch")
    window: int = opt(32, "tokens per example")
    peak_index: int | None = opt(None, "position of the peak in the window (none: window*3//4)")
    n_explain: int = opt(40, "examples shown to the explainer")
    explain_sampling: str = opt("top", "top | quantiles")
    n_score_activating: int = opt(50, "activating scoring examples")
    n_score_random: int = opt(25, "random non-activating scoring examples")
    n_score_hard: int = opt(25, "hard-negative scoring examples")
    seed: int = opt(0, "seed for latent and example sampling")
    label: str | None = opt(None, "name of this run in reports (none: the folder name)")
    overwrite: bool = overwrite_option("a run made with other settings")


@dataclass(kw_only=True)
class ExplainConfig(ClientOptions, _ExplainFields):  # the explain options first, then the client's (--help order)
    """`saelab explain` / `saelab.explain`: explain latents of a latent cache with an LLM (or the statistical
    baseline) from their top and sampled activating examples; writes an interpretation run folder."""

    def validate(self) -> None:
        """Option values and the client's, before the cache opens (a UserError names the option)."""
        self.check_client()
        if self.explainer not in ("llm", "stats"):
            raise UserError(f"--explainer must be llm or stats, not {self.explainer!r}")
        if self.batch_latents < 1:
            raise UserError("--batch-latents must be positive")
        # n_explain -1 left every latent "skipped" (too few examples); a negative count is never meant
        need_at_least(self, 1, "n_latents", "window", "n_explain")
        need_at_least(self, 0, "n_score_activating", "n_score_random", "n_score_hard", "seed", "peak_index")
        if self.peak_index is not None and self.peak_index >= self.window:
            raise UserError(f"option --peak-index must be < --window ({self.window}), got {self.peak_index}")
        if self.explain_sampling not in ("top", "quantiles"):
            raise UserError("--explain-sampling must be top or quantiles")

    def examples(self) -> ExampleConfig:
        """How examples are drawn, from the options (the rest at ExampleConfig's defaults)."""
        return ExampleConfig(
            window=self.window,
            peak_index=self.peak_index,
            n_explain=self.n_explain,
            explain_sampling=self.explain_sampling,
            n_score_activating=self.n_score_activating,
            n_score_random=self.n_score_random,
            n_score_hard=self.n_score_hard,
            seed=self.seed,
        )


@dataclass(kw_only=True)
class _ScoreFields:
    run: str = opt(help="run folder (saelab explain)", positional=True)
    scorers: list[str] = opt(default_factory=lambda: ["embedding", "surprisal"], help=f"any of {' '.join(SCORERS)}")
    judge_mode: str = opt(
        "auto",
        "detection/fuzzing: logprob (P(Yes), one prompt per example) | generate (a parsed 0/1 list per prompt) | auto",
    )
    batch_examples: int = opt(10, "examples per prompt in generate mode")
    steer_scale: float = opt(2.0, "intervention: steering = scale x max activation x decoder row")
    latents: list[int] | None = opt(None, LATENTS_HELP + " (none: every explained latent)")
    validity: bool = opt(
        False,
        "also score each latent with another latent's explanation, so the report can say if a scorer is at chance",
    )


@dataclass(kw_only=True)
class ScoreConfig(ClientOptions, _ScoreFields):  # the score options first, then the client's (--help order)
    """`saelab score` / `saelab.score`: score the explanations of an interpretation run with the chosen
    scorers (embedding, surprisal, detection, fuzzing, intervention); scores are written beside them."""

    def validate(self) -> None:
        """Scorer names, option values and the client's, before the run opens (a UserError names the option)."""
        self.check_client()
        bad = [s for s in self.scorers if s not in SCORERS]
        if bad or not self.scorers:
            raise UserError(f"unknown scorer {bad[0] if bad else '(none)'}; choose from {', '.join(SCORERS)}")
        if self.judge_mode not in ("auto", "logprob", "generate"):
            raise UserError("--judge-mode must be auto, logprob or generate")
        need_at_least(self, 1, "batch_examples")
        need_positive(self, "steer_scale")  # 0 or less steers nowhere or against the latent: no intervention score
