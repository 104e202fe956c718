"""Feature interventions (circuits/interventions.py): the replacement model with frozen errors and the real
model through the splice, on tiny random llama / gpt2 models with random PLT sets and CLTs."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from circuit_helpers import make_tiny_gpt2, tiny_clt, tiny_plt

from saelab.circuits.interventions import Edit, intervene
from saelab.errors import UserError
from saelab.models import load_model
from saelab.sae.replacement import open_replacement

IDS = torch.randint(3, 2000, (12,), generator=torch.Generator().manual_seed(1))


@pytest.fixture(scope="module")
def lm(tiny_model_dir):
    return load_model(str(tiny_model_dir))


@pytest.fixture(scope="module", params=["plt", "clt"])
def rep(request, tmp_path_factory, tiny_model_dir):
    build = tiny_plt if request.param == "plt" else tiny_clt
    return open_replacement(build(tiny_model_dir, tmp_path_factory.mktemp(request.param) / "rep"))


@pytest.fixture(scope="module")
def clean(lm):
    with torch.no_grad():
        return lm.model(input_ids=IDS[None], use_cache=False).logits[0, -1]


def _active(result, layer, position):
    """(feature id, clean activation) of the first feature active at (layer, position)."""
    f = result.features
    i = torch.nonzero((f[:, 0] == layer) & (f[:, 1] == position)).squeeze(1)[0]
    return int(f[i, 2]), float(result.before[i])


def _value(result, layer, position, fid):
    i = torch.nonzero((result.features == torch.tensor([layer, position, fid])).all(1)).squeeze(1)
    return float(result.before[i]), float(result.after[i])


def _decoder(rep, layer, fid, target):
    """[d] raw-space decoder vector of feature `fid` at `layer` into `target`'s MLP output."""
    if rep.kind == "plt":
        return rep.dictionaries[rep.layers.index(layer)].W_dec[fid].detach() if layer == target else None
    clt = rep.dictionaries[0]
    return clt.decoder_vectors(torch.tensor([layer * clt.n_per_layer + fid]), target)[0] if target >= layer else None


def _hooked_logits(lm, rep, position, add):
    """The real model's last logits with add(t) ([d] or None) added to MLP output t at `position`."""
    hs = []
    for t, site in enumerate(rep.output_sites):
        v = add(t)
        if v is not None:

            def hook(m, a, out, v=v):
                out = out.clone()
                out[0, position] += v
                return out

            hs.append(lm.model.get_submodule(site).register_forward_hook(hook))
    try:
        with torch.no_grad():
            return lm.model(input_ids=IDS[None], use_cache=False).logits[0, -1]
    finally:
        for h in hs:
            h.remove()


@pytest.mark.parametrize("mode", ["replacement", "model"])
def test_no_edit_is_bitwise_the_clean_model(lm, rep, clean, mode):
    r = intervene(lm, rep, IDS, [], mode=mode)
    assert torch.equal(r.logits_before, clean) and torch.equal(r.logits_after, clean)
    assert torch.equal(r.before, r.after) and len(r.features) == len(rep.layers) * len(IDS) * 4  # k = 4
    assert r.targets.tolist() == [int(clean.argmax())] and r.target_change.abs().max() == 0
    # editing a feature to its own value changes nothing either
    fid, a = _active(r, 1, 5)
    for e in ([1, 5, fid, "scale", 1.0], [1, 5, fid, "clamp", a]):
        assert torch.equal(intervene(lm, rep, IDS, [e], mode=mode).logits_after, clean)


@pytest.mark.parametrize("layer", [0, 2])
def test_model_mode_ablation_equals_a_manual_forward_hook(lm, rep, layer):
    r0 = intervene(lm, rep, IDS, [])
    fid, a = _active(r0, layer, 5)
    r = intervene(lm, rep, IDS, [(layer, 5, fid, "ablate")], mode="model")
    want = _hooked_logits(
        lm, rep, 5, lambda t: None if _decoder(rep, layer, fid, t) is None else -a * _decoder(rep, layer, fid, t)
    )
    assert torch.allclose(r.logits_after, want, atol=1e-5)
    assert (r.logits_after - r.logits_before).abs().max() > 1e-4
    assert _value(r, layer, 5, fid) == (a, 0.0)
    same = intervene(lm, rep, IDS, [(torch.tensor(layer), np.int64(5), torch.tensor([fid]), "ablate")], mode="model")
    assert torch.equal(same.logits_after, r.logits_after)
    # every feature before the edited layer, and the edited layer at other positions, is untouched
    f = r.features
    assert torch.equal(r.before[f[:, 0] < layer], r.after[f[:, 0] < layer])
    assert r.target_change.item() == pytest.approx(float(want[r.targets[0]] - r.logits_before[r.targets[0]]), abs=1e-5)


def test_replacement_mode_propagates_through_the_dictionaries(lm, rep):
    """At the last layer nothing is downstream: both modes are the same manual edit. Earlier, the replacement
    model answers through its dictionaries (the frozen errors do not follow), so the modes differ, and only
    features at later layers (and later positions) move."""
    last = rep.layers[-1]
    r0 = intervene(lm, rep, IDS, [])
    fid, a = _active(r0, last, 7)
    edit = [Edit(last, 7, fid, "scale", 3.0)]
    rr, rm = (intervene(lm, rep, IDS, edit, mode=m) for m in ("replacement", "model"))
    want = _hooked_logits(lm, rep, 7, lambda t: 2 * a * _decoder(rep, last, fid, t) if t == last else None)
    assert torch.allclose(rr.logits_after, want, atol=1e-5) and torch.allclose(rm.logits_after, want, atol=1e-5)
    assert _value(rr, last, 7, fid) == pytest.approx((a, 3 * a))
    fid, a = _active(r0, 0, 4)
    rr, rm = (intervene(lm, rep, IDS, [(0, 4, fid, "clamp", 2 * a + 1)], mode=m) for m in ("replacement", "model"))
    assert _value(rr, 0, 4, fid) == pytest.approx((a, 2 * a + 1))
    assert (rr.logits_after - rm.logits_after).abs().max() > 1e-4
    moved = rr.features[rr.after != rr.before]
    assert (moved[:, 1] >= 4).all() and ((moved[:, 0] > 0) | (moved[:, 1] == 4)).all()
    top = rr.top_changed(5)
    assert top and all((t["layer"], t["position"], t["feature"]) != (0, 4, fid) for t in top)
    assert abs(top[0]["after"] - top[0]["before"]) >= abs(top[-1]["after"] - top[-1]["before"])
    js = rr.to_json(lm.tokenizer, n_features=3)
    assert (
        js["targets"][0]["label"] == lm.tokenizer.decode([int(rr.targets[0])]) and len(js["top_changed_features"]) == 3
    )
    assert js["top_before"][0]["token"] == int(rr.logits_before.argmax()) and len(js["top_after"]) == 5
    assert js["top_after"][0]["logit"] == pytest.approx(float(rr.logits_after.max()))
    assert js["edits"] == [{"layer": 0, "position": 4, "feature": fid, "op": "clamp", "value": 2 * a + 1}]


def test_scale_zero_is_ablation_and_targets_are_reported(lm, rep):
    r0 = intervene(lm, rep, IDS, [])
    fid, _ = _active(r0, 1, 6)
    targets = [5, 17, int(r0.logits_before.argmax())]
    ra = intervene(lm, rep, IDS, [(1, 6, fid, "ablate")], targets=targets)
    rs = intervene(lm, rep, IDS, [(1, 6, fid, "scale", 0.0)], targets=targets)
    assert torch.equal(ra.logits_after, rs.logits_after)
    assert ra.targets.tolist() == targets
    assert torch.allclose(ra.target_change, ra.logits_after[targets] - ra.logits_before[targets])
    mean = ra.logits_after.mean() - ra.logits_before.mean()
    assert torch.allclose(ra.target_input_change, ra.target_change - mean)


def test_bad_edits_fail_before_any_forward(lm, rep):
    calls = []
    h = lm.model.register_forward_pre_hook(lambda m, a: calls.append(1))
    n = rep.dictionaries[0].cfg.d_sae if rep.kind == "plt" else rep.dictionaries[0].n_per_layer
    try:
        for edit, msg in (
            ((1, 5, n, "ablate"), f"feature {n} is out of range; layer 1 has {n}"),
            ((1, 5, -1, "ablate"), "feature -1 is out of range"),
            ((7, 5, 0, "ablate"), "layer 7 has no dictionary"),
            ((1, 12, 0, "ablate"), "position 12 is out of range; the prompt has 12 tokens"),
            ((1, 5, 0, "zero"), "unknown op 'zero'"),
            ((1, 5, 0, "clamp"), "clamp needs a value"),
            ((1, 5, 0, "scale", float("nan")), "finite"),
            ((1, 5), "an edit is"),
            ((1.5, 5, 0, "ablate"), "layer must be an integer"),
            ({"layer": 1, "position": 5, "feat": 0}, "unexpected keyword"),
        ):
            with pytest.raises(UserError, match=msg):
                intervene(lm, rep, IDS, [(0, 1, 0, "ablate"), edit])
        with pytest.raises(UserError, match="mode 'ghost'"):
            intervene(lm, rep, IDS, [], mode="ghost")
        with pytest.raises(UserError, match="target token 49152 is not in the 49152-token vocabulary"):
            intervene(lm, rep, IDS, [], targets=[3, 49152])
        with pytest.raises(UserError, match="one prompt"):
            intervene(lm, rep, IDS.expand(2, -1), [])
    finally:
        h.remove()
    assert calls == []


def test_gpt2_plt_no_edit_and_ablation(tmp_path, embedded_folder):
    model_dir = make_tiny_gpt2(tmp_path / "gpt2", embedded_folder)
    rep = open_replacement(tiny_plt(model_dir, tmp_path / "plt"))
    gpt = load_model(str(model_dir))
    with torch.no_grad():
        clean = gpt.model(input_ids=IDS[None], use_cache=False).logits[0, -1]
    r0 = intervene(gpt, rep, IDS, [])
    assert torch.equal(r0.logits_after, clean)
    fid, a = _active(r0, 2, 9)
    r = intervene(gpt, rep, IDS, [(2, 9, fid, "ablate")], mode="replacement")
    sae = rep.dictionaries[2]
    h = gpt.model.get_submodule(rep.output_sites[2]).register_forward_hook(
        lambda m, i, o: torch.cat([o[:, :9], o[:, 9:10] - a * sae.W_dec[fid], o[:, 10:]], 1)
    )
    with torch.no_grad():
        want = gpt.model(input_ids=IDS[None], use_cache=False).logits[0, -1]
    h.remove()
    assert torch.allclose(r.logits_after, want, atol=1e-5)  # the last layer: nothing downstream


# ------------------------------------------------------------ freeze=True: the graph's direct edges


@pytest.fixture(scope="module")
def gpt2_dir(tmp_path_factory, embedded_folder):
    return make_tiny_gpt2(tmp_path_factory.mktemp("gpt2") / "model", embedded_folder)


@pytest.mark.parametrize("family,kind", [("llama", "plt"), ("llama", "clt"), ("gpt2", "plt")])
def test_frozen_ablation_changes_each_input_by_minus_the_graph_edge(family, kind, tiny_model_dir, gpt2_dir, tmp_path):
    from saelab.circuits.attribution import attribute

    model_dir = tiny_model_dir if family == "llama" else gpt2_dir
    rep = open_replacement((tiny_plt if kind == "plt" else tiny_clt)(model_dir, tmp_path / kind))
    net = load_model(str(model_dir))
    graph = attribute(net.model, rep, IDS, progress=False)
    adj, t = graph.adjacency, graph.target_index(0)
    token = int(graph.target_tokens[0])
    sel = graph.active_features[graph.selected_features]  # [n_sel, 3] node order
    for node in adj[t, : graph.n_sel].abs().argsort(descending=True)[:3].tolist():
        l, p, f = graph.feature(node)
        r = intervene(net, rep, IDS, [(l, p, f, "ablate")], targets=[token], freeze=True)
        scale = float(adj[t].abs().max())
        assert float(r.target_input_change[0]) == pytest.approx(-float(adj[t, node]), abs=1e-4 * scale)
        assert _value(r, l, p, f)[1] == 0.0
        moved = r.after != r.before
        assert moved.sum() == 1  # every other feature is frozen
        # every feature node's pre-activation moves by minus its edge from the ablated feature
        idx = [int(torch.nonzero((r.features == row).all(1))[0]) for row in sel]
        assert torch.allclose(r.input_change[idx], -adj[: graph.n_sel, node], atol=1e-4 * float(adj.abs().max()))
        # scale by 3: twice the edge (per unit: the edge / activation, times a change of 2 x activation)
        r3 = intervene(net, rep, IDS, [(l, p, f, "scale", 3.0)], targets=[token], freeze=True)
        assert float(r3.target_input_change[0]) == pytest.approx(2 * float(adj[t, node]), abs=2e-4 * scale)
    assert torch.equal(intervene(net, rep, IDS, [], freeze=True).logits_after, r.logits_before)
    with pytest.raises(UserError, match="needs mode 'replacement'"):
        intervene(net, rep, IDS, [], mode="model", freeze=True)
