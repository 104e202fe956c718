"""Power-law fitting recovers known exponents, the frontier is the lower envelope, and a small
real grid on the tiny model runs end to end (cache once, train from it, one held-out pass, plot)."""

import numpy as np
import pytest

from saelab.errors import UserError
from saelab.study.scaling import ScalingConfig, fit, frontier, power_law, run_scaling


def test_power_law_recovers_exponents():
    x = np.array([256, 512, 1024, 4096])
    f = power_law(x, 3.0 * x**-0.27)
    assert (
        f["alpha"] == pytest.approx(0.27, abs=1e-9) and f["a"] == pytest.approx(3.0) and f["r2"] == pytest.approx(1.0)
    )
    pts = [
        {"latents": n, "tokens": d, "compute": 6.0 * n * d, "fvu": 2.0 * n**-0.3 * d**-0.1}
        for n in (64, 128, 256)
        for d in (1000, 2000, 4000)
    ]
    fits = fit(pts)
    assert fits["fvu_vs_latents"]["alpha"] == pytest.approx(0.3) and fits["fvu_vs_tokens"]["alpha"] == pytest.approx(
        0.1
    )
    fr = frontier(pts)
    assert all(a["fvu"] > b["fvu"] and a["compute"] <= b["compute"] for a, b in zip(fr, fr[1:]))
    assert (256, 4000) in fits["fvu_vs_compute_frontier"]["frontier"]


def test_small_grid_on_the_tiny_model(tmp_path, tiny_model_dir, text_corpus):
    cfg = ScalingConfig(
        out=str(tmp_path / "s"),
        hookpoint="model.layers.1",
        latents=[64, 256],
        tokens=[4096, 16384],
        k=8,
        model=str(tiny_model_dir),
        corpus=str(text_corpus),
        context=64,
        batch_tokens=512,
        eval_tokens=4096,
        lr=2e-3,
        threads=2,
    )
    r = run_scaling(cfg)
    pts = {(p["latents"], p["tokens"]): p["fvu"] for p in r["points"]}
    assert set(pts) == {(64, 4096), (64, 16384), (256, 4096), (256, 16384)}  # budgets as trained (not rounded up)
    assert all(0 < v < 1 for v in pts.values()) and pts[(64, 4096)] != pts[(64, 16384)]
    assert pts[(256, 16384)] < pts[(64, 4096)]  # more latents and more tokens: lower held-out FVU
    assert r["fits"]["fvu_vs_latents"]["alpha"] > 0
    assert (tmp_path / "s" / "scaling.png").stat().st_size > 10_000
    with pytest.raises(UserError, match="--overwrite"):
        run_scaling(cfg)
    with pytest.raises(UserError, match="two"):
        run_scaling(ScalingConfig(out=str(tmp_path / "t"), latents=[64], tokens=[4096, 8192]))
