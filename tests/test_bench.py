"""saelab bench: sparse probing finds a planted latent (and a random dictionary does not), absorption
is detected where a child latent takes its parent's place and is zero where it does not, the command
writes a report whose tables show what its JSON holds, and bad input fails before the model loads."""

import json
import re

import numpy as np
import pytest
import torch

from saelab.errors import UserError
from saelab.evaluate.bench import absorption as ab
from saelab.evaluate.bench.config import BenchConfig
from saelab.evaluate.bench.dictionaries import random_dictionary, sae_dictionary
from saelab.evaluate.bench.logreg import fit_logreg
from saelab.evaluate.bench.probing import probe_codes
from saelab.evaluate.bench.report import fmt
from saelab.evaluate.bench.run import bench
from saelab.evaluate.bench.tasks import split_rows
from saelab.interpret.bench_summary import autointerp_summary
from saelab.sae import SaeConfig, build_sae
from saelab.sae.folder import Provenance, open_sae, save_sae


def planted_sae(d: int, d_sae: int, u: torch.Tensor, k: int = 4):
    """A TopK dictionary whose latent 0 reads and writes direction u; the rest random."""
    sae = build_sae(SaeConfig("topk", d_in=d, d_sae=d_sae, hookpoint="model.layers.1", k=k))
    sae.reset_parameters(torch.Generator().manual_seed(3))
    with torch.no_grad():
        sae.W_dec[0] = u
        sae.W_enc[:, 0] = u
    return sae.eval()


def test_probing_finds_the_planted_latent_and_a_random_dictionary_is_at_chance():
    g = torch.Generator().manual_seed(0)
    d, n = 256, 600
    u = torch.zeros(d)
    u[5] = 1.0
    y = (torch.rand(n, generator=g) < 0.5).long()
    x = torch.randn(n, d, generator=g) + 6.0 * y[:, None] * u  # the label lives on one direction
    train = split_rows(n, 0)
    sae = planted_sae(d, 1024, u)
    folder_like = type("F", (), {"sae": sae, "name": "planted", "path": "planted"})()
    acc, top = probe_codes(sae_dictionary(folder_like).encode(x), y.numpy(), train, ks=(1, 5))
    assert top[0] == 0 and acc["1"] > 0.97
    rnd = random_dictionary(sae, torch.zeros(d))
    racc, _ = probe_codes(rnd.encode(x), y.numpy(), train, ks=(1,))
    assert 0.35 < racc["1"] < 0.65, racc


def _absorption_case(absorbing: bool, seed: int = 0):
    """Letters a, b, c on directions e0, e1, e2 of a 16-d site. Latents 0-2: the letters. Latents 3-12:
    'word' latents of 10 a-words (direction e0 + e3.., each 3% of the a-words). When `absorbing`, a word
    latent fires INSTEAD of latent 0 (it carries e0); otherwise both fire."""
    rng = np.random.default_rng(seed)
    n_per, d = 400, 16
    y = np.repeat([0, 1, 2], n_per)
    words = np.where((y == 0) & (rng.random(len(y)) < 0.3), rng.integers(0, 10, len(y)), -1)
    x = rng.normal(0, 0.3, (len(y), d))
    x[np.arange(len(y)), y] += 3.0
    dirs = np.zeros((13, d))
    dirs[[0, 1, 2], [0, 1, 2]] = 1
    for w in range(10):
        dirs[3 + w, 0] = dirs[3 + w, 3 + (w % 10)] = 1 / np.sqrt(2)
    z = np.zeros((len(y), 13))
    z[np.arange(len(y)), y] = 3.0
    has = words >= 0
    z[has, 3 + words[has]] = 3.0 * np.sqrt(2)
    if absorbing:
        z[has, 0] = 0.0
    t = lambda a: torch.tensor(a, dtype=torch.float32)  # noqa: E731
    return t(x), torch.tensor(y), t(z), t(dirs), has


@pytest.mark.parametrize("absorbing", [True, False])
def test_absorption_is_detected_and_zero_where_it_does_not_happen(absorbing):
    x, y, z, dirs, has = _absorption_case(absorbing)
    train = torch.from_numpy(split_rows(len(y), 0))
    probe = fit_logreg(x[train], y[train], n_classes=3)
    r = ab.dictionary_absorption(
        "d", "sae", probe, ["a", "b", "c"], x[~train], y[~train], z[train], y[train], z[~train], dirs, x[train].mean(0)
    )
    a = r.letters[0]
    assert a.main_latents == [0] and a.split_features == 1
    share = has[~train.numpy()][y[~train].numpy() == 0].mean()  # a-words with a word latent (~0.3)
    if absorbing:
        assert abs(a.absorption_rate - share) < 0.02 and a.absorption_rate > 0.2
        assert a.absorption_fraction == pytest.approx(a.absorption_rate, abs=0.02)
    else:
        assert a.absorption_rate == 0.0
    assert r.letters[1].absorption_rate == 0.0 and r.letters[2].absorption_rate == 0.0


def _folder(tmp_path, tiny_model_dir, corpus, name="sae", hookpoint="model.layers.1"):
    sae = build_sae(SaeConfig("topk", d_in=64, d_sae=256, hookpoint=hookpoint, k=8))
    return save_sae(
        sae.eval(),
        tmp_path / name,
        Provenance(model_spec=str(tiny_model_dir), model_name="tiny", corpus=str(corpus), context=64),
    )


def _table(md: str, title: str) -> dict[str, list[str]]:
    block = md.split(f"## {title}")[1].split("\n\n")[1]
    return {c[0]: c[1:] for c in ([x.strip() for x in ln.strip("|").split("|")] for ln in block.splitlines()[2:])}


def test_bench_command_writes_a_report_that_shows_its_json(tmp_path, tiny_model_dir, text_corpus):
    folder = _folder(tmp_path, tiny_model_dir, text_corpus)
    tasks = tmp_path / "extra.jsonl"
    tasks.write_text(
        "\n".join(
            json.dumps({"text": t * 8, "label": lab})
            for t, lab in [("The cat sat on the mat. ", "p"), ("def f(x): return x + 1\n", "c")] * 6
        )
    )
    out = tmp_path / "report"
    cfg = BenchConfig(
        sae_dirs=[str(folder)],
        out=str(out),
        metrics=["core", "probing", "absorption"],
        baselines=["residual", "random"],
        tasks=str(tasks),
        tokens=512,
        ce_tokens=0,
        task_scale=0.05,
    )
    res = bench(cfg, quiet=True, fit_tokens=1024)
    for name in ("core.json", "probing.json", "absorption.json", "bench.json", "report.md", "report.html", "bench.png"):
        assert (out / name).is_file(), name
    md = (out / "report.md").read_text()
    probing = json.loads((out / "probing.json").read_text())
    assert probing == json.loads(json.dumps(res["probing"]))
    assert [t["task"] for t in probing["tasks"]][-1] == "file:extra"
    table = _table(md, "Sparse probing: mean held-out accuracy over tasks")
    for r in probing["dictionaries"]:
        assert table[r["dictionary"]][1:] == [fmt(r["mean_accuracy"][str(k)]) for k in probing["ks"]] + [
            fmt(r["mean_ceiling"])
        ]
        # the residual basis's ceiling is its own site: the same number for every dictionary at this site
        assert r["mean_ceiling"] == probing["dictionaries"][0]["mean_ceiling"]
    core = json.loads((out / "core.json").read_text())["dictionaries"][0]
    assert _table(md, "Core (held-out reconstruction and splice; SAEs only)")["sae"][1] == fmt(core["fvu"])
    absorption = json.loads((out / "absorption.json").read_text())
    kinds = {d["dictionary"]: d["applicable"] for d in absorption["dictionaries"]}
    assert kinds == {"sae": True, "residual basis": False, "random (topk 256, k=8)": True}
    head = re.search(r"probe accuracy ([0-9.]+)", md).group(1)
    assert head == fmt(absorption["probe_accuracy"])
    with pytest.raises(UserError, match="--overwrite"):
        bench(BenchConfig(sae_dirs=[str(folder)], out=str(out), metrics=["core"]), quiet=True)


def test_same_named_folders_keep_their_own_results(tmp_path, tiny_model_dir, text_corpus):
    """Runs of one sweep share folder names (model.layers.6-topk-k32): benched together, each keeps the
    numbers it gets alone (keyed by name, the second once overwrote the first and mixed their codes)."""
    torch.manual_seed(1)
    a = _folder(tmp_path / "run_a", tiny_model_dir, text_corpus)
    torch.manual_seed(2)
    b = _folder(tmp_path / "run_b", tiny_model_dir, text_corpus)
    kw = dict(metrics=["core", "probing", "absorption"], tokens=512, ce_tokens=0, task_scale=0.05)
    both = bench(BenchConfig(sae_dirs=[str(a), str(b)], out=str(tmp_path / "both"), **kw), quiet=True)
    alone = {
        n: bench(BenchConfig(sae_dirs=[str(f)], out=str(tmp_path / n), **kw), quiet=True)
        for n, f in (("a", a), ("b", b))
    }

    def rows(res, metric):
        return {d["dictionary"]: d for d in json.loads(json.dumps(res[metric]))["dictionaries"]}

    for metric in ("core", "probing", "absorption"):
        together = rows(both, metric)
        assert list(together) == ["sae", "sae_2"]
        for name, solo in (("sae", "a"), ("sae_2", "b")):
            assert {k: v for k, v in together[name].items() if k != "dictionary"} == {
                k: v for k, v in rows(alone[solo], metric)["sae"].items() if k != "dictionary"
            }, (metric, name)
    assert rows(alone["a"], "core")["sae"]["fvu"] != rows(alone["b"], "core")["sae"]["fvu"]  # two different SAEs
    listed = {
        r[0]: r[-1]
        for r in (
            ln.strip("|").split("|")
            for ln in (tmp_path / "both" / "report.md").read_text().split("\n\n")[2].splitlines()[2:]
        )
    }
    assert {k.strip(): v.strip() for k, v in listed.items()} == {"sae": str(a), "sae_2": str(b)}  # which is which


def test_bench_refuses_bad_input_before_the_model_loads(tmp_path, text_corpus):
    missing_model = tmp_path / "no-such-model"  # loading it would fail: every error below comes first
    a = _folder(tmp_path, missing_model, text_corpus, "a")
    b = _folder(tmp_path, missing_model, text_corpus, "b", hookpoint="model.layers.2")
    out = str(tmp_path / "out")
    with pytest.raises(UserError, match="unknown metric.*sparsity"):
        bench(BenchConfig(sae_dirs=[str(a)], out=out, metrics=["core", "sparsity"]))
    with pytest.raises(UserError, match="unknown baseline"):
        bench(BenchConfig(sae_dirs=[str(a)], out=out, baselines=["neurons", "ica"]))
    with pytest.raises(UserError, match="different sites"):
        bench(BenchConfig(sae_dirs=[str(a), str(b)], out=out))
    with pytest.raises(UserError, match="--interp"):
        bench(BenchConfig(sae_dirs=[str(a)], out=out, metrics=["autointerp"]))
    one = tmp_path / "one.jsonl"
    one.write_text("\n".join(json.dumps({"text": f"text {i}", "label": "x"}) for i in range(10)))
    with pytest.raises(UserError, match="two classes"):
        bench(BenchConfig(sae_dirs=[str(a)], out=out, tasks=str(one)))
    leak = tmp_path / "leak.jsonl"
    leak.write_text(
        "\n".join(json.dumps({"text": f"this one is {lab} really", "label": lab}) for lab in ["spam", "ham"] * 6)
    )
    with pytest.raises(UserError, match="appears verbatim"):
        bench(BenchConfig(sae_dirs=[str(a)], out=out, tasks=str(leak)))
    assert open_sae(a).provenance.model_spec == str(missing_model)


def test_autointerp_summary_is_folded_into_the_report_without_a_model(tmp_path, text_corpus):
    run = tmp_path / "interp"
    run.mkdir()
    (run / "manifest.json").write_text(json.dumps({"label": "sae_llm", "latents": [0, 1, 2]}))
    (run / "explanations.jsonl").write_text(
        "\n".join(
            json.dumps({"latent": j, "status": "ok" if j < 2 else "failed", "seconds": 1.0, "explanation": "x"})
            for j in range(3)
        )
    )
    (run / "scores_detection.jsonl").write_text(
        "\n".join(
            json.dumps({"latent": j, "ok": True, "seconds": 1.0, "metrics": {"auc": a, "balanced_accuracy": 0.5}})
            for j, a in ((0, 0.6), (1, 0.8))
        )
    )
    folder = _folder(tmp_path, tmp_path / "no-such-model", text_corpus)  # never loaded: autointerp needs no model
    cfg = BenchConfig(sae_dirs=[str(folder)], out=str(tmp_path / "out"), metrics=["autointerp"])
    res = bench(cfg, interp_summary=autointerp_summary(run), quiet=True)
    ai = res["autointerp"]
    assert ai["explained"] == 2 and ai["latents"] == 3
    assert ai["scorers"]["detection"]["primary"]["auc"]["mean"] == pytest.approx(0.7)
    md = (tmp_path / "out" / "report.md").read_text()
    assert "## Autointerp (sae_llm: 2/3 latents explained)" in md and "| detection | 2 | auc | 0.700 |" in md


def test_bench_command_is_built_from_bench_config(tmp_path, text_corpus, capsys):
    """`saelab bench SAE --interp RUN --metrics autointerp` through the command (BenchConfig's options): the run
    is summarised by the command, a second report into the same --out needs --overwrite."""
    from saelab.cli import main

    run = tmp_path / "interp"
    run.mkdir()
    (run / "manifest.json").write_text(json.dumps({"label": "r", "latents": [0]}))
    (run / "explanations.jsonl").write_text(
        json.dumps({"latent": 0, "status": "ok", "seconds": 1.0, "explanation": "x"}) + "\n"
    )
    folder = _folder(tmp_path, tmp_path / "no-such-model", text_corpus)
    argv = ["bench", str(folder), "--out", str(tmp_path / "out"), "--metrics", "autointerp", "--interp", str(run)]
    assert main(argv) == 0
    assert json.loads((tmp_path / "out" / "autointerp.json").read_text())["explained"] == 1
    assert main(argv) == 2 and "--overwrite" in capsys.readouterr().err
    assert main(argv + ["--overwrite"]) == 0
    assert main(["bench", str(folder), "--out", str(tmp_path / "o2"), "--metrics", "autointerp"]) == 2
    assert "needs --interp" in capsys.readouterr().err
