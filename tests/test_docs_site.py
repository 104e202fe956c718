"""The documentation site: `mkdocs build --strict` passes (no broken link or anchor, every page in the nav),
the API page documents every name in `saelab.__all__`, the CLI reference every subcommand and option.

The build runs once per session into a temporary folder, in a subprocess, as a user runs it. Skipped only
when MkDocs and its plugins are not installed (scripts/setup.sh installs them: the `docs` extra)."""

from __future__ import annotations

import argparse
import dataclasses
import html
import importlib.util
import inspect
import logging
import os
import subprocess
import sys
import time
import types
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
HOOKS = ROOT / "scripts" / "docs_site"


def _missing_docs_tools() -> str | None:
    for module in ("mkdocs", "material", "mkdocstrings", "mkdocstrings_handlers.python"):
        if importlib.util.find_spec(module) is None:
            return f"{module} is not installed (pip install -e '.[docs]'; scripts/setup.sh does it)"
    return None


needs_mkdocs = pytest.mark.skipif(_missing_docs_tools() is not None, reason=str(_missing_docs_tools()))


def _hook(name: str) -> types.ModuleType:
    spec = importlib.util.spec_from_file_location(f"docs_site_{name}", HOOKS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def site(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("site")
    env = dict(os.environ, NO_MKDOCS_2_WARNING="1")
    cmd = [sys.executable, "-m", "mkdocs", "build", "--strict", "-f", str(ROOT / "mkdocs.yml"), "-d", str(out)]
    t0 = time.perf_counter()
    r = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, f"mkdocs build --strict failed:\n{r.stdout}\n{r.stderr}"
    assert time.perf_counter() - t0 < 120, "the docs build is meant to take seconds"
    return out


def _page(site: Path, path: str) -> str:
    return (site / path / "index.html").read_text(encoding="utf-8")


@needs_mkdocs
def test_api_page_documents_every_public_name(site):
    import saelab

    documented = _hook("api_reference").documented  # a proxy (`__wrapped__`) is documented as its function
    page = _page(site, "reference/api")
    for name in getattr(saelab, "__all__", []):
        if name.startswith("__"):
            continue
        obj = documented(getattr(saelab, name))
        where = f"{inspect.getmodule(obj).__name__}.{obj.__qualname__}"
        assert f'id="{where}"' in page, f"saelab.{name} ({where}) is not rendered on the API page"
        assert f"saelab.{name}" in page


def _subcommands(parser: argparse.ArgumentParser, prefix: str = "saelab"):
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield f"{prefix} {name}", sub
                yield from _subcommands(sub, f"{prefix} {name}")


@needs_mkdocs
def test_cli_reference_lists_every_subcommand_and_option(site):
    from saelab.cli import build_parser

    page = _page(site, "reference/cli")
    commands = list(_subcommands(build_parser()))
    assert len(commands) >= 20
    for path, sub in commands:
        anchor = f'id="{path.replace(" ", "-")}"'
        assert anchor in page, f"{path} has no section in the CLI reference"
        section = page.split(anchor, 1)[1].split("<h2", 1)[0]
        for action in sub._actions:
            if action.help == argparse.SUPPRESS:
                continue
            for flag in action.option_strings:
                assert f"<code>{flag}" in section or f", {flag}" in section, f"{path}: {flag} is missing"
            if action.help and action.help != argparse.SUPPRESS and "%" not in action.help:
                assert html.escape(action.help) in section, f"{path}: help of {action.dest}"


@needs_mkdocs
def test_result_folders_get_a_listing_page(site):
    home = _page(site, "")
    assert 'href="img/"' in home  # docs/README.md's [img/](img/) now opens the listing page
    listing = _page(site, "img")
    pngs = sorted(p.name for p in (ROOT / "docs" / "img").glob("*.png"))
    assert pngs and all(f'href="{name}"' in listing for name in pngs)
    assert all((site / "img" / name).is_file() for name in pngs)


def _fake_config(repo_url: str | None = None):
    return types.SimpleNamespace(
        docs_dir=str(ROOT / "docs"), config_file_path=str(ROOT / "mkdocs.yml"), repo_url=repo_url
    )


@needs_mkdocs
def test_links_out_of_docs_name_the_repository_file(caplog):
    hook = _hook("repo_links")
    page = types.SimpleNamespace(file=types.SimpleNamespace(src_uri="research/x.md"))
    md = "See [the runner](../../bench/gpu_check.sh), [`scripts/test.sh`](../../scripts/test.sh) and ![p](../img/a.png).\n"
    md += "```\n[not a link](../../nowhere.py)\n```\n"
    out = hook.on_page_markdown(md, page, _fake_config(), None)
    assert "the runner (`bench/gpu_check.sh` in the repository)" in out
    assert "`scripts/test.sh`" in out and "(../../scripts/test.sh)" not in out
    assert "![p](../img/a.png)" in out  # inside docs/: left to MkDocs, which checks it
    assert "[not a link](../../nowhere.py)" in out and not caplog.records  # code is not read
    linked = hook.on_page_markdown(md, page, _fake_config("https://example.org/saelab"), None)
    assert "[the runner](https://example.org/saelab/blob/main/bench/gpu_check.sh)" in linked
    with caplog.at_level(logging.WARNING):
        hook.on_page_markdown("[gone](../../bench/no_such_file.py)", page, _fake_config(), None)
    assert any("no_such_file.py" in r.getMessage() and "does not exist" in r.getMessage() for r in caplog.records)


@dataclasses.dataclass
class _Documented:
    """A documented config: `d_in` wide [batch, d_in] inputs."""

    d_in: int = dataclasses.field(default=8, metadata={"help": "input width"})
    names: list[str] = dataclasses.field(default_factory=lambda: ["a"])


@dataclasses.dataclass
class _Bare:
    x: int = 1


def _documented_function(x: int) -> int:
    """Twice x."""
    return 2 * x


@needs_mkdocs
def test_api_page_entries_and_undocumented_names(caplog):
    hook = _hook("api_reference")
    package = types.ModuleType("fake")
    package.__all__ = ["__version__", "double", "Documented", "Bare", "sub", "proxy"]
    package.__version__, package.sub = "1.0", types.ModuleType("fake.sub")  # a subpackage shadowing a name
    package.proxy = types.SimpleNamespace(__wrapped__=_documented_function)  # stands for the function
    package.double, package.Documented, package.Bare = _documented_function, _Documented, _Bare
    with caplog.at_level(logging.WARNING):
        md = hook.api_markdown(package)
    here = __name__
    assert f"::: {here}._documented_function\n    options:\n      heading: saelab.double" in md
    assert f"::: {here}._documented_function\n    options:\n      heading: saelab.proxy" in md
    assert f"::: {here}._Documented\n" in md and "show_signature: false" in md
    assert "<td><code>d_in</code></td><td><code>int</code></td><td><code>8</code></td><td>input width</td>" in md
    assert "<code>[&#x27;a&#x27;]</code>" in md  # a default_factory's value, not the lambda's source
    assert md.index("## Functions") < md.index("::: " + here + "._documented_function") < md.index("## Classes")
    warned = [r.getMessage() for r in caplog.records]
    assert len(warned) == 2 and "saelab.Bare" in warned[0] and "no docstring" in warned[0]
    assert "saelab.sub is the module fake.sub" in warned[1] and "__version__" not in md
    package.__all__ = []
    assert "no public names yet" in hook.api_markdown(package)


def test_lists_render_as_on_github():
    fix = _hook("github_lists").github_lists
    text = "Options:\n- `--k`: sparsity\n  - nested two spaces\n  wrapped text\n- `--lr`\n\nIn\n2024. Then text\n```\nx:\n- code\n```"
    assert fix(text.split("\n")) == [
        "Options:",
        "",  # a list straight after a paragraph
        "- `--k`: sparsity",
        "    - nested two spaces",  # GitHub's two-space nesting, four here
        "  wrapped text",
        "- `--lr`",
        "",
        "In",
        "2024. Then text",  # only "1." may interrupt a paragraph
        "```",
        "x:",
        "- code",  # fenced code is left alone
        "```",
    ]
