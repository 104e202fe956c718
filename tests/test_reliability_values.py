"""Issue 33, part D: values accepted silently. Every numeric option of every command refuses NaN, infinity
and (unless a negative value means something) negative values with a one-line error naming the option,
before any model loads; a bounded --max-new-tokens; `sweep --config` takes the sweep's own options; an
explain / score run in which every latent failed exits 2 with one line; eval says when --tokens asks for
more held-out tokens than there are."""

import argparse
import json
import sys

import pytest
from test_interpret import cache as interp_cache  # noqa: F401  (a latent cache fixture)
from test_interpret import chat_model_dir  # noqa: F401

from saelab.cli import build_parser, main

# a negative value that means something: the option, and why it is accepted
NEGATIVE_MEANS_SOMETHING = {
    ("steer", "--strengths"): "a multiplier of every edit: negative steers away from the feature",
    ("steer", "--scale"): "the contrastive direction's multiplier: negative steers toward the negative prompts",
    ("synthetic-recovery", "--threshold"): "a cosine, in [-1, 1]",
    ("seeds", "--corr-threshold"): "a correlation, in [-1, 1]: -1 matches on the decoder cosine alone",
}
# what each command needs besides its numeric option to get as far as its option checks
EXTRA = {
    "steer": ["--prompt", "hi", "--clamp", "1=2"],
    "attribute": ["--prompt", "hi"],
    "cache-activations": ["--hookpoints", "model.layers.1"],
}


def _subparsers() -> dict:
    p = build_parser()
    return next(a for a in p._actions if isinstance(a, argparse._SubParsersAction)).choices


def _numeric_cases():
    """(command, its base argv with dummy inputs, numeric flag, value) for every numeric option of every command."""
    cases = []
    for name, sp in _subparsers().items():
        base, flags = [name], set()
        for a in sp._actions:
            flags.update(a.option_strings)
            if not a.option_strings and a.dest != "help":
                base.append("/nonexistent/input")
            elif a.required:
                base += [a.option_strings[0], "OUT" if a.dest == "out" else "x"]
        base += EXTRA.get(name, [])
        if "--out" in flags and "--out" not in base:
            base += ["--out", "OUT"]
        for a in sp._actions:
            if a.type in (int, float):
                cases += [
                    pytest.param(name, base, a.option_strings[0], v, id=f"{name} {a.option_strings[0]} {v}")
                    for v in ("nan", "inf", "-1")
                ]
    return cases


@pytest.fixture
def no_heavy_work(monkeypatch):
    """Loading a model or token rows fails the test: every range check comes before them."""
    import saelab.data
    import saelab.models

    def reached(*a, **k):
        raise AssertionError("heavy work started before the option was checked")

    for attr, original in (("load_model", saelab.models.load_model), ("load_token_rows", saelab.data.load_token_rows)):
        for mod in [m for n, m in sys.modules.items() if n.startswith("saelab") and m is not None]:
            if getattr(mod, attr, None) is original:
                monkeypatch.setattr(mod, attr, reached)


def test_every_command_has_numeric_options_to_check():
    """The parametrisation below really covers the commands (a refactor that hid the options would pass it)."""
    commands = {c.values[0] for c in _numeric_cases()}
    assert {"train", "explain", "score", "steer", "bench", "eval", "cache", "serve-llm", "synthetic"} <= commands
    assert len(_numeric_cases()) > 300


@pytest.mark.parametrize("command, base, option, value", _numeric_cases())
def test_numeric_options_refuse_nan_inf_negative(command, base, option, value, tmp_path, capsys, no_heavy_work):
    argv = [str(tmp_path / "out") if t == "OUT" else t for t in base] + [option, value]
    try:
        rc = main(argv)
    except SystemExit as e:  # argparse: an int option given nan / inf
        rc = e.code
    err = capsys.readouterr().err
    assert rc == 2 and "Traceback" not in err, (argv, err)
    assert not (tmp_path / "out").exists(), f"{argv} wrote its output folder"
    if value == "-1" and (command, option) in NEGATIVE_MEANS_SOMETHING:
        assert option not in err, f"{option} -1 is meaningful here, yet refused: {err}"
    else:
        assert option in err, f"{argv} was accepted (the error is about something else): {err}"


@pytest.mark.parametrize(
    "argv, expect",
    [
        (["explain", "C", "--out", "O", "--timeout", "nan"], "--timeout must be a finite number"),
        (["explain", "C", "--out", "O", "--n-explain", "-1"], "--n-explain must be >= 1"),
        (["explain", "C", "--out", "O", "--window", "16", "--peak-index", "16"], "--peak-index must be < --window"),
        (["score", "R", "--steer-scale", "nan"], "--steer-scale must be a finite number"),
        (["score", "R", "--steer-scale", "0"], "--steer-scale must be > 0"),
        (["steer", "S", "--prompt", "hi", "--clamp", "1=2", "--temperature", "-1"], "--temperature must be >= 0"),
        (["steer", "S", "--prompt", "hi", "--clamp", "1=2", "--max-new-tokens", "100000000"], "--max-new-tokens"),
        (["bench", "S", "--out", "O", "--task-scale", "nan"], "--task-scale must be a finite number"),
        (["bench", "S", "--out", "O", "--task-scale", "0"], "--task-scale must be > 0"),
    ],
)
def test_the_issues_values_are_one_line_errors(argv, expect, tmp_path, capsys, no_heavy_work):
    argv = [str(tmp_path / a) if a in ("C", "O", "R", "S") else a for a in argv]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("saelab: error: ") and expect in err[0], err
    assert not (tmp_path / "O").exists()


def test_max_new_tokens_bound_is_the_library_rule_too():
    """The bound lives in SteeringRequest.check, which the web app's steering and the Python API share."""
    from saelab.errors import UserError
    from saelab.features.steering import MAX_NEW_TOKENS, FeatureEdit, SteeringRequest

    edit = FeatureEdit(latent=1, op="clamp", value=2.0)
    SteeringRequest(prompts=["hi"], edits=[edit], max_new_tokens=MAX_NEW_TOKENS).check()
    for bad in ({"max_new_tokens": MAX_NEW_TOKENS + 1}, {"temperature": -1.0}, {"top_k": -1}, {"seed": -3}):
        with pytest.raises(UserError):
            SteeringRequest(prompts=["hi"], edits=[edit], **bad).check()


def test_sweep_config_takes_the_sweeps_own_options(tmp_path, capsys, no_heavy_work):
    """`losses`, `eval_tokens`, `separate` in a sweep's --config are its own options, not unknown keys: a bad
    value among them or among the training options is named (already right on today's code: a guard)."""
    cfg = {"losses": ["local"], "eval_tokens": 1000, "eval_ce_tokens": 0, "separate": True, "k": [4]}
    for extra, expect in (
        ({"tokens": -5}, "--tokens must be >= 1"),
        ({"eval_tokens": -5}, "--eval-tokens"),
        ({"losses": ["banana"]}, "banana"),
    ):
        path = tmp_path / "sweep.json"
        path.write_text(json.dumps(cfg | extra))
        assert main(["sweep", "--config", str(path), "--out", str(tmp_path / "sw")]) == 2
        err = capsys.readouterr().err
        assert "unknown keys" not in err and expect in err, err
        assert not (tmp_path / "sw").exists()


# ---------------------------------------------------------------- every latent failed: exit 2, one line
def _message_lines(capsys) -> list[str]:
    """stderr without the progress bars."""
    return [ln for ln in capsys.readouterr().err.splitlines() if ln.startswith("saelab")]


def _explain_argv(cache, run):
    from test_interpret import _active_latents

    name = cache.sae_names[0]
    lat = [str(j) for j in _active_latents(cache, name, 3)]
    return ["explain", str(cache.path), "--dictionary", name, "--latents", *lat, "--explainer", "stats",
            "--window", "16", "--n-explain", "8", "--n-score-activating", "10", "--n-score-random", "5",
            "--n-score-hard", "5", "--out", str(run)]  # fmt: skip


def test_explain_and_score_with_every_latent_failed_exit_2(interp_cache, tmp_path, capsys, monkeypatch):
    """`explain --timeout nan` failed every latent and exited 0; now a run in which no latent succeeded is
    exit 2 with one line (the first error, where the records are); the rerun tries them again. Score alike."""
    from saelab.interpret.explainer import ExplainResult, StatisticalExplainer
    from saelab.interpret.records import load_run
    from saelab.interpret.scorers.surprisal import SurprisalScorer

    run = tmp_path / "run"
    argv = _explain_argv(interp_cache, run)
    with monkeypatch.context() as m:
        m.setattr(StatisticalExplainer, "explain_one", lambda self, ex: ExplainResult(None, None, "timed out", 0.0))
        assert main(argv) == 2
    err = _message_lines(capsys)
    assert len(err) == 1 and "every latent failed (3 of 3" in err[0] and "timed out" in err[0], err
    assert all(r["status"] == "failed" for r in load_run(run).explanations.values())
    assert main(argv) == 0  # the rerun explains the failed latents
    assert all(r["status"] == "ok" for r in load_run(run).explanations.values())
    capsys.readouterr()

    score = ["score", str(run), "--scorers", "surprisal"]

    def broken(self, ex, explanation):
        raise RuntimeError("steering produced NaN")

    from saelab.interpret.scorers.intervention import InterventionScorer

    with monkeypatch.context() as m:  # two scorers that each failed every latent: one line naming both
        m.setattr(SurprisalScorer, "score", broken)
        m.setattr(InterventionScorer, "score", broken)
        assert main(["score", str(run), "--scorers", "surprisal", "intervention"]) == 2
    err = _message_lines(capsys)
    assert len(err) == 1 and "score surprisal: every latent failed" in err[0], err
    assert "score intervention: every latent failed" in err[0], err

    with monkeypatch.context() as m:
        m.setattr(SurprisalScorer, "score", broken)
        assert main(score) == 2
    err = _message_lines(capsys)
    assert len(err) == 1 and "score surprisal: every latent failed" in err[0] and "NaN" in err[0], err
    assert main(score) == 0  # the failed records are scored again
    assert all(r["ok"] for r in load_run(run).scores["surprisal"].values())


# ---------------------------------------------------------------- eval: more tokens than the held-out split
def test_eval_says_when_tokens_exceed_the_heldout_split(tmp_path, tiny_model_dir, text_corpus, capsys):
    import torch

    from saelab.sae.base import SaeConfig
    from saelab.sae.folder import Provenance, save_sae
    from saelab.sae.registry import build_sae

    torch.manual_seed(0)
    sae = build_sae(SaeConfig(arch="topk", d_in=64, d_sae=32, hookpoint="model.layers.1", k=4))
    folder = tmp_path / "sae"
    save_sae(sae, folder, Provenance(model_spec=str(tiny_model_dir), corpus=str(text_corpus), context=64))
    argv = ["eval", str(folder), "--tokens", "1000000000000", "--ce-tokens", "0"]
    assert main(argv) == 0
    err = [ln for ln in capsys.readouterr().err.splitlines() if ln.startswith("saelab: --tokens")]
    assert len(err) == 1 and "1,000,000,000,000: the held-out split has" in err[0], err
    have = int(err[0].split("has ")[1].split(" tokens")[0].replace(",", ""))
    assert 0 < have < 1_000_000 and have % 64 == 0  # whole rows of the SAE's context
    assert json.loads((folder / "metrics.json").read_text())["metrics"]
    assert main(argv[:2] + ["--tokens", "64", "--ce-tokens", "0", "--overwrite"]) == 0
    assert "held-out split has" not in capsys.readouterr().err  # a budget that fits says nothing
