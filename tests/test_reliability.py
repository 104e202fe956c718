"""Issue 16: nothing lost, nothing hung, no traceback. Bad options (config file or command line) are
one-line errors with exit status 2 before any model loads, and they never change anything on disk."""

import hashlib
import json
import os

import pytest
from test_interpret import cache as interp_cache  # noqa: F401  (a latent cache fixture)
from test_interpret import chat_model_dir  # noqa: F401

from saelab.cli import main

RUN_FILES = {"manifest.json": '{"kind": "a finished run"}\n', "sae/cfg.json": "{}\n", "train_log.jsonl": "{}\n"}


def _snapshot(root) -> dict:
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest() if p.is_file() else "dir"
        for p in sorted(root.rglob("*"))
    }


@pytest.fixture
def work(tmp_path, monkeypatch):
    """A work folder holding a finished run folder; loading a model fails the test (checks come first)."""
    import saelab.activations.disk_cache as disk_cache
    import saelab.sae.folder as folder
    import saelab.train.sources as sources

    def no_model(*a, **k):
        raise AssertionError("a model was loaded before the options were checked")

    for mod in (disk_cache, sources, folder):
        monkeypatch.setattr(mod, "load_model", no_model)
    root = tmp_path / "work"
    for name, text in RUN_FILES.items():
        (root / "run" / name).parent.mkdir(parents=True, exist_ok=True)
        (root / "run" / name).write_text(text)
    (root / "a_file").write_text("not a folder\n")
    return root


def _fails_cleanly(argv, work, capsys, expect: str = ""):
    before = _snapshot(work)
    rc = main(argv)
    err = capsys.readouterr().err
    assert rc == 2, (argv, err)
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("saelab: error: ") and "Traceback" not in err, err
    assert expect.lower() in err.lower(), (expect, err)
    assert _snapshot(work) == before, f"{argv} changed files on disk"


TRAIN_BAD = [  # (config values, words the message must hold)
    ({"overwrite": "false"}, "--overwrite must be a boolean"),
    ({"resume": "no"}, "--resume must be a boolean"),
    ({"mask_special": 1}, "--mask-special must be a boolean"),
    ({"latents": "512"}, "--dict-size must be an integer"),
    ({"tokens": 20000.5}, "--tokens must be an integer"),
    ({"lr": "fast"}, "--lr must be a number"),
    ({"lr": [1e-3, None]}, "--lr must be a number"),
    ({"model": None}, "--model must be a string"),
    ({"hookpoints": [6]}, "--hookpoints must be a string"),
    ({"hookpoints": {"a": 1}}, "--hookpoints must be a string"),
    ({"warmup_fraction": 5}, "--warmup-fraction must be between 0 and 1"),
    ({"decay_fraction": -0.5}, "--decay-fraction must be between 0 and 1"),
    ({"warmup_fraction": 0.7, "decay_fraction": 0.7}, "must be <= 1"),
    ({"sink_first_positions": -3}, "--sink-first-positions must be >= 0"),
    ({"checkpoint_every": 0}, "--checkpoint-every must be >= 1"),
    ({"buffer_batches": 0}, "--buffer-batches must be >= 1"),
    ({"threads": -1}, "--threads must be >= 1"),
    ({"device": "banana"}, "--device 'banana' is not a device"),
    ({"seed": -1}, "--seed must be >= 0"),
    ({"dist_timeout": 0}, "--dist-timeout must be > 0"),
    ({"distributed": "both"}, "unknown --distributed"),
    ({"heldout_fraction": 1.5}, "--heldout-fraction must be between 0 and 1"),
    ({"k": [0]}, "--k needs positive values"),
    ({"arch": "banana"}, "unknown --arch"),
    ({"batch_tokens": 10**12, "tokens": 10**12}, "GiB"),
    ({"latentz": 5}, "unknown keys: latentz"),
]


@pytest.mark.parametrize("values,expect", TRAIN_BAD, ids=[next(iter(v)) for v, _ in TRAIN_BAD])
def test_train_config_file_fuzz(work, tmp_path, capsys, values, expect):
    cfg = tmp_path / "c.json"
    cfg.write_text(
        json.dumps(
            {"out": str(work / "run"), "latents": 64, "k": [4], "tokens": 4096, "batch_tokens": 512, "context": 64}
            | values
        )
    )
    _fails_cleanly(["train", "--config", str(cfg)], work, capsys, expect)
    if values == {"warmup_fraction": 5}:  # the same check from a TOML file and from the command line
        toml = tmp_path / "c.toml"
        toml.write_text(f'out = "{work / "run"}"\noverwrite = "false"\n')
        _fails_cleanly(["train", "--config", str(toml)], work, capsys, "--overwrite must be a boolean")


def test_sweep_config_file_fuzz(work, tmp_path, capsys):
    for values, expect in TRAIN_BAD:
        cfg = tmp_path / "c.json"
        cfg.write_text(
            json.dumps({"latents": 64, "k": [4], "tokens": 4096, "batch_tokens": 512, "context": 64} | values)
        )
        _fails_cleanly(
            ["sweep", "--out", str(work / "run"), "--losses", "local", "--config", str(cfg)], work, capsys, expect
        )


CACHE_BAD = [
    ({"overwrite": "false"}, "--overwrite must be a boolean"),
    ({"tokens": "many"}, "--tokens must be an integer"),
    ({"shard_batches": 0}, "--shard-batches must be >= 1"),
    ({"sink_first_positions": -1}, "--sink-first-positions must be >= 0"),
    ({"sink_first_positions": 64}, "leaves nothing"),
    ({"context": 1}, "--context must be >= 2"),
    ({"heldout_fraction": 2}, "--heldout-fraction must be between 0 and 1"),
    ({"device": "cuda:banana"}, "is not a device"),
    ({"threads": 0}, "--threads must be >= 1"),
    ({"hookpoints": []}, "at least one --hookpoints"),
    ({"out": 3}, "--out must be a string"),
    ({"shards": 3}, "unknown keys: shards"),
]


@pytest.mark.parametrize("values,expect", CACHE_BAD, ids=[next(iter(v)) for v, _ in CACHE_BAD])
def test_cache_activations_config_file_fuzz(work, tmp_path, capsys, values, expect):
    cfg = tmp_path / "c.json"
    cfg.write_text(
        json.dumps(
            {
                "out": str(work / "run"),
                "hookpoints": ["model.layers.1"],
                "tokens": 4096,
                "batch_tokens": 512,
                "context": 64,
            }
            | values
        )
    )
    _fails_cleanly(["cache-activations", "--config", str(cfg)], work, capsys, expect)


SCALING_BAD = [
    ({"overwrite": "false"}, "--overwrite must be a boolean"),
    ({"latents": "512"}, "--dict-size must be an integer"),
    ({"latents": [512]}, "at least two --dict-size"),
    ({"tokens": [1.5, 2]}, "--tokens must be an integer"),
    ({"k": 0}, "--k must be >= 1"),
    ({"lr": "fast"}, "--lr must be a number"),
    ({"lr": -1}, "--lr must be positive"),
    ({"threads": 0}, "--threads must be >= 1"),
    ({"cache": 5}, "--cache must be a string"),
    ({"hookpoints": ["x"]}, "unknown keys: hookpoints"),
]


@pytest.mark.parametrize("values,expect", SCALING_BAD, ids=[next(iter(v)) for v, _ in SCALING_BAD])
def test_scaling_config_file_fuzz(work, tmp_path, capsys, values, expect):
    cfg = tmp_path / "c.json"
    cfg.write_text(
        json.dumps(
            {
                "out": str(work / "run"),
                "latents": [64, 128],
                "tokens": [1024, 2048],
                "k": 4,
                "batch_tokens": 512,
                "context": 64,
            }
            | values
        )
    )
    _fails_cleanly(["scaling", "--config", str(cfg)], work, capsys, expect)


@pytest.mark.parametrize(
    "text,expect", [("[1, 2]", "must hold an object"), ("{", "is not valid"), ('"out"', "must hold an object")]
)
def test_config_file_not_an_object(work, tmp_path, capsys, text, expect):
    cfg = tmp_path / "c.json"
    cfg.write_text(text)
    for cmd in (["train"], ["cache-activations"], ["scaling"], ["sweep", "--out", str(work / "run")]):
        _fails_cleanly([*cmd, "--config", str(cfg)], work, capsys, expect)


def test_command_line_values_checked_before_the_model(work, capsys):
    run = str(work / "new_run")
    base = [
        "train",
        "--out",
        run,
        "--dict-size",
        "64",
        "--k",
        "4",
        "--tokens",
        "4096",
        "--batch-tokens",
        "512",
        "--context",
        "64",
    ]
    for extra, expect in [
        (["--checkpoint-every", "0"], "--checkpoint-every must be >= 1"),
        (["--buffer-batches", "0"], "--buffer-batches must be >= 1"),
        (["--threads", "-1"], "--threads must be >= 1"),
        (["--device", "banana"], "is not a device"),
        (["--warmup-fraction", "5"], "between 0 and 1"),
        (["--sink-first-positions", "-3"], ">= 0"),
        (["--batch-tokens", "1000000000", "--tokens", "1000000000"], "GiB"),
    ]:
        _fails_cleanly(base + extra, work, capsys, expect)
    assert not (work / "new_run").exists()
    _fails_cleanly(base[:1] + ["--out", str(work / "a_file")] + base[3:], work, capsys, "is a file, not a folder")
    _fails_cleanly(base[:1] + ["--out", str(work / "a_file" / "sub")] + base[3:], work, capsys, "not a writable folder")
    _fails_cleanly(
        ["cache-activations", "--out", str(work / "a_file"), "--hookpoints", "model.layers.1"],
        work,
        capsys,
        "is a file",
    )


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only folders")
def test_out_in_a_read_only_folder(work, capsys):
    ro = work / "ro"
    ro.mkdir()
    ro.chmod(0o555)
    try:
        _fails_cleanly(
            ["train", "--out", str(ro / "run"), "--dict-size", "64", "--k", "4"], work, capsys, "not a writable folder"
        )
    finally:
        ro.chmod(0o755)


def test_a_string_where_a_list_is_expected_is_a_one_item_list(tmp_path):
    import argparse

    from saelab.options import add_dataclass_options, build_config
    from saelab.train.config import TrainConfig

    (tmp_path / "c.json").write_text(
        json.dumps({"out": "x", "hookpoints": "model.layers.6", "lr": 0.001, "k": 8, "tokens": 1e6})
    )
    p = argparse.ArgumentParser()
    add_dataclass_options(p, TrainConfig)
    cfg = build_config(TrainConfig, p.parse_args([]), str(tmp_path / "c.json"))
    assert cfg.hookpoints == ["model.layers.6"] and cfg.lr == [0.001] and cfg.k == [8]
    assert cfg.tokens == 1_000_000 and isinstance(cfg.tokens, int)


# ---------------------------------------------------------------- SAE folders: contradictions, NaN/inf weights
def _sae_folder(path, d_in=16, d_sae=64, k=4, hookpoint="model.layers.1", model_spec="embedded"):
    import torch

    from saelab.sae.base import SaeConfig
    from saelab.sae.folder import Provenance, save_sae
    from saelab.sae.registry import build_sae

    torch.manual_seed(0)
    sae = build_sae(SaeConfig(arch="topk", d_in=d_in, d_sae=d_sae, hookpoint=hookpoint, k=k))
    torch.nn.init.normal_(sae.W_enc)
    torch.nn.init.normal_(sae.W_dec)
    return save_sae(sae, path, Provenance(model_spec=model_spec))


def _edit_cfg(folder, fn):
    cfg = json.loads((folder / "cfg.json").read_text())
    (folder / "cfg.json").write_text(json.dumps(fn(cfg)))


def _set(cfg, keys, value):
    d = cfg
    for k in keys[:-1]:
        d = d[k]
    d[keys[-1]] = value
    return cfg


@pytest.mark.parametrize(
    "edit,expect",
    [
        (lambda c: _set(c, ["saelab", "config", "d_in"], 32), "d_in 16 contradicts saelab.config.d_in 32"),
        (lambda c: _set(_set(c, ["saelab", "config", "d_in"], 32), ["d_in"], 32), "d_out 16 differs from d_in 32"),
        (
            lambda c: _set(
                _set(_set(c, ["saelab", "config", "d_in"], 32), ["saelab", "config", "d_out"], 32), ["d_in"], 32
            ),
            "W_enc has shape (16, 64), cfg.json says (32, 64)",
        ),
        (lambda c: _set(c, ["d_in"], 99), "d_in 99 contradicts"),
        (lambda c: _set(c, ["saelab", "config", "arch"], "banana"), "unknown architecture 'banana'"),
        (lambda c: _set(c, ["saelab", "config", "k"], 1000), "k=1000 must be between 1 and d_sae=64"),
        (lambda c: _set(c, ["saelab", "config", "k"], None), "needs k"),
        (lambda c: _set(c, ["saelab", "config", "d_sae"], "64"), "d_sae must be an integer"),
        (lambda c: _set(c, ["saelab", "config"], [1]), "saelab.config must be an object"),
        (lambda c: [c], "must hold an object, not a list"),
        (lambda c: (c["saelab"]["config"].pop("hookpoint"), c)[1], "lacks hookpoint"),
    ],
)
def test_sae_folder_contradictions_are_clear_errors(tmp_path, edit, expect):
    from saelab.errors import UserError
    from saelab.sae.folder import open_sae

    folder = _sae_folder(tmp_path / "sae")
    open_sae(folder)
    _edit_cfg(folder, edit)
    with pytest.raises(UserError, match=expect.replace("(", r"\(").replace(")", r"\)")):
        open_sae(folder)


@pytest.mark.parametrize("tensor,value", [("W_enc", float("nan")), ("b_dec", float("inf")), ("W_dec", float("-inf"))])
def test_non_finite_weights_refused_at_load_with_the_tensor_name(tmp_path, capsys, tensor, value):
    from safetensors.torch import load_file, save_file

    from saelab.errors import UserError
    from saelab.sae.folder import open_sae

    folder = _sae_folder(tmp_path / "sae")
    w = folder / "sae_weights.safetensors"
    t = load_file(w)
    t[tensor].view(-1)[3] = value
    save_file(t, w)
    with pytest.raises(UserError, match=f"tensor {tensor} holds 1 NaN/inf"):
        open_sae(folder)
    assert main(["eval", str(folder)]) == 2 and f"tensor {tensor}" in capsys.readouterr().err


def test_steering_with_an_sae_of_another_width_is_a_clear_error(tmp_path, tiny_model_dir, capsys):
    folder = _sae_folder(tmp_path / "sae", d_in=48, model_spec=str(tiny_model_dir))  # the site is 64 wide
    rc = main(["steer", str(folder), "--prompt", "Hello", "--clamp", "0=1", "--max-new-tokens", "2"])
    err = capsys.readouterr().err
    assert rc == 2 and "SAE width 48->48 does not match the model's model.layers.1 (64)" in err, err


# ---------------------------------------------------------------- corpora and token caches
def test_npy_corpus_with_negative_or_damaged_ids(tmp_path, capsys):
    import numpy as np

    from saelab.data import load_token_rows
    from saelab.errors import UserError

    neg = tmp_path / "neg.npy"
    np.save(neg, np.array([[1, 2, -5, 4]] * 8, dtype=np.int64))
    with pytest.raises(UserError, match="token id -5; token ids must be >= 0"):
        load_token_rows(str(neg), context=4)
    cut = tmp_path / "cut.npy"
    np.save(cut, np.ones((64, 4), dtype=np.int32))
    cut.write_bytes(cut.read_bytes()[:-100])
    with pytest.raises(UserError, match="corrupt or truncated"):
        load_token_rows(str(cut), context=4)
    # from the command line: exit 2, and no output folder left behind
    rc = main(
        [
            "train",
            "--out",
            str(tmp_path / "run"),
            "--corpus",
            str(neg),
            "--context",
            "4",
            "--dict-size",
            "64",
            "--k",
            "4",
            "--batch-tokens",
            "512",
            "--tokens",
            "4096",
            "--model",
            "embedded",
        ]
    )
    assert rc == 2 and "must be >= 0" in capsys.readouterr().err and not (tmp_path / "run").exists()


def test_binary_txt_corpus_is_refused(tmp_path):
    from saelab.data import source_texts
    from saelab.errors import UserError

    junk = tmp_path / "junk.txt"
    junk.write_bytes(os.urandom(4096))
    with pytest.raises(UserError, match="not UTF-8 text"):
        list(source_texts(str(junk)))
    ok = tmp_path / "ok.txt"
    ok.write_bytes("caf\u00e9 ".encode() * 500 + b"\xff")  # one stray byte in a text file is fine
    assert list(source_texts(str(ok)))[0].startswith("caf\u00e9")


def test_token_cache_truncated_is_rebuilt_and_moving_the_model_keeps_it(
    tmp_path, monkeypatch, embedded_folder, text_corpus
):
    import shutil

    import numpy as np
    from transformers import AutoTokenizer

    from saelab.data import load_token_rows, tokenizer_id

    monkeypatch.setenv("SAELAB_CACHE", str(tmp_path / "cache"))
    a, b = tmp_path / "a", tmp_path / "elsewhere" / "b"
    for d in (a, b):
        d.mkdir(parents=True)
        for name in ("tokenizer.json", "tokenizer_config.json"):
            shutil.copy(embedded_folder / name, d / name)
    tok_a, tok_b = AutoTokenizer.from_pretrained(a), AutoTokenizer.from_pretrained(b)
    assert tokenizer_id(tok_a) == tokenizer_id(tok_b)
    rows = load_token_rows(str(text_corpus), tok_a, context=64)
    again = load_token_rows(str(text_corpus), tok_b, context=64)  # the same cache file, no re-tokenising
    assert again.fingerprint == rows.fingerprint
    (cached,) = (tmp_path / "cache" / "tokens").glob("*.npy")
    good = np.array(rows.tokens)
    cached.write_bytes(cached.read_bytes()[: cached.stat().st_size // 2])  # a half-copied cache file
    with pytest.warns(UserWarning, match="corrupt or truncated; re-tokenising"):
        rebuilt = load_token_rows(str(text_corpus), tok_a, context=64)
    assert np.array_equal(np.array(rebuilt.tokens), good)


# ---------------------------------------------------------------- partial files found where they are read
def test_resume_after_a_cut_log_line_gives_a_clean_log(tmp_path, tiny_model_dir, text_corpus, monkeypatch):
    """A kill mid-write leaves a cut last line in train_log.jsonl and lines for steps after the
    checkpoint; --resume trims both, so the log reads back whole and has each step once."""
    from conftest import train_cfg

    from saelab.storage import read_jsonl
    from saelab.train.loop import TrainingRun

    kw = dict(tokens=8192, checkpoint_every=2048, buffer_batches=2)
    TrainingRun(train_cfg(tmp_path / "full", tiny_model_dir, text_corpus, **kw)).run()
    full = [r["tokens"] for r in read_jsonl(tmp_path / "full" / "train_log.jsonl")]

    real = TrainingRun._checkpoint
    calls = []

    def killed_after_two(self, members, pos):  # the kill: after the 2nd checkpoint
        real(self, members, pos)
        calls.append(pos.lm_tokens)
        if len(calls) == 2:
            raise KeyboardInterrupt

    monkeypatch.setattr(TrainingRun, "_checkpoint", killed_after_two)
    run = tmp_path / "run"
    with pytest.raises(KeyboardInterrupt):
        TrainingRun(train_cfg(run, tiny_model_dir, text_corpus, **kw)).run()
    monkeypatch.setattr(TrainingRun, "_checkpoint", real)
    with open(run / "train_log.jsonl", "a") as f:  # a step logged after the checkpoint, then the line in flight
        f.write(json.dumps({"tokens": calls[-1] + 1024, "steps": 99, "saes": {}}) + "\n" + '{"tokens": 99, "ste')
    TrainingRun(train_cfg(run, tiny_model_dir, text_corpus, resume=True, **kw)).run()
    tokens = [r["tokens"] for r in read_jsonl(run / "train_log.jsonl")]
    assert tokens == full and len(set(tokens)) == len(tokens)
    assert (run / "train_curves.png").exists()


# ---------------------------------------------------------------- LLM clients: fault injection on loopback
class FakeLLM:
    """A loopback OpenAI-compatible server whose behaviour the test switches: ok | error500 |
    nonjson (200 with a text body) | huge (a 5 MB reply). Counts the requests it receives."""

    def __init__(self):
        import threading
        from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

        self.mode, self.requests = "ok", 0
        fake = self

        class H(BaseHTTPRequestHandler):
            def log_message(self, *a):
                pass

            def do_POST(self):
                self.rfile.read(int(self.headers.get("Content-Length", 0)))
                fake.requests += 1
                content = {"ok": "[EXPLANATION]: common words", "huge": "x" * 5_000_000}.get(fake.mode)
                if fake.mode == "error500":
                    code, data, ctype = 500, b'{"error": {"message": "down"}}', "application/json"
                elif fake.mode == "nonjson":
                    code, data, ctype = 200, b"<html>hello</html>", "text/html"
                else:
                    body = {
                        "id": "x",
                        "object": "chat.completion",
                        "created": 0,
                        "model": "m",
                        "choices": [
                            {"index": 0, "finish_reason": "stop", "message": {"role": "assistant", "content": content}}
                        ],
                        "usage": {"prompt_tokens": 7, "completion_tokens": 3, "total_tokens": 10},
                    }
                    code, data, ctype = 200, json.dumps(body).encode(), "application/json"
                self.send_response(code)
                self.send_header("Content-Type", ctype)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

        self.srv = ThreadingHTTPServer(("127.0.0.1", 0), H)
        threading.Thread(target=self.srv.serve_forever, daemon=True).start()
        self.url = f"http://127.0.0.1:{self.srv.server_address[1]}/v1"


@pytest.fixture
def fake_llm():
    f = FakeLLM()
    yield f
    f.srv.shutdown()


def _msgs():
    return [{"role": "user", "content": "what do these have in common?"}]


def test_client_bad_replies_are_failures_not_crashes(fake_llm):
    from saelab.interpret.clients import OpenAIClient

    c = OpenAIClient(model="m", base_url=fake_llm.url, max_retries=1, backoff=0.01)
    fake_llm.mode = "nonjson"
    r = c.generate([_msgs()], max_tokens=64)[0]
    assert not r.ok and "malformed reply" in r.error
    fake_llm.mode = "huge"
    r = c.generate([_msgs()], max_tokens=64)[0]
    assert not r.ok and "over the cap" in r.error and len(r.text) == 4096  # kept cut, as the failure's raw text
    assert c.usage.failures == 2
    fake_llm.mode = "ok"
    assert c.generate([_msgs()], max_tokens=64)[0].ok


def test_a_dead_server_stops_the_client_early(fake_llm):
    """500s on every try: after 3 requests that failed every retry the server counts as down and
    nothing more is sent; retries over the whole run are capped too."""
    from saelab.interpret.clients import OpenAIClient

    fake_llm.mode = "error500"
    c = OpenAIClient(model="m", base_url=fake_llm.url, max_retries=2, backoff=0.001, concurrency=1)
    out = c.generate([_msgs()] * 50, max_tokens=8)
    assert all(not r.ok for r in out) and c.down and "3 requests in a row" in c.down
    assert fake_llm.requests == 3 * 3  # 3 requests x (1 try + 2 retries), then none
    assert "not sent" in out[-1].error
    capped = OpenAIClient(
        model="m", base_url=fake_llm.url, max_retries=5, backoff=0.001, retry_budget=4, outage_after=1000, concurrency=1
    )
    fake_llm.requests = 0
    capped.generate([_msgs()] * 3, max_tokens=8)
    assert capped.usage.retries == 4 and fake_llm.requests == 3 + 4


def test_explain_and_score_stop_on_a_dead_server_and_retry_failed_latents(
    fake_llm, interp_cache, tmp_path, capsys, monkeypatch
):
    """An outage: explain stops early with a clear message (exit 2), its failed latents are tried
    again by the rerun against a working server; the same for score's judged scorers."""
    from test_interpret import _active_latents

    from saelab.interpret import remote_clients
    from saelab.interpret.records import load_run

    init = remote_clients._RemoteClient.__init__  # the same retries without the default 1 s backoff's sleeps
    monkeypatch.setattr(
        remote_clients._RemoteClient, "__init__", lambda self, *a, **kw: init(self, *a, **kw | {"backoff": 0.01})
    )

    cache = interp_cache
    name = cache.sae_names[0]
    lat = [str(j) for j in _active_latents(cache, name, 6)]
    run = tmp_path / "run"
    argv = [
        "explain",
        str(cache.path),
        "--dictionary",
        name,
        "--latents",
        *lat,
        "--explainer",
        "llm",
        "--client",
        "openai",
        "--base-url",
        fake_llm.url,
        "--llm",
        "m",
        "--max-retries",
        "1",
        "--concurrency",
        "1",
        "--batch-latents",
        "2",
        "--window",
        "16",
        "--n-explain",
        "8",
        "--n-score-activating",
        "10",
        "--n-score-random",
        "5",
        "--n-score-hard",
        "5",
        "--out",
        str(run),
    ]
    fake_llm.mode = "error500"
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "explain stopped early" in err and "rerun" in err and "Traceback" not in err
    assert fake_llm.requests <= 3 * 2  # 3 requests x 2 tries, then the run stops
    fails = load_run(run).explanations
    assert fails and all(r["status"] == "failed" for r in fails.values())
    fake_llm.mode, fake_llm.requests = "ok", 0
    assert main(argv) == 0
    r = load_run(run).explanations
    assert sorted(r) == sorted(int(j) for j in lat) and all(x["status"] == "ok" for x in r.values())
    assert fake_llm.requests == len(lat)
    # score: the judge is down -> stops early; the rerun scores the failed latents
    score = [
        "score",
        str(run),
        "--scorers",
        "detection",
        "--judge-mode",
        "generate",
        "--client",
        "openai",
        "--base-url",
        fake_llm.url,
        "--llm",
        "m",
        "--max-retries",
        "1",
        "--concurrency",
        "1",
        "--batch-examples",
        "10",
    ]
    fake_llm.mode, fake_llm.requests = "error500", 0
    assert main(score) == 2 and "score stopped early" in capsys.readouterr().err
    assert fake_llm.requests <= 3 * 2
    fake_llm.mode, fake_llm.requests = "ok", 0
    # the fake judge answers an explanation, never a 0/1 list: every latent is scored (and recorded) as a
    # failure, which is exit 2 with one line (issue 33), not a success
    assert main(score) == 2 and "score detection: every latent failed" in capsys.readouterr().err
    assert fake_llm.requests > 0 and len(load_run(run).scores["detection"]) == len(lat)


# ---------------------------------------------------------------- serve-llm: bounded, 400 not 500
@pytest.fixture(scope="module")
def llm_server(chat_model_dir):
    import threading

    from saelab.interpret.llm_server import make_server
    from saelab.interpret.local_client import LocalClient

    client = LocalClient(str(chat_model_dir), batch_size=4)
    srv = make_server(client=client, port=0, max_tokens_cap=900, max_body=64 * 1024)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    yield srv, client, srv.server_address[1]
    srv.shutdown()


def _raw(port, head: bytes, body: bytes = b"", timeout: float = 10) -> tuple[int, dict]:
    import socket

    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
        s.sendall(head + body)
        data = b""
        while b"\r\n\r\n" not in data:
            data += s.recv(65536)
        head_end = data.index(b"\r\n\r\n")
        length = int(
            next(ln.split(b":")[1] for ln in data[:head_end].split(b"\r\n") if ln.lower().startswith(b"content-length"))
        )
        while len(data) < head_end + 4 + length:
            data += s.recv(65536)
    return int(data.split(b" ")[1]), json.loads(data[head_end + 4 : head_end + 4 + length])


def _post_json(port, obj) -> tuple[int, dict]:
    body = json.dumps(obj).encode()
    head = (
        f"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\n\r\n"
    ).encode()
    return _raw(port, head, body)


MSG = [{"role": "user", "content": "hello"}]


@pytest.mark.parametrize(
    "body,expect",
    [
        ([1, 2], "must be a JSON object"),
        (None, "must be a JSON object"),
        ({"messages": [{"role": "user", "content": 5}]}, "text content"),
        ({"messages": MSG, "max_tokens": -5}, "between 1"),
        ({"messages": MSG, "max_tokens": "abc"}, "an integer"),
        ({"messages": MSG, "max_tokens": 0}, "between 1"),
        ({"messages": MSG, "max_tokens": 2.5}, "an integer"),
        ({"messages": MSG, "temperature": "hot"}, "a number"),
        ({"messages": MSG, "top_logprobs": 99}, "between 0 and 20"),
        ({"messages": MSG, "logprobs": "yes"}, "true or false"),
        ({"messages": MSG, "max_tokens": 901}, "over this server's cap of 900"),
    ],
)
def test_serve_llm_bad_bodies_are_400(llm_server, body, expect):
    code, reply = _post_json(llm_server[2], body)
    assert code == 400 and expect in reply["error"]["message"], reply


def test_serve_llm_body_limits_are_checked_before_reading(llm_server):
    import time

    port = llm_server[2]
    t = time.time()
    for length in (10**11, 10 * 2**20):  # a fake 100 GB length, a real 10 MB one: refused from the header
        code, reply = _raw(
            port, f"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Length: {length}\r\n\r\n".encode()
        )
        assert code == 413 and "over this server's limit" in reply["error"]["message"]
    for bad in ("-1", "lots"):
        code, reply = _raw(
            port, f"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Length: {bad}\r\n\r\n".encode()
        )
        assert code == 400 and "not a byte count" in reply["error"]["message"]
    code, reply = _raw(port, b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\n\r\n")
    assert code == 400 and "Content-Length" in reply["error"]["message"]
    assert time.time() - t < 5
    code, reply = _post_json(port, {"messages": MSG, "max_tokens": 2})
    assert code == 200 and reply["usage"]["completion_tokens"] <= 2


def test_serve_llm_stops_generating_when_the_client_leaves(llm_server):
    import socket
    import time

    srv, client, port = llm_server
    calls, tokens = client.usage.calls, client.usage.completion_tokens
    body = json.dumps({"messages": MSG, "max_tokens": 900, "temperature": 1.0}).encode()
    s = socket.create_connection(("127.0.0.1", port))
    s.sendall(f"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Length: {len(body)}\r\n\r\n".encode() + body)
    time.sleep(0.5)
    s.close()  # the client gives up
    deadline = time.time() + 60
    while client.usage.calls == calls and time.time() < deadline:
        time.sleep(0.05)
    assert client.usage.calls == calls + 1
    assert client.usage.completion_tokens - tokens < 900  # stopped early, not 900 tokens for nobody
    code, reply = _post_json(port, {"messages": MSG, "max_tokens": 3})
    assert code == 200


def test_import_of_a_saelab_folder_says_so(tmp_path, capsys):
    folder = _sae_folder(tmp_path / "sae")
    assert main(["import", str(folder), "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert "already a saelab SAE folder" in err and "damaged" not in err and not (tmp_path / "out").exists()


def test_device_banana_in_any_command_that_loads_a_model(tmp_path, capsys):
    from saelab.errors import UserError
    from saelab.models import load_model

    with pytest.raises(UserError, match="'banana' is not a device"):
        load_model("embedded", device="banana")
    folder = _sae_folder(tmp_path / "sae")
    assert main(["eval", str(folder), "--device", "banana"]) == 2
    assert "is not a device" in capsys.readouterr().err


def test_train_overwrite_removes_only_what_training_writes(tmp_path, tiny_model_dir, text_corpus):
    from conftest import train_cfg

    from saelab.train.loop import TrainingRun

    run = tmp_path / "run"
    (run / "old-sae").mkdir(parents=True)
    (run / "old-sae" / "cfg.json").write_text("{}")  # an SAE folder of the earlier run (its manifest lists it)
    (run / "manifest.json").write_text('{"command": "train", "saes": {"old-sae": {}}}')
    (run / "train_log.jsonl").write_text('{"tokens": 1}\n')
    (run / "notes.txt").write_text("mine")  # not the run's: kept
    (run / "data").mkdir()
    (run / "data" / "x.npy").write_bytes(b"keep")
    TrainingRun(train_cfg(run, tiny_model_dir, text_corpus, tokens=2048, overwrite=True)).run()
    assert (run / "notes.txt").read_text() == "mine" and (run / "data" / "x.npy").read_bytes() == b"keep"
    assert not (run / "old-sae").exists() and (run / "model.layers.1-topk-k8" / "cfg.json").exists()
    assert '"tokens": 1}' not in (run / "train_log.jsonl").read_text()
