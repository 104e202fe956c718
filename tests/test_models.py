"""Hookpoints, the truncated forward, splicing, and sink detection on a tiny random Llama."""

import pytest
import torch

from saelab.errors import UserError
from saelab.models import (
    candidate_hookpoints,
    collect_activations,
    hookpoint_widths,
    layer_index,
    load_model,
    patch_activation,
    resolve_hookpoints,
)
from saelab.sinks import SinkConfig, excluded_positions


@pytest.fixture(scope="module")
def tiny(tiny_model_dir):
    return load_model(str(tiny_model_dir))


def test_hookpoints_listed_with_kinds_and_widths(tiny):
    sites = dict(candidate_hookpoints(tiny.model))
    assert sites["model.layers.0"] == "resid_post"
    assert sites["model.layers.0.mlp"] == "mlp_out"
    assert sites["model.layers.0.self_attn"] == "attn_out"
    assert sites["model.layers.0.post_attention_layernorm"] == "mlp_in"
    w = hookpoint_widths(tiny.model, ["model.layers.0", "model.layers.0.mlp.down_proj:input"])
    assert w == {"model.layers.0": 64, "model.layers.0.mlp.down_proj:input": 128}


def test_glob_and_unknown_names(tiny):
    assert resolve_hookpoints(tiny.model, ["model.layers.*.mlp"]) == [f"model.layers.{i}.mlp" for i in range(4)]
    with pytest.raises(UserError, match="closest valid names: model.layers.2"):
        resolve_hookpoints(tiny.model, ["model.layer.2"])
    with pytest.raises(UserError, match="matches nothing"):
        resolve_hookpoints(tiny.model, ["model.blocks.*"])
    assert layer_index(tiny.model, "model.layers.3.mlp") == 3


def test_forward_stops_after_deepest_hook(tiny):
    ids = torch.randint(0, 1000, (2, 8))
    ran = []
    h = tiny.model.model.layers[3].register_forward_hook(lambda *a: ran.append(3))
    try:
        acts = collect_activations(tiny.model, ids, ["model.layers.1", "model.layers.0.mlp"])
    finally:
        h.remove()
    assert ran == [] and acts["model.layers.1"].shape == (2, 8, 64)
    # the truncated activation equals the full forward's hidden state
    full = tiny.model(input_ids=ids, output_hidden_states=True).hidden_states[2]
    torch.testing.assert_close(acts["model.layers.1"], full)


def test_splice_identity_is_exact_and_zero_changes_output(tiny):
    ids = torch.randint(0, 1000, (1, 8))
    clean = tiny.model(input_ids=ids).logits
    with patch_activation(tiny.model, "model.layers.1", lambda a: a.clone()):
        same = tiny.model(input_ids=ids).logits
    with patch_activation(tiny.model, "model.layers.1", torch.zeros_like):
        zero = tiny.model(input_ids=ids).logits
    torch.testing.assert_close(same, clean)
    assert (zero - clean).abs().max() > 1e-3


def test_sink_detection_flags_first_position_special_tokens_and_outliers():
    acts = torch.ones(2, 6, 4)
    acts[1, 3] *= 50  # an outlier in the middle
    ids = torch.tensor([[1, 5, 6, 2, 7, 8], [9, 5, 6, 7, 7, 8]])
    m = excluded_positions([acts], ids, SinkConfig(first_positions=1, mask_special=True, norm_factor=5.0), [1, 2])
    assert m.tolist() == [[True, False, False, True, False, False], [True, False, False, True, False, False]]
    assert not excluded_positions([acts], ids, SinkConfig.off(), [1, 2]).any()


def test_bad_model_specs(tmp_path):
    with pytest.raises(UserError, match="no config.json"):
        load_model(str(tmp_path))
    with pytest.raises(UserError, match="does not exist"):
        load_model(str(tmp_path / "m.gguf"))
