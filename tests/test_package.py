"""The package people install (issue 29 item 5): `python -m build` makes an sdist and a wheel that pass
`twine check`, the wheel holds exactly the package's files (every non-.py file saelab reads at run time
included), and the wheel installed into a fresh virtualenv runs from its own site-packages, never from this
source tree: `saelab --help`, `saelab --version`, `import saelab`, an SAE folder loaded and applied.

The fresh virtualenv gets saelab from the wheel and nothing else; its dependencies (torch, transformers, ...)
are this virtualenv's, made visible by a .pth file that lists this virtualenv's site-packages. That is not
`--system-site-packages` (which would expose the interpreter's packages, not this virtualenv's) and not a
reinstall (torch alone is GBs, and CI is offline). It cannot expose the source tree: a path line in a .pth
only appends that folder to sys.path, and Python runs the .pth files it finds inside a folder only for site
folders, so this virtualenv's `__editable__.saelab-*.pth` (the editable install's import hook that maps
`saelab` to the checkout) never runs there. The test checks that: before the wheel is installed, `import
saelab` must fail in the fresh virtualenv while `import torch` works."""

from __future__ import annotations

import argparse
import os
import re
import shutil
import site
import subprocess
import sys
import tarfile
import zipfile
from pathlib import Path

import pytest
import torch

pytest.importorskip("build", reason="`build` is not installed (pip install -e '.[test]' installs it)")

ROOT = Path(__file__).resolve().parents[1]
TIMEOUT = 300


def _env() -> dict:
    """The environment without PYTHONPATH and friends: the test suite runs with PYTHONPATH=<checkout>, which
    would put the source tree ahead of the installed wheel."""
    return {k: v for k, v in os.environ.items() if not k.startswith("PYTHON") and k != "VIRTUAL_ENV"}


def _run(cmd: list, cwd: Path) -> subprocess.CompletedProcess:
    r = subprocess.run([str(c) for c in cmd], cwd=cwd, env=_env(), capture_output=True, text=True, timeout=TIMEOUT)
    assert r.returncode == 0, f"{cmd} failed ({r.returncode}):\n{r.stdout[-3000:]}\n{r.stderr[-3000:]}"
    return r


def _source_files() -> list[str]:
    """The checkout's files as git sees them: tracked and untracked-but-not-ignored, edits included (not
    .venv, .cache, runs, build outputs). Without git (an unpacked sdist): everything but caches."""
    try:
        out = subprocess.run(
            ["git", "-C", str(ROOT), "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
            capture_output=True,
            check=True,
        ).stdout.decode()
        names = [n for n in out.split("\0") if n]
    except (OSError, subprocess.CalledProcessError):
        names = [str(p.relative_to(ROOT)) for p in ROOT.rglob("*") if p.is_file()]
    return sorted(n for n in names if (ROOT / n).is_file() and "__pycache__" not in n and not n.endswith(".pyc"))


@pytest.fixture(scope="module")
def dist(tmp_path_factory) -> tuple[Path, Path, list[str]]:
    """(sdist, wheel, the package's files in the checkout), built from a copy of the checkout (building in
    place would leave build/ and saelab.egg-info/ in it). `python -m build` makes the sdist first and the
    wheel from the unpacked sdist, so the wheel also proves the sdist holds what a build needs.
    --no-isolation: the setuptools of this virtualenv, offline and ~4 s (an isolated build downloads it)."""
    tmp = tmp_path_factory.mktemp("package")
    src, out = tmp / "src", tmp / "dist"
    files = _source_files()
    for name in files:
        (src / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(ROOT / name, src / name)
    _run([sys.executable, "-m", "build", "--no-isolation", "--outdir", out, src], cwd=tmp)
    (sdist,), (wheel,) = sorted(out.glob("*.tar.gz")), sorted(out.glob("*.whl"))
    return sdist, wheel, [n for n in files if n.startswith("saelab/")]


def test_sdist_and_wheel_pass_twine_check_and_carry_the_metadata(dist):
    import saelab

    sdist, wheel, _ = dist
    _run([sys.executable, "-m", "twine", "check", "--strict", sdist, wheel], cwd=ROOT)
    v = saelab.__version__  # the one place the version is written; pyproject.toml reads it
    assert sdist.name == f"saelab-{v}.tar.gz" and wheel.name == f"saelab-{v}-py3-none-any.whl"
    with zipfile.ZipFile(wheel) as z:
        meta = z.read(f"saelab-{v}.dist-info/METADATA").decode()
        assert z.read(f"saelab-{v}.dist-info/licenses/LICENSE") == (ROOT / "LICENSE").read_bytes()
        assert "saelab = saelab.cli:main" in z.read(f"saelab-{v}.dist-info/entry_points.txt").decode()
    head = meta.split("\n\n", 1)[0].splitlines()
    for line in (
        f"Version: {v}",
        "License-Expression: MIT",
        "Description-Content-Type: text/markdown",
        "Requires-Python: >=3.10",
        "Classifier: Typing :: Typed",
        "Requires-Dist: torch>=2.1",
    ):
        assert line in head, f"wheel METADATA lacks {line!r}"
    assert meta.split("\n\n", 1)[1].startswith("# saelab")  # the long description is the README


def test_wheel_and_sdist_hold_every_package_file(dist):
    """The wheel holds exactly the package's files: every module and every non-.py file read at run time
    (releases.json through importlib.resources, py.typed), nothing else; the sdist those plus the top files."""
    sdist, wheel, package = dist
    assert "saelab/sae/releases.json" in package
    with zipfile.ZipFile(wheel) as z:
        in_wheel = sorted(n for n in z.namelist() if not n.startswith("saelab-"))
    assert in_wheel == package, (
        f"missing from the wheel: {sorted(set(package) - set(in_wheel))}; extra: {sorted(set(in_wheel) - set(package))}"
    )
    with tarfile.open(sdist) as t:
        in_sdist = {n.split("/", 1)[1] for n in t.getnames() if "/" in n}
    top = {"pyproject.toml", "README.md", "LICENSE", "CHANGELOG.md", "MANIFEST.in"}
    assert set(package) | top <= in_sdist, sorted(set(package) | top - in_sdist)
    assert not [n for n in in_sdist if n.startswith("tests/")]  # left out on purpose (MANIFEST.in says why)


def _tiny_sae_folder(tmp: Path) -> tuple[Path, Path]:
    """A TopK SAE with random weights written by this checkout, and (inputs, the checkout's reconstruction)."""
    from saelab.sae.base import SaeConfig
    from saelab.sae.folder import Provenance, open_sae, save_sae
    from saelab.sae.registry import build_sae

    torch.manual_seed(0)
    sae = build_sae(SaeConfig("topk", d_in=16, d_sae=64, hookpoint="model.layers.1", k=4))
    with torch.no_grad():
        for p in sae.parameters():
            p.copy_(torch.randn_like(p) * 0.3)
    folder = save_sae(sae, tmp / "tiny-topk", Provenance(model_name="tiny"))
    x = torch.randn(5, 16)  # [rows, d_in]
    expected = open_sae(folder).sae.reconstruct(x)  # [rows, d_in]
    assert expected.abs().max() > 0.1
    torch.save((x, expected), tmp / "expected.pt")
    return folder, tmp / "expected.pt"


def _subcommands() -> dict:
    from saelab.cli import build_parser

    (sub,) = [a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction)]
    return sub.choices


# Run before the wheel is installed: the dependencies import, saelab does not (the .pth exposes no source tree)
BEFORE = """
import torch
try:
    import saelab
except ModuleNotFoundError:
    print("no saelab")
else:
    print(saelab.__file__)
"""

# Run by the fresh virtualenv's python from a folder outside the checkout; the SAE loads through the public API.
CHECK = """
import importlib.metadata, sys
from pathlib import Path
import saelab
assert "torch" not in sys.modules  # `import saelab` stays cheap in the installed wheel too
import torch
from saelab.sae.releases import registry

site, folder, expected = map(Path, sys.argv[1:])
assert "site-packages" in saelab.__file__ and Path(saelab.__file__).resolve().is_relative_to(site), saelab.__file__
assert saelab.__version__ == importlib.metadata.version("saelab"), saelab.__version__
assert len(registry()) > 0  # releases.json, read through importlib.resources from the installed wheel
d = saelab.load(folder)
x, want = torch.load(expected)
got = d.forward(x).recon
assert torch.allclose(got, want, atol=1e-6), (got - want).abs().max()
print("loaded", d.config.arch, d.d_in, d.d_sae, tuple(got.shape))
"""


def test_wheel_installs_and_runs_in_a_fresh_venv(dist, tmp_path):
    import saelab

    _, wheel, _ = dist
    elsewhere = tmp_path / "elsewhere"  # the working directory: outside the checkout
    elsewhere.mkdir()
    venv = tmp_path / "venv"
    _run([sys.executable, "-m", "venv", "--without-pip", venv], cwd=elsewhere)
    py, bin_dir = venv / "bin" / "python", venv / "bin"
    purelib = Path(
        _run([py, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"], elsewhere).stdout.strip()
    )
    deps = [Path(p) for p in site.getsitepackages() if Path(p).is_dir()]
    for d in deps:  # (the editable install lives here as an import hook in a .pth, which the line below never runs)
        assert not (d / "saelab").exists() and not (d / "saelab.py").exists(), f"{d} holds saelab itself"
    (purelib / "_saelab_test_deps.pth").write_text("".join(f"{d}\n" for d in deps))
    assert _run([py, "-c", BEFORE], elsewhere).stdout.strip() == "no saelab"

    _run([sys.executable, "-m", "pip", "--python", py, "install", "-q", "--no-deps", "--no-index", wheel], elsewhere)
    helped = _run([bin_dir / "saelab", "--help"], elsewhere).stdout
    commands = re.search(r"\{([a-z0-9,-]+)\}", helped)  # usage: saelab [-h] [--version] {hookpoints,train,...}
    assert helped.startswith("usage: saelab") and commands, helped
    assert commands.group(1).split(",") == list(_subcommands()), helped
    assert _run([bin_dir / "saelab", "--version"], elsewhere).stdout.strip() == f"saelab {saelab.__version__}"

    folder, expected = _tiny_sae_folder(tmp_path)
    (elsewhere / "check.py").write_text(CHECK)
    out = _run([py, "check.py", purelib.resolve(), folder, expected], elsewhere).stdout
    assert out.strip() == "loaded topk 16 64 (5, 16)"
