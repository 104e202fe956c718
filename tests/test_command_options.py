"""What a command accepts comes from its stage's config dataclass (the object the library takes too):
walked from saelab.cli.build_parser, every option and positional of every subcommand is a field of a
config dataclass (`add_dataclass_options` marks each action with its field), except a short list of
command-line-only options; the shared options (--out, --overwrite, --threads, --device, --dtype,
--model, --corpus) are declared once in options.py and so say the same everywhere."""

import argparse
import dataclasses
import json

import pytest

from saelab.cli import build_parser, main
from saelab.commands import parse_args
from saelab.options import build_config

# options that shape the command line itself, not the stage's work (and so belong to no config)
COMMAND_LINE_ONLY = {
    "--config",  # the file of option values (build_config)
    "synthetic-recovery --json",  # how to print the reports, not what to compute
}
# commands another part of issue 27 converts in parallel; remove each name once its branch is in
NOT_YET_CONVERTED: set[str] = set()  # every command is built from its config dataclass
SHARED = ("out", "overwrite", "threads", "device", "dtype", "model", "corpus")


def _subparsers() -> dict[str, argparse.ArgumentParser]:
    p = build_parser()
    return next(a for a in p._actions if isinstance(a, argparse._SubParsersAction)).choices


def _field(action) -> dataclasses.Field:
    cls, name = action.config_field
    return {f.name: f for f in dataclasses.fields(cls)}[name]


def test_every_option_is_a_config_field():
    subs = _subparsers()
    assert len(subs) >= 22
    loose = []
    for name, sp in subs.items():
        if name in NOT_YET_CONVERTED:
            continue
        for a in sp._actions:
            if isinstance(a, argparse._HelpAction):
                continue
            spelling = a.option_strings[0] if a.option_strings else a.dest
            if spelling in COMMAND_LINE_ONLY or f"{name} {spelling}" in COMMAND_LINE_ONLY:
                continue
            if not hasattr(a, "config_field"):
                loose.append(f"{name} {spelling}")
                continue
            cls, field = a.config_field
            assert a.dest == field, (name, spelling)  # build_config reads the value under the field's name
            assert field in {f.name for f in dataclasses.fields(cls)}
    assert loose == []


def test_shared_options_are_declared_once_and_say_the_same_everywhere():
    helps: dict[str, set[str]] = {s: set() for s in SHARED}
    for name, sp in _subparsers().items():
        if name in NOT_YET_CONVERTED:
            continue
        for a in sp._actions:
            shared = next((s for s in SHARED if f"--{s}" in a.option_strings), None)
            if shared is None:
                continue
            f = _field(a)
            assert f.metadata.get("shared") == shared, f"{name} --{shared} is not declared with {shared}_option()"
            helps[shared].add(f.metadata["help"])
    for s in ("threads", "device", "dtype", "model", "corpus"):
        assert len(helps[s]) == 1, (s, helps[s])
    assert all(h.startswith("replace ") for h in helps["overwrite"])
    assert all(helps[s] for s in SHARED)  # every shared option is used by some converted command


def test_old_flags_keep_their_spelling_default_and_grammar(capsys):
    """A sample of the flags that were written by hand before: same spelling, default, type, nargs."""
    subs = _subparsers()

    def action(cmd, flag):
        return next(a for a in subs[cmd]._actions if flag in a.option_strings or a.dest == flag)

    def default(cmd, flag):
        a = action(cmd, flag)
        d = dataclasses.fields(a.config_field[0])
        f = {x.name: x for x in d}[a.config_field[1]]
        return f.default_factory() if f.default is dataclasses.MISSING else f.default

    assert default("eval", "--tokens") == 100_000 and default("eval", "--ce-tokens") == 16_384
    assert default("eval-e2e", "--tokens") == 50_000 and default("eval-e2e", "--ce-tokens") == 8192
    assert default("serve-llm", "--max-body") == 1 << 20 and default("serve", "--port") == 8765
    assert default("steer", "--strengths") == [1.0] and action("steer", "--strengths").nargs == "+"
    assert action("steer", "--clamp").metavar == "LATENT=V" and action("steer", "sae").nargs == "?"
    assert action("export", "--format").choices == ("saelens", "sparsify", "circuit-tracer")
    assert action("eval", "--dtype").choices == ("float32", "bfloat16", "float16")
    assert action("eval", "sae_dirs").nargs == "+" and not action("compare", "a").option_strings
    assert default("sweep", "--losses") == ["local", "e2e", "e2e+ds"]
    p = build_parser()
    ns = parse_args(p, ["steer", "S", "--prompt", "a", "b", "--clamp", "123=4x", "7=2", "--stats-tokens", "5"])
    assert ns.clamp == ["123=4x", "7=2"] and ns.prompt == ["a", "b"] and ns.tokens == 5
    assert "--stats-tokens is an old spelling" in capsys.readouterr().err
    from saelab.features.steering import SteerConfig

    req = build_config(SteerConfig, ns, None).request()
    assert [(e.latent, e.value, e.relative) for e in req.edits] == [(123, 4.0, True), (7, 2.0, False)]
    with pytest.raises(SystemExit):
        parse_args(p, ["eval", "X", "--dtype", "float8"])  # argparse: not one of the choices


def test_config_file_drives_a_converted_command(tmp_path, capsys):
    """--config works as in train: file < command line, unknown keys and missing values are one-line errors."""
    from saelab.study.sweep import SweepConfig
    from saelab.train.config import TrainConfig

    p = build_parser()
    (tmp_path / "c.json").write_text(json.dumps({"port": 9000, "host": "0.0.0.0", "tokens": 77}))
    ns = parse_args(p, ["serve", "A", "--config", str(tmp_path / "c.json"), "--port", "9001"])
    from saelab.view.app_server import ServeConfig

    cfg = build_config(ServeConfig, ns, ns.config)
    assert (cfg.port, cfg.host, cfg.tokens, cfg.sae) == (9001, "0.0.0.0", 77, ["A"])
    (tmp_path / "bad.json").write_text(json.dumps({"prot": 1}))
    assert main(["serve", "A", "--config", str(tmp_path / "bad.json")]) == 2
    assert "unknown keys: prot" in capsys.readouterr().err
    assert main(["import", "SRC"]) == 2  # --out is required (checked before any work)
    assert "missing required option(s): --out" in capsys.readouterr().err
    # sweep: one file holds its own keys and the training keys
    (tmp_path / "s.json").write_text(json.dumps({"losses": ["local"], "eval_tokens": 64, "latents": 128, "k": [8]}))
    ns = parse_args(p, ["sweep", "--out", str(tmp_path / "o"), "--config", str(tmp_path / "s.json")])
    names = lambda c: {f.name for f in dataclasses.fields(c)}  # noqa: E731
    sw = build_config(SweepConfig, ns, ns.config, other_keys=names(TrainConfig))
    base = build_config(TrainConfig, ns, ns.config, other_keys=names(SweepConfig))
    assert (sw.losses, sw.eval_tokens, base.latents, base.k) == (["local"], 64, 128, [8])


def test_command_and_library_call_the_same_stage_function(tiny_model_dir, capsys):
    """`saelab hookpoints` prints what list_hookpoints(HookpointsConfig) returns (one function for both)."""
    from saelab.activations.hookpoints import HookpointsConfig, list_hookpoints

    name, sites = list_hookpoints(HookpointsConfig(model=str(tiny_model_dir)))
    assert main(["hookpoints", "--model", str(tiny_model_dir)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith(f"# {name}: {len(sites)} hookpoints")
    assert lines[1:] == [f"{s}\t{k}\t{w}" for s, k, w in sites] and any(s == "model.layers.1" for s, _, _ in sites)


def test_choices_hold_for_config_files_too(tmp_path, capsys):
    """A field's choices are argparse's for the flag and check_types' for a --config file or the library."""
    from saelab.sae.convert import ExportConfig

    (tmp_path / "c.json").write_text(json.dumps({"format": "safetensors", "out": str(tmp_path / "o")}))
    assert main(["export", "SAE", "--config", str(tmp_path / "c.json")]) == 2
    assert "unknown --format 'safetensors'; choose from saelens, sparsify" in capsys.readouterr().err
    from saelab.errors import UserError
    from saelab.evaluate.run import EvalConfig

    with pytest.raises(UserError, match="unknown --dtype 'float64'"):
        EvalConfig(sae_dirs=["x"], dtype="float64").validate()
    with pytest.raises(UserError, match="unknown --format 'zip'"):
        ExportConfig(sae_dirs=["x"], format="zip", out="o").validate()


def test_a_path_object_is_accepted_where_a_folder_name_is_expected(tmp_path):
    """Library callers pass pathlib paths; the config stores the string (what the manifest records)."""
    from saelab.train.config import TrainConfig

    cfg = TrainConfig(out=tmp_path / "run")
    cfg.check_run()
    assert cfg.out == str(tmp_path / "run")
