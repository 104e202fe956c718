"""The real path on the embedded SmolLM2-135M-Instruct: hookpoints, the attention sink, a short
training run through the command line, and evaluation with the sink kept clean."""

import json

import pytest
import torch
from conftest import cli

from saelab.models import collect_activations, hookpoint_widths, load_model, resolve_hookpoints
from saelab.sinks import SinkConfig, excluded_positions, special_ids

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def smol(embedded_folder):
    return load_model("embedded")


def test_embedded_model_hookpoints_and_generation(smol):
    assert resolve_hookpoints(smol.model, ["model.layers.*"]) == [f"model.layers.{i}" for i in range(30)]
    assert hookpoint_widths(smol.model, ["model.layers.6", "model.layers.6.mlp.down_proj:input"]) == {
        "model.layers.6": 576,
        "model.layers.6.mlp.down_proj:input": 1536,
    }
    ids = smol.tokenizer("The capital of Germany is", return_tensors="pt").input_ids
    out = smol.model.generate(ids, max_new_tokens=3, do_sample=False)
    assert "Berlin" in smol.tokenizer.decode(out[0, ids.shape[1] :])


def test_attention_sink_is_found_at_position_zero(smol):
    text = "Sparse autoencoders find features in the residual stream of a language model. " * 6
    ids = smol.tokenizer(text, return_tensors="pt").input_ids[:, :64]
    acts = collect_activations(smol.model, ids, ["model.layers.6"])["model.layers.6"]
    norms = acts.norm(dim=-1)[0]
    assert norms[0] > 4 * norms[1:].median()  # the sink: far above the typical position
    mask = excluded_positions(
        [acts], ids, SinkConfig(first_positions=0, mask_special=False), special_ids(smol.tokenizer)
    )
    assert mask[0, 0] and mask[0, 1:].float().mean() < 0.05  # found by its norm alone, few false alarms


def test_train_and_eval_on_the_real_model(tmp_path):
    out = tmp_path / "run"
    r = cli(  # in this process: no second interpreter importing torch and transformers
        [
            "train",
            "--hookpoints",
            "model.layers.3",
            "--dict-size",
            "1152",
            "--k",
            "32",
            "--tokens",
            "49152",
            "--lr",
            "0.002",
            "--out",
            str(out),
            "--threads",
            "2",
        ]
    )
    assert r.returncode == 0, r.stderr[-2000:]
    folder = out / "model.layers.3-topk-k32"
    cfg = json.loads((folder / "cfg.json").read_text())
    assert cfg["architecture"] == "topk" and cfg["d_in"] == 576 and cfg["k"] == 32
    assert cfg["metadata"]["model_name"] == "HuggingFaceTB/SmolLM2-135M-Instruct"
    # 512 CE positions (2 rows) keep every margin: measured CE +2.60 sinks clean vs +4.54 every position spliced,
    # 59% recovered vs the mean (1024 positions: +2.98 vs +4.76, 54%)
    r = cli(["eval", str(folder), "--tokens", "8192", "--ce-tokens", "512"])
    assert r.returncode == 0, r.stderr[-2000:]
    m = json.loads((folder / "metrics.json").read_text())["metrics"]
    assert m["fvu"] < 0.6 and m["l0"] == pytest.approx(32, abs=0.5)
    assert m["ce_increase"] < m["ce_zero_ablation"] - m["ce_clean"]  # better than deleting the site
    assert m["ce_recovered_mean"] > 0
    # keeping the sink clean is what keeps the model working
    assert m["ce_increase"] < m["ce_increase_all_positions"]
    assert "sinks kept clean" in r.stdout


def test_gguf_file_loads_directly_and_matches_the_cached_model(smol):
    from saelab.models import embedded_gguf_path

    direct = load_model(str(embedded_gguf_path()))
    ids = torch.tensor([[1, 504, 3575, 282, 4521, 314]])
    torch.testing.assert_close(direct.model(input_ids=ids).logits, smol.model(input_ids=ids).logits)
