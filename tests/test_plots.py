"""The plot fixes: train_curves.png keeps its x tick labels short and few (they never run
together), draws no panel for a statistic that never changes (TopK's L0 = k) and names it instead;
the evaluation's L0 panel is left out for TopK; a feature page's histogram has a count axis."""

import json

import numpy as np
import torch


def _capture(monkeypatch, module):
    figs = []
    monkeypatch.setattr(module, "write_figure", lambda path, fig: figs.append(fig))
    return figs


def test_train_curves_ticks_and_constant_l0(tmp_path, monkeypatch):
    import saelab.train.curves as curves

    recs = [
        {"tokens": t, "saes": {"a": {"fvu": 1.0 / (1 + t / 1e5), "l0": 32.0, "dead": 0.0}}}
        for t in range(0, 1_500_000, 50_000)
    ]
    (tmp_path / curves.LOG).write_text("".join(json.dumps(r) + "\n" for r in recs))
    figs = _capture(monkeypatch, curves)
    curves.plot_train_log(tmp_path)
    (fig,) = figs
    fig.canvas.draw()
    assert [ax.get_title() for ax in fig.axes] == ["fvu", "dead"]
    assert "l0 = 32" in fig._suptitle.get_text()
    for ax in fig.axes:
        labels = [t.get_text() for t in ax.get_xticklabels() if t.get_text()]
        assert 2 <= len(labels) <= 6 and all(len(x) <= 5 for x in labels), labels  # "500k", "1M"


def test_eval_density_plot_leaves_out_a_flat_l0_panel(tmp_path, monkeypatch):
    import saelab.evaluate.plots as plots

    figs = _capture(monkeypatch, plots)
    freq = torch.rand(64) * 0.1
    plots.density_plot(freq, tmp_path / "d.png", "topk", l0_hist=([0, 0, 500, 0], [30, 31, 32, 33, 34]))
    plots.density_plot(freq, tmp_path / "d.png", "relu", l0_hist=([5, 40, 500, 20], [30, 31, 32, 33, 34]))
    assert len(figs[0].axes) == 1 and "L0 = 32.5 on every token" in figs[0].axes[0].get_title()
    assert len(figs[1].axes) == 2


def test_feature_histogram_has_a_count_axis():
    """The page carries the histogram's numbers (every count and the top edge, exactly) and the shared page
    script draws its count axis, activation axis and a bar per bin (drawn in Chromium:
    test_app_browser._charts_drawn checks the 24 bars' heights, hover titles and the count label)."""
    import re

    from saelab.view.page_script import PAGE_JS, hist_chart

    counts, edges = np.histogram([0.1, 0.2, 0.2, 0.9] * 300, bins=24, range=(0, 1.0))
    svg = hist_chart({"counts": counts.tolist(), "edges": edges.tolist()})
    got = re.search(r'<svg id="histogram" [^>]*data-counts="([0-9,]+)" data-hi="([^"]+)"></svg>', svg)
    assert [int(c) for c in got.group(1).split(",")] == counts.tolist() and float(got.group(2)) == edges[-1]
    assert "'ycount'" in PAGE_JS and "'count');" in PAGE_JS and "'activation'" in PAGE_JS
    assert "<rect" not in svg  # 24 numbers, not 24 SVG bars with their titles
    assert hist_chart({"counts": [0] * 24, "edges": edges.tolist()}) == '<p class="muted">no activations</p>'
