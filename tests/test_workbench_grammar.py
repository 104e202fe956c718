"""Issue 31, items 6 and 8. CLI grammar: the dictionary size of train / sweep / scaling is --dict-size
(--latents, a list of latent ids everywhere else, still works there with a notice); `steer --prompt x SAE`
reads SAE as the SAE; help texts say what the commands do; the steering examples use a strength the docs
do not measure as degenerate. Reports: `saelab report A B` pairs the latents the runs share."""

import argparse
import json
import re
from pathlib import Path

import pytest

from saelab.cli import build_parser, main
from saelab.commands import parse_args
from saelab.errors import UserError

ROOT = Path(__file__).resolve().parents[1]


def _help(command: str) -> str:
    p = build_parser()
    sub = next(a for a in p._actions if isinstance(a, argparse._SubParsersAction))
    return sub.choices[command].format_help()


# ------------------------------------------------------------------------------------------ item 6


@pytest.mark.parametrize(
    "argv, value",
    [
        (["train", "--out", "o", "{flag}", "1024"], 1024),
        (["sweep", "--out", "o", "{flag}", "1024"], 1024),
        (["scaling", "--out", "o", "{flag}", "512", "1024"], [512, 1024]),
    ],
)
def test_dict_size_names_the_dictionary_size_and_latents_is_its_old_spelling(argv, value, capsys):
    p = build_parser()
    ns = parse_args(p, [a.replace("{flag}", "--dict-size") for a in argv])
    assert ns.latents == value and capsys.readouterr().err == ""
    ns = parse_args(p, [a.replace("{flag}", "--latents") for a in argv])
    assert ns.latents == value
    assert capsys.readouterr().err.strip() == "saelab: --latents is an old spelling; use --dict-size"
    assert "--dict-size" in _help(argv[0])


def test_dict_size_is_named_in_errors_and_config_files(tmp_path, capsys):
    from saelab.options import build_config
    from saelab.train.config import TrainConfig

    out = tmp_path / "o"
    assert main(["train", "--out", str(out), "--dict-size", "0"]) == 2
    assert "option --dict-size must be >= 1, got 0" in capsys.readouterr().err
    assert main(["train", "--out", str(out), "--dict-size", "64", "--k", "9999"]) == 2
    assert "larger than the dictionary (--dict-size 64)" in capsys.readouterr().err
    assert main(["scaling", "--out", str(out), "--dict-size", "512"]) == 2
    assert "at least two --dict-size" in capsys.readouterr().err
    assert not out.exists()
    # a config file may name the field (latents, as folders record it) or the flag (dict_size)
    p = build_parser()
    sub = next(a for a in p._actions if isinstance(a, argparse._SubParsersAction)).choices["train"]
    for key in ("latents", "dict_size"):
        path = tmp_path / f"{key}.json"
        path.write_text(json.dumps({key: 2048, "out": "o"}))
        assert build_config(TrainConfig, sub.parse_args([]), str(path)).latents == 2048
    (tmp_path / "bad.json").write_text(json.dumps({"dict_size": "big", "out": "o"}))
    with pytest.raises(UserError, match="option --dict-size must be an integer"):
        build_config(TrainConfig, sub.parse_args([]), str(tmp_path / "bad.json"))


def test_sweep_config_file_takes_dict_size(tmp_path):
    """`sweep --config` holds the sweep's and training's options: dict_size is not an unknown key."""
    from saelab.options import build_config, config_keys
    from saelab.study.sweep import SweepConfig
    from saelab.train.config import TrainConfig

    path = tmp_path / "s.json"
    path.write_text(json.dumps({"dict_size": 512, "losses": ["local"], "out": "o"}))
    ns = parse_args(build_parser(), ["sweep", "--config", str(path)])
    assert build_config(SweepConfig, ns, str(path), other_keys=config_keys(TrainConfig)).losses == ["local"]
    assert build_config(TrainConfig, ns, str(path), other_keys=config_keys(SweepConfig)).latents == 512


def test_steer_reads_a_folder_after_prompt_as_the_sae(tmp_path, capsys):
    sae = tmp_path / "run" / "sae"
    sae.mkdir(parents=True)
    p = build_parser()
    ns = parse_args(p, ["steer", "--prompt", "I like", str(sae)])
    assert ns.sae == str(sae) and ns.prompt == ["I like"]
    ns = parse_args(p, ["steer", "--prompt", "a", "b", str(sae), "--clamp", "1=1x"])
    assert ns.sae == str(sae) and ns.prompt == ["a", "b"] and ns.clamp == ["1=1x"]
    ns = parse_args(p, ["steer", "--clamp", "1=1x", "--prompt", "hi", "--add", "2=3", str(sae)])
    assert ns.sae == str(sae) and ns.add == ["2=3"] and ns.prompt == ["hi"]
    # words that name nothing on disk stay prompts (a contrastive run has no SAE)
    ns = parse_args(p, ["steer", "--hookpoint", "h", "--prompt", "I like", "cats"])
    assert ns.sae is None and ns.prompt == ["I like", "cats"]
    # the SAE written first is unchanged, and a lone prompt is never taken away from --prompt
    ns = parse_args(p, ["steer", str(sae), "--prompt", "x", str(tmp_path)])
    assert ns.sae == str(sae) and ns.prompt == ["x", str(tmp_path)]
    ns = parse_args(p, ["steer", "--hookpoint", "h", "--prompt", str(tmp_path)])
    assert ns.sae is None and ns.prompt == [str(tmp_path)]
    assert capsys.readouterr().err == ""


def test_help_texts_say_what_the_commands_do():
    from saelab.sae import ARCHITECTURES

    cache_help = " ".join(_help("cache-activations").split())
    assert "float16" in cache_help and "bfloat16" in cache_help
    assert "Writes sharded float32" not in cache_help  # --store-dtype writes halves
    k_help = " ".join(_help("train").split("--k K [K ...]")[-1].split("--sparsity-coeff")[0].split())
    for arch, kind in ARCHITECTURES.items():  # codebook and crosscoder included (already right: a guard)
        assert (arch in k_help) == kind.capabilities.uses_k, (arch, k_help)


def test_steering_examples_use_a_measured_strength():
    """docs/VIEW.md measured 4x (the old default) as the most degenerate strength (9 of 18 texts with the degenerate flag of issue 31): no
    example clamps at it or above; the --sweep examples show it next to the others on purpose."""
    from saelab.features.steering import SWEEP

    assert "9 of 18 at the old 4x default" in (ROOT / "docs" / "VIEW.md").read_text()
    texts = {str(p.relative_to(ROOT)): p.read_text() for p in [ROOT / "README.md", *(ROOT / "docs").glob("*.md")]}
    texts["steer --help"] = _help("steer")
    strengths = []
    for name, text in texts.items():
        for line in text.splitlines():
            if "saelab steer" in line:
                strengths += [(name, float(x)) for x in re.findall(r"--clamp (?:\d+=)(\d*\.?\d+)x", line)]
    assert {n for n, _ in strengths} >= {"README.md", "steer --help", "docs/VIEW.md"}
    assert [s for s in strengths if s[1] >= max(SWEEP)] == []


# ------------------------------------------------------------------------------------------ item 8
INFO = {"kind": "sae", "source": "/runs/k/sae", "hookpoint": "model.layers.1", "d_sae": 64, "dir": "d0"}


def _run(folder: Path, auc: dict[int, float], info: dict | None = INFO, cache: str = "/c") -> str:
    """An interpretation run folder as explain + score write it: explanations and embedding scores."""
    folder.mkdir(parents=True)
    manifest = {"kind": "saelab-interpretation-run", "label": folder.name, "cache": cache, "dictionary": "sae"}
    manifest |= {"latents": sorted(auc), "explainer": {"explainer": "stats"}}
    if info is not None:
        manifest["dictionary_info"] = info
    (folder / "manifest.json").write_text(json.dumps(manifest))
    expl = [{"latent": j, "status": "ok", "explanation": f"x{j}", "seconds": 0.1} for j in auc]
    scores = [{"latent": j, "ok": True, "mode": "m", "seconds": 0.1, "metrics": {"auc": v}} for j, v in auc.items()]
    (folder / "explanations.jsonl").write_text("".join(json.dumps(r) + "\n" for r in expl))
    (folder / "scores_embedding.jsonl").write_text("".join(json.dumps(r) + "\n" for r in scores))
    return str(folder)


def _two_runs():
    """Run A scores every shared latent 0.02 above run B; the latents themselves spread from 0.5 to 0.95,
    so two unpaired samples cannot tell a 0.02 difference, while the pairs can. Each run has 5 of its own."""
    import numpy as np

    base = np.random.default_rng(1).uniform(0.5, 0.95, 45)
    a = {j: float(base[j]) + 0.02 for j in range(35)}  # 0-29 shared, 30-34 A's own
    b = {j: float(base[j]) for j in [*range(30), *range(40, 45)]}  # 40-44 B's own
    return a, b


def test_report_pairs_the_latents_two_runs_share(tmp_path, capsys):
    import numpy as np

    a, b = _two_runs()
    out = tmp_path / "cmp"
    assert main(["report", _run(tmp_path / "A", a), _run(tmp_path / "B", b), "--out", str(out)]) == 0
    shown = capsys.readouterr().out
    (c,) = json.loads((out / "report.json").read_text())["comparisons"]
    assert c["by"] == "paired" and c["same_dictionary"] and c["paired"]["n"] == 30
    assert c["diff"] == pytest.approx(0.02, abs=1e-12)
    assert c["lo"] == pytest.approx(0.02, abs=1e-12) and c["hi"] == pytest.approx(0.02, abs=1e-12)
    rest_a, rest_b = [a[j] for j in range(30, 35)], [b[j] for j in range(40, 45)]
    u = c["unpaired"]
    assert (u["n_a"], u["n_b"]) == (5, 5)
    assert u["diff"] == pytest.approx(np.mean(rest_a) - np.mean(rest_b)) and u["lo"] < u["diff"] < u["hi"]
    md = (out / "report.md").read_text()
    assert md in shown
    assert "| embedding | auc | A | B | 30 shared, paired | 0.020 | [0.020, 0.020] | yes |" in md
    assert "| embedding | auc | A | B | 5 vs 5 (the rest), unpaired |" in md


def test_report_does_not_pair_runs_over_different_dictionaries(tmp_path):
    """SAE latents vs neurons (or another SAE): latent 5 of one is not latent 5 of the other."""
    import numpy as np

    from saelab.interpret.report import ReportConfig, write_report

    a, b = _two_runs()
    neurons = INFO | {"kind": "neurons", "source": "model"}
    runs = [_run(tmp_path / "A", a), _run(tmp_path / "B", b, info=neurons)]
    out = write_report(ReportConfig(runs=runs, out=str(tmp_path / "cmp")), quiet=True)
    (c,) = json.loads((out / "report.json").read_text())["comparisons"]
    assert c["by"] == "unpaired" and not c["same_dictionary"] and c["paired"]["n"] == 0
    assert (c["unpaired"]["n_a"], c["unpaired"]["n_b"]) == (35, 35)
    assert c["diff"] == pytest.approx(np.mean(list(a.values())) - np.mean(list(b.values())))
    assert c["lo"] < 0.02 < c["hi"] and c["lo"] < 0  # unpaired, the 0.02 is lost in the latents' spread
    assert "35 vs 35 (different dictionaries), unpaired" in (out / "report.md").read_text()


def test_same_dictionary_without_recorded_info_is_the_same_cache_and_name(tmp_path):
    from saelab.interpret.report_compare import compare_metric, same_dictionary

    assert same_dictionary({"dictionary": "s", "cache": "/c"}, {"dictionary": "s", "cache": "/c"})
    assert not same_dictionary({"dictionary": "s", "cache": "/c"}, {"dictionary": "s", "cache": "/d"})
    assert not same_dictionary({"dictionary": "s"}, {"dictionary": "s"})
    assert same_dictionary({"dictionary_info": INFO}, {"dictionary_info": INFO | {"dir": "other", "n_shards": 3}})
    # one shared latent has no interval: it is compared with the rest, unpaired
    c = compare_metric({1: 0.6, 2: 0.7, 3: 0.8}, {1: 0.5, 5: 0.6, 6: 0.7}, paired=True)
    assert c["by"] == "unpaired" and c["paired"]["n"] == 0 and (c["unpaired"]["n_a"], c["unpaired"]["n_b"]) == (3, 3)
    assert c["diff"] == pytest.approx(0.1)
