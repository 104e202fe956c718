"""The tutorials (docs/tutorials/*.ipynb) run, on tiny budgets, and use only the public API.

Each notebook's first code cell is its parameters cell (tagged `parameters`, as papermill expects). The test
runs the notebook in a fresh kernel (nbclient) with a cell inserted after it that sets the tiny budgets
below, on the tiny random Llama of conftest.py and the pydoc corpus, in a temporary folder (the four kernels
side by side), and checks what it printed. Every name an override sets must exist in the parameters cell (a
renamed parameter would otherwise quietly run the notebook's real budget). Another test parses the code
cells: `saelab` is used only through the names of `saelab.__all__` (and the public attributes of its
classes), never through a module of the package; and ruff keeps the cells to the repository's style.
"""

from __future__ import annotations

import ast
import inspect
import os
import sys
from pathlib import Path

import pytest
from conftest import ROOT

import saelab

TUTORIALS = sorted((ROOT / "docs" / "tutorials").glob("*.ipynb"))
CTX = 64
TINY = dict(HOOKPOINT="model.layers.1", LATENTS=128, K=4, TOKENS=4096, CONTEXT=CTX)
OVERRIDES = {  # notebook -> its tiny budget (MODEL and CORPUS are set for every notebook)
    "01_train_and_evaluate.ipynb": TINY | dict(EVAL_TOKENS=1024, CE_TOKENS=128),
    "02_find_explain_steer.ipynb": TINY | dict(CACHE_TOKENS=CTX * 32, N_EXAMPLES=3, NEW_TOKENS=4),
    "03_compare_with_bench.ipynb": {k: v for k, v in TINY.items() if k != "K"}
    | dict(KS=[4, 16], METRICS=["core"], BASELINES=["residual"], BENCH_TOKENS=512, CE_TOKENS=64),
    "04_load_a_release.ipynb": TINY,
}
PRINTED = {  # notebook -> lines its run prints (what the cells compute, not only that they ran)
    "01_train_and_evaluate.ipynb": [
        "trained 1 SAE(s)",
        "Dictionary('model.layers.1-topk-k4', topk, 64 -> 128 latents, model.layers.1)",
        "L0 4.0 latents per token, 128 latents in all",
        "keep_error=True gives the model's own logits: True",
    ],
    "02_find_explain_steer.ipynb": ["100% of latents fired", "explained, 0 failed", "everywhere: True"],
    "03_compare_with_bench.ipynb": ["model.layers.1-topk-k16 16.0", "# saelab bench: model.layers.1"],
    "04_load_a_release.ipynb": [
        "['cfg.json', 'sae_weights.safetensors']",
        '"architecture": "topk"',
        "Dictionary('saelens', topk, 64 -> 128 latents, model.layers.1)",
        "latents (2, 14, 128), L0 4.0",
    ],
}


def test_every_tutorial_has_a_budget_and_a_parameters_cell():
    assert [p.name for p in TUTORIALS] == sorted(OVERRIDES) == sorted(PRINTED)
    for path in TUTORIALS:
        params = _parameters(_read(path))
        missing = {"MODEL", "CORPUS", *OVERRIDES[path.name]} - params
        assert not missing, f"{path.name}: its parameters cell sets no {sorted(missing)}"


@pytest.fixture(scope="module")
def executed(tiny_model_dir, text_corpus, tmp_path_factory) -> dict[str, str | BaseException]:
    """Every tutorial run at once, each in its own kernel and folder: {notebook: what it printed (stdout), or
    the error it raised}. The kernels start and import torch side by side: the time of the slowest one."""
    from concurrent.futures import ThreadPoolExecutor

    def run(path: Path) -> str | BaseException:
        try:
            return _execute(path, tiny_model_dir, text_corpus, tmp_path_factory.mktemp(path.stem))
        except BaseException as e:  # noqa: BLE001 - reported by the test of this notebook
            return e

    with ThreadPoolExecutor(max_workers=len(TUTORIALS)) as pool:
        return dict(zip([p.name for p in TUTORIALS], pool.map(run, TUTORIALS)))


@pytest.mark.parametrize("path", TUTORIALS, ids=lambda p: p.stem)
def test_tutorial_runs(path, executed):
    printed = executed[path.name]
    if isinstance(printed, BaseException):
        raise printed
    for line in PRINTED[path.name]:
        assert line in printed, f"{path.name} did not print {line!r}; it printed:\n{printed[-3000:]}"


def _execute(path: Path, model: Path, corpus: Path, where: Path) -> str:
    """Run the notebook in a fresh kernel in `where`, its parameters overridden by the tiny budget; -> its stdout
    and the text of its displayed values."""
    import asyncio

    from nbclient import NotebookClient
    from nbformat.v4 import new_code_cell

    book = _read(path)
    assert all(not c.get("outputs") for c in book.cells if c.cell_type == "code"), "outputs committed"
    values = {"MODEL": str(model), "CORPUS": str(corpus), **OVERRIDES[path.name]}
    lines = [
        "import os, sys, torch",
        f"assert os.path.realpath(sys.executable) == {os.path.realpath(sys.executable)!r}",
    ]
    lines += ["torch.set_num_threads(1)"] + [f"{k} = {v!r}" for k, v in values.items()]
    first = next(i for i, c in enumerate(book.cells) if c.cell_type == "code")
    book.cells.insert(first + 1, new_code_cell("\n".join(lines)))
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    client = NotebookClient(book, timeout=120, kernel_name="python3", resources={"metadata": {"path": str(where)}})
    asyncio.run(client.async_execute(env=env))  # the kernel: this interpreter (checked above), this checkout's saelab
    outs = [o for c in book.cells for o in c.get("outputs", [])]
    return "".join(
        o.get("text", "") if o.get("name") == "stdout" else o.get("data", {}).get("text/plain", "") for o in outs
    )


def test_tutorials_use_only_public_names():
    for path in TUTORIALS:
        code = "\n".join(c.source for c in _read(path).cells if c.cell_type == "code")
        for problem in private_uses(code):
            pytest.fail(f"{path.name}: {problem}")


def test_tutorials_are_ruff_clean():
    """The notebooks' code keeps the repository's lint and format rules (ruff reads .ipynb cells)."""
    import shutil
    import subprocess

    ruff = shutil.which("ruff", path=str(Path(sys.executable).parent)) or shutil.which("ruff")
    if ruff is None:
        pytest.fail("ruff is not installed: scripts/setup.sh installs it with the [test] extra")
    for args in (["check"], ["format", "--check"]):
        r = subprocess.run([ruff, *args, *map(str, TUTORIALS)], cwd=ROOT, capture_output=True, text=True)
        assert r.returncode == 0, f"ruff {' '.join(args)} docs/tutorials:\n{r.stdout[-3000:]}{r.stderr[-1000:]}"


def test_the_public_name_check_catches_private_uses():
    code = (
        "import saelab\nimport saelab.models\nfrom saelab.sae import folder\nfrom saelab import load, nope\n"
        "import saelab as s\ns.train.loop\nsaelab.Model.load('embedded')\nsaelab.Model._check\nsaelab.errors\n"
        "saelab.LatentCache.open('x')\n"
    )
    assert private_uses(code) == [
        "line 2: import saelab.models (a private module)",
        "line 3: from saelab.sae import (a private module)",
        "line 4: saelab.nope is not public",
        "line 6: s.train.loop (only classes of saelab have public attributes)",
        "line 8: saelab.Model._check is private",
        "line 9: saelab.errors is not public",
    ]


def private_uses(code: str) -> list[str]:
    """What in `code` reaches saelab other than through `saelab.__all__` names and their classes' public members."""
    tree = ast.parse(code)
    aliases, found = set(), []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for a in node.names:
                if a.name == "saelab":
                    aliases.add(a.asname or "saelab")
                elif a.name.startswith("saelab."):
                    found.append((node.lineno, f"import {a.name} (a private module)"))
        elif isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == "saelab":
            if node.module != "saelab":
                found.append((node.lineno, f"from {node.module} import (a private module)"))
            else:
                found += [
                    (node.lineno, f"saelab.{a.name} is not public") for a in node.names if a.name not in saelab.__all__
                ]
    for node in ast.walk(tree):
        chain = _chain(node)
        if not chain or chain[0] not in aliases or len(chain) < 2 or isinstance(getattr(node, "ctx", None), ast.Del):
            continue
        if _is_inner(node, tree):
            continue
        name, rest = chain[1], chain[2:]
        if name not in saelab.__all__:
            found.append((node.lineno, f"saelab.{name} is not public"))
        elif rest and not inspect.isclass(getattr(saelab, name)):
            found.append((node.lineno, f"{'.'.join(chain)} (only classes of saelab have public attributes)"))
        elif rest and (rest[0].startswith("_") or not hasattr(getattr(saelab, name), rest[0])):
            found.append((node.lineno, f"saelab.{name}.{rest[0]} is private"))
    return [f"line {n}: {msg}" for n, msg in sorted(found)]


def _chain(node: ast.AST) -> list[str] | None:
    """`a.b.c` -> ["a", "b", "c"] (None for anything but a dotted name)."""
    parts = []
    while isinstance(node, ast.Attribute):
        parts.append(node.attr)
        node = node.value
    return [node.id, *reversed(parts)] if isinstance(node, ast.Name) and parts else None


def _is_inner(node: ast.AST, tree: ast.AST) -> bool:
    """True when `node` is the `.value` of a longer dotted name (only the longest chain is checked)."""
    return any(isinstance(p, ast.Attribute) and p.value is node for p in ast.walk(tree))


def _read(path: Path):
    import nbformat

    return nbformat.read(path, as_version=4)


def _parameters(book) -> set[str]:
    """The names the first code cell (tagged `parameters`) assigns."""
    cell = next(c for c in book.cells if c.cell_type == "code")
    assert "parameters" in cell.metadata.get("tags", []), "the first code cell is not tagged `parameters`"
    return {t.id for node in ast.parse(cell.source).body if isinstance(node, ast.Assign) for t in node.targets}
