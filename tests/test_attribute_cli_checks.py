"""`saelab attribute`: bad input is a one-line error before any attribution (most before the model loads),
and nothing is written or overwritten. Each case runs the real command line (`saelab.cli.main`) on a
random per-layer transcoder set over the tiny llama; none reaches the attribution core."""

from __future__ import annotations

import json
import shutil

import pytest
import torch

from saelab.circuits.config import AttributeConfig
from saelab.circuits.graph import save_graph
from saelab.circuits.run import prepare
from saelab.cli import main
from saelab.sae import SaeConfig, build_sae
from saelab.sae.folder import Provenance, save_sae
from saelab.sae.replacement import write_replacement
from saelab.train.layers import layer_plan

N_FEATURES = 32


def plt_folder(root, model_dir, layers="all"):
    """A replacement folder of random (untrained) top-k transcoders, one per chosen layer of `model_dir`."""
    plan = layer_plan(str(model_dir), layers)
    out = root / "plt"
    folders = []
    for x, a, b in zip(plan.layers, plan.input_sites, plan.output_sites):
        cfg = SaeConfig(arch="topk", d_in=64, d_sae=N_FEATURES, hookpoint=a, d_out=64, out_hookpoint=b, k=4)
        sae = build_sae(cfg)
        sae.reset_parameters(torch.Generator().manual_seed(x))
        prov = Provenance(model_spec=str(model_dir), corpus="builtin", context=64)
        folders.append(save_sae(sae, out / f"layer{x}", prov))
    write_replacement(out, "plt", plan, str(model_dir), "tiny", folders)
    return out


@pytest.fixture(scope="module")
def rep(tmp_path_factory, tiny_model_dir):
    return plt_folder(tmp_path_factory.mktemp("rep"), tiny_model_dir, "1,3")


def refused(capsys, argv, match: str):
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "\nsaelab: error:" in "\n" + err and "Traceback" not in err
    assert match in err, err
    return err


def base(rep, out, *extra):
    return ["attribute", str(rep), "--prompt", "def add(a, b): return a +", "--out", str(out), *extra]


@pytest.mark.parametrize(
    "extra,match",
    [
        (["--prompt", "   "], "--prompt is empty"),
        (["--max-tokens", "4"], "the limit is 4 (--max-tokens)"),
        (["--target", " b", " ba na na"], "' ba na na' is not a token of the vocabulary"),
        (["--target-diff", " b"], "--target-diff takes two tokens"),
        (["--target-diff", " b", " b"], "the same token twice"),
        (["--target", " b", "--target-feature", "1:2:3"], "give one kind of target"),
        (["--target-feature", "1-2-3"], "expected LAYER:POSITION:ID"),
        (["--target-feature", "0:2:3"], "layer 0 has no dictionary"),
        (["--target-feature", "1:2:32"], f"feature 32 is outside layer 1's 0..{N_FEATURES - 1}"),
        (["--target-feature", "1:0:3"], "position 0 is outside the prompt's feature positions"),
        (["--target-feature", "3:40:3"], "position 40 is outside"),
        (["--node-threshold", "1.5"], "--node-threshold must be between 0 and 1"),
        (["--logit-prob", "0"], "--logit-prob must be in (0, 1]"),
        (["--slug", "My Graph"], "--slug 'My Graph'"),
    ],
)
def test_bad_input_is_one_clear_line(capsys, tmp_path, rep, extra, match):
    out = tmp_path / "g"
    refused(capsys, base(rep, out, *extra), match)
    assert not out.exists()


def test_long_prompt_says_why(capsys, tmp_path, rep):
    err = refused(capsys, base(rep, tmp_path / "g", "--prompt", "word " * 300), "the limit is 256 (--max-tokens)")
    assert "feature nodes x (features + errors + tokens)" in err


def test_not_a_replacement(capsys, tmp_path, rep):
    refused(capsys, base(tmp_path, tmp_path / "g"), "is not a replacement folder")


def test_out_folder_never_overwritten(capsys, tmp_path, rep, tiny_model_dir):
    foreign = tmp_path / "mine"
    foreign.mkdir()
    (foreign / "notes.json").write_text("{}")
    refused(capsys, base(rep, foreign), "pass --overwrite")
    refused(capsys, base(rep, foreign, "--overwrite"), "not an attribution graph")
    assert (foreign / "notes.json").read_text() == "{}"
    refused(capsys, base(rep, rep, "--overwrite"), "not an attribution graph")
    assert (rep / "replacement.json").is_file()
    # a graph folder: refused without --overwrite, every file left as it was
    from random_graph import random_graph

    graph_dir = save_graph(random_graph(), tmp_path / "graph")
    before = {p.name: p.read_bytes() for p in graph_dir.iterdir()}
    refused(capsys, base(rep, graph_dir), "pass --overwrite")
    # with --overwrite a bad prompt still fails before anything is removed
    refused(capsys, base(rep, graph_dir, "--overwrite", "--prompt", ""), "--prompt is empty")
    assert {p.name: p.read_bytes() for p in graph_dir.iterdir()} == before


def test_replacement_of_another_model(capsys, tmp_path, rep, tiny_model_dir):
    from transformers import LlamaConfig, LlamaForCausalLM

    deeper = tmp_path / "deeper"  # the same tokenizer, 5 layers instead of 4
    cfg = LlamaConfig.from_pretrained(tiny_model_dir)
    cfg.num_hidden_layers = 5
    LlamaForCausalLM(cfg).save_pretrained(deeper)
    capsys.readouterr()
    for name in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copy(tiny_model_dir / name, deeper / name)
    err = refused(capsys, base(rep, tmp_path / "g", "--model", str(deeper)), "replaces a 4-layer model")
    assert err.startswith("saelab: error:")
    assert not (tmp_path / "g").exists()

    other_tok = tmp_path / "other-tok"  # the same weights, another vocabulary
    shutil.copytree(tiny_model_dir, other_tok)
    tj = json.loads((other_tok / "tokenizer.json").read_text())
    vocab = tj["model"]["vocab"]
    a, b = list(vocab)[100], list(vocab)[200]
    vocab[a], vocab[b] = vocab[b], vocab[a]
    (other_tok / "tokenizer.json").write_text(json.dumps(tj))
    refused(capsys, base(rep, tmp_path / "g", "--model", str(other_tok)), "whose tokenizer is not the one of --model")


def test_prepare_resolves_the_targets(rep, tmp_path):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(json.loads((rep / "replacement.json").read_text())["model"]["spec"])
    cfg = AttributeConfig(replacement=str(rep), prompt="def add(a, b): return a +", out=str(tmp_path / "g"))
    p = prepare(cfg)
    ids = tok("def add(a, b): return a +", add_special_tokens=False)["input_ids"]
    assert p.tokens.tolist() == [tok.bos_token_id] + ids and p.targets is None
    cfg.target = [" b", " a"]
    assert [t.ids for t in prepare(cfg).targets] == [(tok(" b")["input_ids"][0],), (tok(" a")["input_ids"][0],)]
    cfg.target, cfg.target_feature = None, "3:-1:5"
    assert prepare(cfg).targets[0].ids == (3, len(p.tokens) - 1, 5)
    assert not (tmp_path / "g").exists()


def test_max_feature_nodes_default_is_the_cores():
    """The command and the library function compute the same number of feature rows unless told otherwise."""
    import inspect

    from saelab.circuits.attribution import attribute

    library = inspect.signature(attribute).parameters["max_feature_nodes"].default
    assert AttributeConfig.__dataclass_fields__["max_feature_nodes"].default == library == 7500
