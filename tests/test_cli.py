"""The command line: config files, clear errors with exit status 2, no tracebacks for user errors."""

import json

from saelab.cli import main
from saelab.options import build_config
from saelab.train.config import TrainConfig


def test_config_file_then_command_line(tmp_path):
    import argparse

    from saelab.options import add_dataclass_options

    (tmp_path / "c.toml").write_text('out = "runs/x"\nk = [8, 16]\nlatents = 512\nlr = [0.001]\n')
    p = argparse.ArgumentParser()
    add_dataclass_options(p, TrainConfig)
    cfg = build_config(TrainConfig, p.parse_args(["--dict-size", "1024"]), str(tmp_path / "c.toml"))
    assert cfg.k == [8, 16] and cfg.latents == 1024 and cfg.out == "runs/x" and cfg.learning_rates == [0.001]
    (tmp_path / "bad.json").write_text(json.dumps({"out": "x", "latentz": 5}))
    try:
        build_config(TrainConfig, p.parse_args([]), str(tmp_path / "bad.json"))
    except Exception as e:  # noqa: BLE001
        assert "unknown keys: latentz" in str(e)
    else:
        raise AssertionError("unknown config key accepted")


def test_user_errors_exit_2_with_a_message(tmp_path, capsys):
    rc = main(["train", "--out", str(tmp_path / "o"), "--k", "9999", "--dict-size", "64"])
    err = capsys.readouterr().err
    assert rc == 2 and "larger than the dictionary" in err and "Traceback" not in err
    rc = main(["eval", str(tmp_path / "missing")])
    assert rc == 2 and "not an SAE folder" in capsys.readouterr().err


def test_default_learning_rate_scales_with_dictionary_size():
    a = TrainConfig(out="x", latents=2**14).learning_rates[0]
    b = TrainConfig(out="x", latents=2**16).learning_rates[0]
    assert a == 2e-3 and abs(b - 1e-3) < 1e-12
