"""Steering: exactness with no edit, the edit's exact effect on the residual stream, KV-cached
generation equal to full recomputation (ours and Hugging Face's generate), same-seed sampling,
the contrastive baseline, and the `saelab steer` command."""

import json

import pytest
import torch
from view_helpers import make_sae_folder

from saelab.cli import main
from saelab.errors import UserError
from saelab.features.steer import (
    FeatureEdit,
    FeatureSteer,
    check_edits,
    contrastive_direction,
    direction_steer,
    encode_prompt,
    generate,
    parse_edit,
    steer_compare,
    steering_context,
)
from saelab.models import load_model
from saelab.sae.folder import load_sae
from saelab.sae.splice import spliced

PROMPT = "The quick brown fox jumps over the lazy dog because"


@pytest.fixture(scope="module")
def setup(tiny_model_dir, text_corpus, tmp_path_factory):
    folder = make_sae_folder(tmp_path_factory.mktemp("sae") / "tiny_sae", tiny_model_dir, text_corpus)
    sae, cfg = load_sae(folder)
    lm = load_model(str(tiny_model_dir))
    return lm, sae, folder


def _next_layer_input(model, ids, ctx):
    got = {}
    h = model.model.layers[2].register_forward_pre_hook(lambda m, a: got.__setitem__("x", a[0].clone()))
    try:
        with ctx():
            logits = model(input_ids=ids).logits
    finally:
        h.remove()
    return got["x"], logits


def test_no_edit_is_bitwise_the_model(setup):
    lm, sae, _ = setup
    ids = encode_prompt(lm.tokenizer, PROMPT)
    clean = lm.model(input_ids=ids).logits
    with spliced(lm.model, sae, error_term=True, edit=lambda d: d):
        same = lm.model(input_ids=ids).logits
    assert torch.equal(clean, same)
    # An edit that clamps a latent to the value it already has is also exact.
    with spliced(lm.model, sae, error_term=True, edit=FeatureSteer([], skip_first=0)):
        assert torch.equal(clean, lm.model(input_ids=ids).logits)


def test_clamp_moves_the_activation_by_the_decoder_direction(setup):
    lm, sae, _ = setup
    ids = encode_prompt(lm.tokenizer, PROMPT)
    x_clean, _ = _next_layer_input(lm.model, ids, lambda: torch.no_grad())
    j, v = 5, 7.0
    steer = FeatureSteer([FeatureEdit(j, "clamp", v)], skip_first=1)
    x_steer, _ = _next_layer_input(lm.model, ids, steering_context(lm.model, sae, steer))
    a = sae.encode_raw(x_clean[0]).to_dense()[:, j]  # the latent's own value per position [T]
    expected = (v - a)[:, None] * sae.W_dec[j]  # [T, d]
    delta = (x_steer - x_clean)[0]
    assert torch.equal(delta[0], torch.zeros_like(delta[0]))  # the sink position is never edited
    torch.testing.assert_close(delta[1:], expected[1:], atol=1e-5, rtol=1e-4)
    # add = the multiple of the decoder direction, wherever the latent stands
    steer = FeatureSteer([FeatureEdit(j, "add", 2.5)], skip_first=1)
    x_add, _ = _next_layer_input(lm.model, ids, steering_context(lm.model, sae, steer))
    torch.testing.assert_close(
        (x_add - x_clean)[0, 1:], (2.5 * sae.W_dec[j]).expand(ids.shape[1] - 1, -1), atol=1e-5, rtol=1e-4
    )


def test_kv_cached_steering_equals_full_recompute_and_hf_generate(setup):
    lm, sae, _ = setup
    ids = encode_prompt(lm.tokenizer, PROMPT)
    steer = FeatureSteer([FeatureEdit(3, "clamp", 20.0), FeatureEdit(9, "add", 10.0)])
    ctx = steering_context(lm.model, sae, steer)
    new = generate(lm.model, lm.tokenizer, ids, 12, context=ctx, reset=steer.reset)
    clean = generate(lm.model, lm.tokenizer, ids, 12)
    assert new != clean  # the edit matters for this model
    # The whole sequence in one forward, steered, predicts every generated token (greedy).
    full = torch.tensor([ids[0].tolist() + new[:-1]])
    steer.reset()
    with ctx():
        logits = lm.model(input_ids=full, use_cache=False).logits[0]
    assert logits[ids.shape[1] - 1 :].argmax(-1).tolist() == new
    # Hugging Face's own KV-cached generate under the same splice gives the same tokens.
    steer.reset()
    with ctx():
        hf = lm.model.generate(
            ids, max_new_tokens=12, do_sample=False, use_cache=True, pad_token_id=lm.tokenizer.eos_token_id
        )
    assert hf[0, ids.shape[1] :].tolist() == new


def test_same_seed_same_samples_and_no_edit_equals_model(setup):
    lm, sae, _ = setup
    ids = encode_prompt(lm.tokenizer, PROMPT)
    a = generate(lm.model, lm.tokenizer, ids, 15, temperature=1.0, seed=7)
    b = generate(lm.model, lm.tokenizer, ids, 15, temperature=1.0, seed=7)
    c = generate(lm.model, lm.tokenizer, ids, 15, temperature=1.0, seed=8)
    assert a == b and a != c
    steer = FeatureSteer([])
    d = generate(
        lm.model,
        lm.tokenizer,
        ids,
        15,
        temperature=1.0,
        seed=7,
        context=steering_context(lm.model, sae, steer),
        reset=steer.reset,
    )
    assert d == a
    out = steer_compare(
        lm.model, lm.tokenizer, sae, PROMPT, FeatureSteer([FeatureEdit(3, "clamp", 30.0)]), 10, temperature=1.0, seed=7
    )
    assert out["unsteered"] == lm.tokenizer.decode(a[:10], skip_special_tokens=True)
    assert out["steered"] != out["unsteered"]


def test_relative_values_and_bad_edits():
    assert parse_edit("12=4x", "clamp") == FeatureEdit(12, "clamp", 4.0, True)
    assert parse_edit(" 3 = -2.5 ", "add") == FeatureEdit(3, "add", -2.5, False)
    assert FeatureEdit(1, "clamp", 3.0, True).resolved(torch.tensor([1.0, 2.5])) == 7.5
    for bad in ("x=3", "3", "3=abc", "-1=2"):
        with pytest.raises(UserError, match="expected LATENT=VALUE"):
            parse_edit(bad, "clamp")
    with pytest.raises(UserError, match="does not exist"):
        check_edits([FeatureEdit(128, "clamp", 1.0)], 128)
    with pytest.raises(UserError, match="max activations"):
        FeatureEdit(1, "clamp", 3.0, True).resolved(None)


def test_contrastive_direction_is_the_mean_difference(setup):
    lm, _, _ = setup
    pos, neg = ["I love it", "great fun"], ["I hate it"]
    d = contrastive_direction(lm.model, lm.tokenizer, "model.layers.1", pos, neg)
    from saelab.models import collect_activations

    def acts(p):
        return collect_activations(lm.model, encode_prompt(lm.tokenizer, p), ["model.layers.1"])["model.layers.1"][
            0, 1:
        ]

    expected = torch.cat([acts(p) for p in pos]).mean(0) - acts(neg[0]).mean(0)
    torch.testing.assert_close(d, expected)
    ids = encode_prompt(lm.tokenizer, PROMPT)
    x_clean, _ = _next_layer_input(lm.model, ids, lambda: torch.no_grad())
    s = direction_steer("model.layers.1", d, 3.0)
    x_s, _ = _next_layer_input(lm.model, ids, steering_context(lm.model, None, s))
    delta = (x_s - x_clean)[0]
    assert torch.equal(delta[0], torch.zeros_like(delta[0]))
    torch.testing.assert_close(delta[1:], (3.0 * d).expand(ids.shape[1] - 1, -1), atol=1e-5, rtol=1e-4)
    with pytest.raises(UserError, match="at least one"):
        contrastive_direction(lm.model, lm.tokenizer, "model.layers.1", pos, [])


def test_steer_command(setup, tmp_path, capsys):
    lm, _, folder = setup
    out = tmp_path / "steer.json"
    rc = main(
        ["steer", str(folder), "--prompt", PROMPT, "--clamp", "3=30", "--max-new-tokens", "8", "--json", str(out)]
    )
    assert rc == 0
    printed = capsys.readouterr().out
    assert "--- unsteered ---" in printed and "clamp 3 -> 30" in printed
    rec = json.loads(out.read_text())["results"][0]
    ids = encode_prompt(lm.tokenizer, PROMPT)
    assert rec["unsteered"] == lm.tokenizer.decode(generate(lm.model, lm.tokenizer, ids, 8), skip_special_tokens=True)
    assert rec["steered"] != rec["unsteered"]
    # relative values build a small latent cache for the max activations, then steer
    rc = main(
        [
            "steer",
            str(folder),
            "--prompt",
            "Hello",
            "--clamp",
            "3=5x",
            "--max-new-tokens",
            "4",
            "--stats-tokens",
            "2048",
        ]
    )
    assert rc == 0 and "(5.0x max)" in capsys.readouterr().out
    # a sweep: one steered text per strength, each naming the value used
    assert main(["steer", str(folder), "--prompt", PROMPT, "--clamp", "3=30", "--max-new-tokens", "3", "--sweep"]) == 0
    printed = capsys.readouterr().out
    for x, v in (("0.5", "15"), ("1", "30"), ("2", "60"), ("4", "120")):
        assert f"--- steered x{x} (clamp 3 -> {v})" in printed
        # bad input: clear errors, exit code 2, before any generation
    assert main(["steer", str(folder), "--prompt", "x", "--clamp", "999=1"]) == 2
    assert "does not exist" in capsys.readouterr().err
    assert main(["steer", str(folder), "--prompt", "x"]) == 2
    assert "nothing to steer" in capsys.readouterr().err
    assert main(["steer", "--prompt", "x", "--positive", "a", "--negative", "b"]) == 2
    assert "--hookpoint" in capsys.readouterr().err


def test_strength_sweep_same_seed_values_progress_and_cancel(setup):
    """A sweep gives one steered text per strength with the same seed: the 1x text is the plain
    steered text, each records the value actually clamped, progress counts generations and tokens
    of each (never more than asked), and a set cancel event stops before the first forward."""
    import threading

    from saelab.features.steer import Cancelled, degenerate
    from saelab.features.steering import SteeringRequest, run_steering

    lm, sae, _ = setup
    seen = []
    req = SteeringRequest(
        [PROMPT], [FeatureEdit(3, "clamp", 20.0)], max_new_tokens=6, temperature=1.0, seed=3, strengths=[0.5, 1.0, 2.0]
    )
    (r,) = run_steering(req, lm.model, lm.tokenizer, sae, on_token=lambda *a: seen.append(a)).results
    assert [v["strength"] for v in r["sweep"]] == [0.5, 1.0, 2.0]
    assert [v["edits"] for v in r["sweep"]] == [[{"latent": 3, "op": "clamp", "value": v}] for v in (10.0, 20.0, 40.0)]
    one = steer_compare(
        lm.model, lm.tokenizer, sae, PROMPT, FeatureSteer([FeatureEdit(3, "clamp", 20.0)]), 6, temperature=1.0, seed=3
    )
    assert r["unsteered"] == one["unsteered"] and r["sweep"][1]["text"] == one["steered"] == r["sweep"][1]["text"]
    assert r["steered"] == r["sweep"][0]["text"]
    assert {g for g, n, k, m in seen} == {0, 1, 2, 3} and all(n == 4 and 1 <= k <= m == 6 for g, n, k, m in seen)
    assert seen == sorted(seen)
    stop = threading.Event()
    stop.set()
    with pytest.raises(Cancelled):
        run_steering(req, lm.model, lm.tokenizer, sae, cancel=stop)
    with pytest.raises(UserError, match="strengths"):
        run_steering(
            SteeringRequest([PROMPT], [FeatureEdit(3, "clamp", 1.0)], strengths=[]), lm.model, lm.tokenizer, sae
        )
    assert degenerate("\n\n\n") == "empty (only whitespace)" and degenerate("") == "empty"
    assert degenerate(" ... !!") == "mostly symbols or digits" and degenerate("\n" * 19 + "ING") == "mostly whitespace"
    assert degenerate(".com" * 10) == "repeats a 4-character pattern"
    assert degenerate(" a snail" + "\n\nThe" * 6) == "repeats a 5-character pattern"
    assert degenerate(" the world of" * 6).startswith("repetitive") and degenerate("(()" + "()" * 15) is not None
    for fluent in (
        "The server sends the reply to the client.",
        " a mix of both.\n\nThe weather today is a mix of both.",
        " the best places to eat in the city of Paris. I'm not just talking about the famous E",
    ):
        assert degenerate(fluent) is None, fluent
