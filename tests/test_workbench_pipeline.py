"""The workbench as one: AuxK revives planted dead latents in the TopK family (as
tests/test_gated_revival.py checks for gated SAEs), and the whole pipeline on a trained folder
(train -> eval -> cache -> explain -> score -> report -> dashboard -> serve -> steer), each stage
checked against what the one before it wrote."""

from __future__ import annotations

import pytest
import torch
from test_architectures import HOOK, D, planted, train_local

from saelab.sae import SaeConfig, build_sae

N_DEAD, M = 16, 64

# ---------------------------------------------------------------- AuxK revival (TopK family)


def _killed(arch: str, x: torch.Tensor, aux_coeff: float):
    """An SAE of `arch` trained briefly, then N_DEAD of its latents killed: their encoder columns
    shrunk 50x, so their pre-activations never reach a row's (or the batch's) top k. A TopK latent's
    only gradient is through the rows that select it, so nothing but AuxK can bring one back."""
    torch.manual_seed(0)
    extra = {"groups": [16, 16, 32]} if arch == "matryoshka" else {}
    sae = build_sae(SaeConfig(arch, d_in=D, d_sae=M, hookpoint=HOOK, k=4, aux_coeff=aux_coeff, **extra))
    train_local(sae, x, steps=100)
    killed = torch.arange(M - N_DEAD, M)  # the last group of a Matryoshka: its latents see only the full-width loss
    with torch.no_grad():
        sae.W_enc[:, killed] /= 50
        sae.b_enc[killed] /= 50
    return sae.train(), killed


def _fires(sae, x: torch.Tensor, latents: torch.Tensor) -> torch.Tensor:
    sae.eval()
    with torch.no_grad():
        return sae.encode_raw(x).fire_counts()[latents] > 0


@pytest.mark.parametrize("arch", ["topk", "batchtopk", "matryoshka"])
def test_auxk_revives_planted_dead_topk_latents(arch):
    x, held = planted(40_000), planted(4096, seed=1)
    dead = torch.zeros(M, dtype=torch.bool)
    dead[M - N_DEAD :] = True
    revived = {}
    for coeff in (0.0, 1 / 32):
        sae, killed = _killed(arch, x, coeff)
        if arch != "topk":
            sae.finalize(x[:4096])  # the inference threshold of the SAE as killed
        assert not _fires(sae, x[:8192], killed).any()  # dead on the training rows
        train_local(sae.train(), x, steps=300, dead=dead, init=False)
        revived[coeff] = int(_fires(sae, held, killed).sum())
    # measured {0.0: 0, 1/32: 16} for each of the three: without AuxK a latent outside every top k gets no
    # gradient, so none comes back
    assert revived[0.0] <= 1, revived
    assert revived[1 / 32] >= 12, revived


# ---------------------------------------------------------------- the whole pipeline on a trained folder

SITE, K, LATENTS = "model.layers.1", 8, 128
PROMPT = "Once upon a time"


def _cli(*args) -> None:
    from saelab.cli import main

    assert main([str(a) for a in args]) == 0, args


def _last_train_fvu(run) -> float:
    import json

    lines = (run / "train_log.jsonl").read_text().splitlines()
    (stats,) = json.loads(lines[-1])["saes"].values()
    return float(stats["fvu"])


def test_whole_pipeline_on_a_trained_folder(tmp_path, tiny_model_dir, text_corpus, capsys):
    """train -> eval -> cache -> explain (stats) -> score -> report -> dashboard -> serve -> steer on one
    trained SAE, each stage checked against what the one before it wrote."""
    import json
    import urllib.request

    import numpy as np
    from graph_fixture import serve
    from markupsafe import escape
    from view_helpers import SMALL_EXAMPLES

    from saelab.features.latent_cache import LatentCache
    from saelab.interpret.examples import LatentExamples
    from saelab.interpret.records import load_run, read_jsonl
    from saelab.models import collect_activations, load_model
    from saelab.sae.folder import load_sae
    from saelab.view.feature_store import FeatureStore

    # train: 256 steps of 256 tokens
    run = tmp_path / "train"
    _cli(
        "train", "--model", tiny_model_dir, "--corpus", text_corpus, "--hookpoints", SITE, "--dict-size", LATENTS,
        "--k", K, "--tokens", 65536, "--batch-tokens", 256, "--context", 64, "--buffer-batches", 4,
        "--lr", 3e-3, "--threads", 2, "--out", run,
    )  # fmt: skip
    folder = run / f"{SITE}-topk-k{K}"
    sae, cfg = load_sae(folder)
    assert (cfg["d_sae"], cfg["k"], cfg["metadata"]["hook_name"]) == (LATENTS, K, SITE)
    train_fvu = _last_train_fvu(run)

    # train -> eval: the folder it wrote is the SAE it measured (TopK's L0 is k; held-out FVU near training's)
    _cli("eval", folder, "--tokens", 4096, "--ce-tokens", 1024)
    m = json.loads((folder / "metrics.json").read_text())["metrics"]
    assert m["l0"] == pytest.approx(K, abs=0.01)
    assert m["fvu"] < 0.5 and abs(m["fvu"] - train_fvu) < 0.25 * train_fvu + 0.02, (m["fvu"], train_fvu)

    # eval -> cache: the cached activations are the trained SAE's on the cached tokens
    cache_dir = tmp_path / "cache"
    _cli("cache", folder, "--tokens", 2048, "--out", cache_dir)
    lc = LatentCache.open(cache_dir)
    (name,) = lc.sae_names
    fires, mx = lc.fire_counts(name), lc.max_activation(name)
    assert lc.d_sae(name) == LATENTS and (fires > 0).sum() >= 0.9 * LATENTS  # trained: measured 128/128 alive
    lat = [int(j) for j in np.argsort(-fires, kind="stable")[:2]]
    lm = load_model(str(tiny_model_dir))
    for j in lat:
        rows, pos, vals = lc.latent_records(name, j)
        top = int(np.argmax(vals))
        assert vals[top] == pytest.approx(float(mx[j]), rel=1e-6)
        ids = torch.from_numpy(np.asarray(lc.tokens[rows[top] : rows[top] + 1], dtype=np.int64))
        x = collect_activations(lm.model, ids, [SITE])[SITE][0]
        again = sae.encode_raw(x).to_dense()[pos[top], j]
        assert float(again) == pytest.approx(float(vals[top]), rel=1e-4)

    # cache -> explain (stats): the examples are the cache's tokens and activations, the top one its max
    interp = tmp_path / "interp"
    _cli("explain", cache_dir, "--dictionary", name, "--latents", *lat, "--explainer", "stats", *SMALL_EXAMPLES,
         "--out", interp)  # fmt: skip
    examples = {d["latent"]: LatentExamples.from_dict(d) for d in read_jsonl(interp / "examples.jsonl")}
    assert sorted(examples) == sorted(lat)
    for j in lat:
        ex = examples[j].explain
        assert ex and max(e.max_act for e in ex) == pytest.approx(float(mx[j]), rel=1e-5)
        for e in ex:
            assert e.tokens == lc.tokens[e.row, e.start : e.start + len(e.tokens)].tolist()

    # explain -> score -> report: every explained latent scored; the report's AUCs are the scores'
    _cli("score", interp, "--scorers", "embedding")
    recs = load_run(interp)
    assert sorted(recs.explanations) == sorted(lat) and sorted(recs.scores["embedding"]) == sorted(lat)
    auc = {j: recs.scores["embedding"][j]["metrics"]["auc"] for j in lat}
    capsys.readouterr()
    _cli("report", interp)
    md = capsys.readouterr().out
    (summary,) = json.loads((interp / "report.json").read_text())["runs"]
    assert (summary["latents"], summary["explained"], summary["dictionary"]) == (len(lat), len(lat), name)
    emb = summary["scorers"]["embedding"]
    assert sorted(emb["latents"]) == sorted(lat) and emb["values"]["auc"] == pytest.approx(
        [auc[j] for j in emb["latents"]]
    )
    assert f"| auc | {np.mean(list(auc.values())):.3f} ± " in md

    # report -> dashboard: each page shows the run's explanation and AUC
    dash = tmp_path / "dash"
    _cli("dashboard", folder, "--out", dash, "--cache", cache_dir, "--explanations", interp,
         "--latents", ",".join(map(str, lat)))  # fmt: skip
    for j in lat:
        page = (dash / "features" / f"{j}.html").read_text()
        assert str(escape(recs.explanations[j]["explanation"])) in page and f"{auc[j]:.3f}" in page

    # dashboard -> serve: the app's page and JSON show the same explanation, score and max activation
    store = FeatureStore.build(
        folder, cache=cache_dir, explanations=interp, model=lm.model, tokenizer=lm.tokenizer, name="pipe",
        progress=False,
    )  # fmt: skip
    with serve([store]) as (base, _):
        for j in lat:
            with urllib.request.urlopen(f"{base}/api/sae/pipe/feature/{j}", timeout=30) as r:
                v = json.loads(r.read())
            assert v["explanation"] == recs.explanations[j]["explanation"]
            assert v["max_act"] == pytest.approx(float(mx[j]), rel=1e-5)
            assert v["scores"][0]["value"] == pytest.approx(auc[j])
            with urllib.request.urlopen(f"{base}/sae/pipe/feature/{j}", timeout=30) as r:
                html = r.read().decode()
            assert str(escape(recs.explanations[j]["explanation"])) in html and f"{auc[j]:.3f}" in html

    # serve -> steer: a relative clamp is 3x the max activation the cache recorded
    j = lat[0]
    out = tmp_path / "steer.json"
    capsys.readouterr()
    _cli("steer", folder, "--prompt", PROMPT, "--clamp", f"{j}=3x", "--cache", cache_dir, "--max-new-tokens", 6,
         "--json", out)  # fmt: skip
    (res,) = json.loads(out.read_text())["results"]
    (edit,) = res["sweep"][0]["edits"]
    assert edit == {"latent": j, "op": "clamp", "value": pytest.approx(3 * float(mx[j]), rel=1e-5)}
    assert "(3.0x max)" in capsys.readouterr().out
    assert res["steered"] != res["unsteered"]
