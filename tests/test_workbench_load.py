"""Issue 31, item 10: the real `saelab serve` web app under load (bench/web_app_load.py on the tiny model).

One `saelab serve` subprocess over a small SAE folder on the tiny random Llama; the bench's `load()` releases
20 fire-on-text clients and a steering thread together. Bounds checked: every answer is 200 (fire, job
polls), 202 or the documented 429 (steering), never a 5xx; every accepted steering job finishes "done";
fire-on-text is answered while a job runs; a 5th pending job is refused with 429 and its sentence; the
server prints no traceback; the RSS sampler reads the server's memory."""

from __future__ import annotations

import importlib.util
import tempfile
from pathlib import Path

import pytest
from view_helpers import make_sae_folder

ROOT = Path(__file__).resolve().parents[1]


def _bench():
    spec = importlib.util.spec_from_file_location("web_app_load", ROOT / "bench" / "web_app_load.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.fixture(scope="module")
def served(tiny_model_dir, text_corpus, tmp_path_factory):
    bench = _bench()
    folder = make_sae_folder(tmp_path_factory.mktemp("load") / "load_sae", tiny_model_dir, text_corpus)
    with tempfile.TemporaryFile("w+") as log:
        p, port, name = bench.start_server(str(folder), 2048, 1, log, wait_s=300)
        try:
            yield bench, p, port, name
        finally:
            p.terminate()
            p.wait(timeout=60)
            log.seek(0)
            text = log.read()
    assert "Traceback" not in text, text[-3000:]


def test_20_fire_clients_and_a_steering_job_all_answered(served):
    bench, p, port, name = served
    res = bench.load(port, name, clients=20, rounds=3, steer_jobs=1, steer_tokens=60, pid=p.pid)
    assert res["answers"]["fire"] == {"200": 60}, res
    assert res["answers"]["steer"] == {"202": 1}, res
    assert set(res["answers"]["jobs"]) == {"200"}, res
    assert (res["five_xx"], res["undocumented"]) == (0, {}), res
    (job,) = res["steer_jobs"]
    assert job["status"] == "done" and job["wall_s"] > 0, res
    assert res["fire_during_steering"] > 0, res  # fire-on-text does not wait for the whole job
    assert 0 < res["fire_p50_ms"] <= res["fire_p99_ms"] <= res["fire_max_ms"], res
    assert res["rss_ready_mb"] > 50 and res["peak_rss_load_mb"] >= 0.5 * res["rss_ready_mb"], res
    assert bench.rss_mb(p.pid)["VmHWM"] >= res["peak_rss_load_mb"]
    assert bench.passed(res)


def test_steering_beyond_the_bound_is_a_documented_429_while_fire_stays_200(served):
    """6 steering requests in a row (120 new tokens x 5 generations each): the app holds at most 4 pending."""
    bench, p, port, name = served
    res = bench.load(port, name, clients=20, rounds=2, steer_jobs=6, steer_tokens=120, pid=p.pid)
    assert res["answers"]["fire"] == {"200": 40}, res
    assert (res["five_xx"], res["undocumented"]) == (0, {}), res
    assert res["steer_accepted"] + res["steer_refused_429"] == 6, res
    assert res["steer_refused_429"] >= 1 and res["steer_accepted"] >= 4, res
    assert [j["status"] for j in res["steer_jobs"]] == ["done"] * res["steer_accepted"], res
    assert bench.passed(res)


def test_a_5xx_or_an_unfinished_job_fails_the_bench():
    bench = _bench()
    good = {"five_xx": 0, "undocumented": {}, "steer_accepted": 1, "steer_jobs": [{"status": "done"}]}
    assert bench.passed(good)
    assert not bench.passed({**good, "five_xx": 1})
    assert not bench.passed({**good, "undocumented": {"fire": {"429": 1}}})
    assert not bench.passed({**good, "steer_jobs": [{"status": "error"}]})
    assert not bench.passed({**good, "steer_accepted": 0, "steer_jobs": []})
    assert not bench.passed({**good, "server_tracebacks": 1})
