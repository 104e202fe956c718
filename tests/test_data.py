"""Text -> token rows: every source type, the deterministic split, and the on-disk cache."""

import json

import numpy as np
import pytest

from saelab import data
from saelab.data import load_token_rows
from saelab.errors import UserError


@pytest.fixture(scope="module")
def tok(embedded_folder):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(embedded_folder)


def test_txt_jsonl_parquet_give_the_same_rows(tmp_path, tok):
    import pyarrow as pa
    import pyarrow.parquet as pq

    docs = [f"Document number {i} talks about topic {i % 7} at some length. " * 5 for i in range(40)]
    (tmp_path / "a.jsonl").write_text("\n".join(json.dumps({"text": d}) for d in docs))
    pq.write_table(pa.table({"text": docs}), tmp_path / "a.parquet")
    r1 = load_token_rows(str(tmp_path / "a.jsonl"), tok, 32)
    r2 = load_token_rows(str(tmp_path / "a.parquet"), tok, 32)
    assert r1.tokens.shape == r2.tokens.shape and r1.tokens.shape[1] == 32
    np.testing.assert_array_equal(r1.tokens, r2.tokens)
    assert (r1.tokens[:, 0] == tok.bos_token_id).all()  # BOS starts every row
    assert tok.eos_token_id in r1.tokens  # documents are separated by EOS


def test_split_is_deterministic_and_disjoint(text_corpus, tok):
    a = load_token_rows(str(text_corpus), tok, 64)
    b = load_token_rows(str(text_corpus), tok, 64)
    np.testing.assert_array_equal(a.heldout_rows, b.heldout_rows)
    assert not set(a.train_rows) & set(a.heldout_rows)
    assert len(a.train_rows) + len(a.heldout_rows) == len(a.tokens)


def test_second_load_uses_the_cache(text_corpus, tok, monkeypatch):
    load_token_rows(str(text_corpus), tok, 48)
    monkeypatch.setattr(data, "tokenize_stream", lambda *a, **k: pytest.fail("tokenised again"))
    rows = load_token_rows(str(text_corpus), tok, 48)
    assert isinstance(rows.tokens, np.memmap)


def test_changed_file_is_tokenised_again(tmp_path, tok):
    p = tmp_path / "c.txt"
    p.write_text("alpha beta gamma " * 200)
    a = load_token_rows(str(p), tok, 16)
    p.write_text("delta epsilon " * 300)
    b = load_token_rows(str(p), tok, 16)
    assert a.fingerprint != b.fingerprint


def test_npy_rows_used_as_is(tmp_path):
    arr = np.arange(40 * 16, dtype=np.int32).reshape(40, 16) % 1000
    np.save(tmp_path / "t.npy", arr)
    rows = load_token_rows(str(tmp_path / "t.npy"), None, 16)
    np.testing.assert_array_equal(rows.tokens, arr)  # no BOS added
    with pytest.raises(UserError, match="rows of 16 tokens but --context is 8"):
        load_token_rows(str(tmp_path / "t.npy"), None, 8)
    with pytest.raises(UserError, match="outside the model's vocabulary"):
        load_token_rows(str(tmp_path / "t.npy"), None, 16, vocab_size=500)


def test_empty_and_bad_corpora(tmp_path, tok):
    (tmp_path / "e.txt").write_text("")
    with pytest.raises(UserError, match="no complete row"):
        load_token_rows(str(tmp_path / "e.txt"), tok, 32)
    (tmp_path / "b.jsonl").write_text('{"content": "x"}\n')
    with pytest.raises(UserError, match="no 'text' field"):
        load_token_rows(str(tmp_path / "b.jsonl"), tok, 32)
    with pytest.raises(UserError, match="unsupported file type"):
        (tmp_path / "x.csv").write_text("a,b")
        load_token_rows(str(tmp_path / "x.csv"), tok, 32)


def test_builtin_corpus_is_real_text():
    texts = data.builtin_texts()
    first = [next(texts) for _ in range(3)]
    assert all(len(t) > 20 for t in first)
    assert sum(1 for _ in data.builtin_texts()) > 500  # prose topics plus stdlib modules


def test_hf_dataset_loading_from_local_files(tmp_path, tok):
    """The Hugging Face `datasets` path, pointed at a local dataset folder instead of the hub."""
    pytest.importorskip("datasets")
    folder = tmp_path / "ds"
    folder.mkdir()
    docs = [f"Hub document {i} " * 30 for i in range(30)]
    (folder / "train.jsonl").write_text("\n".join(json.dumps({"text": d}) for d in docs))
    assert list(data.source_texts(f"hf:{folder}")) == docs
    rows = load_token_rows(f"hf:{folder}", tok, 32)
    assert rows.tokens.shape[1] == 32 and len(rows.tokens) > 10


def test_atomic_writes_get_the_usual_permissions(tmp_path):
    import os
    import stat

    from saelab.storage import write_json

    p = tmp_path / "m.json"
    write_json(p, {"a": 1})
    umask = os.umask(0)
    os.umask(umask)
    assert stat.S_IMODE(p.stat().st_mode) == 0o666 & ~umask
