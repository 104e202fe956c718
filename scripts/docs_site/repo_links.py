"""MkDocs hook: links in the docs that point at folders, or at repository files outside docs/.

The pages are written to be read in the repository too (on a forge or in a checkout), where a link such as
`[img/](img/)` or `[the script](../bench/x.py)` works; on the site neither target is a page. So:
- a folder under docs/ that holds no page of the nav (result files, plots, a generated report.md) gets a
  generated listing page `FOLDER/index.md` linking each file (the files themselves are copied into the
  site as they are; a .md among them is rendered, outside the nav), and a link to the folder is pointed
  at that page;
- a link to a file or folder of the repository outside docs/ becomes a link into the repository when
  mkdocs.yml sets `repo_url`, else the repository path in code (`bench/x.py`), since the site is built
  from a checkout and may be read offline; a target that does not exist is a warning, so
  `mkdocs build --strict` still fails on a broken link.
Links inside fenced code blocks are left alone."""

from __future__ import annotations

import posixpath
import re
from pathlib import Path

from mkdocs.plugins import get_plugin_logger
from mkdocs.structure.files import File, Files, InclusionLevel

log = get_plugin_logger(__name__)
LINK = re.compile(r"(!?)\[([^\]\n]*)\]\(([^()\s]+)\)")
FENCE = re.compile(r"^\s*(```|~~~)")
_listed: set[str] = set()  # docs-relative folders (posix, no trailing slash) that got a listing page


def on_files(files: Files, config) -> Files:
    docs = Path(config.docs_dir)
    _listed.clear()
    in_nav = {posixpath.dirname(p) for p in _nav_pages(config.nav or [])}
    folders = [p for p in sorted(docs.rglob("*")) if p.is_dir() and p.relative_to(docs).as_posix() not in in_nav]
    folders = [p for p in folders if not (p / "index.md").exists() and not (p / "README.md").exists()]
    rels = [p.relative_to(docs) for p in folders]
    _listed.update(r.as_posix() for r in rels if not any(part.startswith((".", "_")) for part in r.parts))
    for rel in sorted(_listed):
        lines = [f"# docs/{rel}/", "", "The files of this folder of the repository, as they are.", ""]
        for entry in sorted((docs / rel).iterdir()):
            sub = f"{rel}/{entry.name}"
            if entry.name.startswith(".") or (entry.is_dir() and sub not in _listed):
                continue
            target = f"{entry.name}/index.md" if entry.is_dir() else entry.name
            label = entry.name + ("/" if entry.is_dir() else "")
            lines.append(f"- [{label}]({target}) ({_size(entry)})")
        page = File.generated(config, f"{rel}/index.md", content="\n".join(lines) + "\n")
        page.inclusion = InclusionLevel.NOT_IN_NAV
        files.append(page)
    for f in files:
        if posixpath.dirname(f.src_uri) in _listed and f.is_documentation_page():
            f.inclusion = InclusionLevel.NOT_IN_NAV
    return files


def _nav_pages(nav) -> list[str]:
    """The page paths named in mkdocs.yml's nav, at any depth."""
    if isinstance(nav, str):
        return [nav]
    items = nav.values() if isinstance(nav, dict) else nav
    return [p for item in items for p in _nav_pages(item)]


def _size(path: Path) -> str:
    if path.is_dir():
        return f"{sum(1 for p in path.rglob('*') if p.is_file())} files"
    n = path.stat().st_size
    return f"{n / 1024:.1f} KiB" if n >= 1024 else f"{n} B"


def on_page_markdown(markdown: str, page, config, files) -> str:
    docs = Path(config.docs_dir).resolve()
    repo = Path(config.config_file_path).resolve().parent
    page_dir = posixpath.dirname(page.file.src_uri)

    def rewrite(m: re.Match) -> str:
        bang, text, target = m.groups()
        if "://" in target or target.startswith(("#", "mailto:", "/")):
            return m.group(0)
        path, _, anchor = target.partition("#")
        inside = posixpath.normpath(posixpath.join(page_dir, path)) if path else ""
        if path and not inside.startswith("../") and inside != "..":
            if inside in _listed:  # a folder of result files: its listing page
                rel = posixpath.relpath(f"{inside}/index.md", page_dir or ".")
                return f"{bang}[{text}]({rel}{'#' + anchor if anchor else ''})"
            return m.group(0)  # a page or a file under docs/: MkDocs checks it
        full = (docs / page_dir / path).resolve()
        if repo not in full.parents:
            log.warning(f"{page.file.src_uri}: the link {target!r} leaves the repository")
            return m.group(0)
        if not full.exists():
            log.warning(
                f"{page.file.src_uri}: the link {target!r} names {full.relative_to(repo)}, which does not exist"
            )
            return m.group(0)
        rel = full.relative_to(repo).as_posix() + ("/" if full.is_dir() else "")
        if config.repo_url:
            kind = "tree" if full.is_dir() else "blob"
            return f"{bang}[{text}]({config.repo_url.rstrip('/')}/{kind}/main/{rel})"
        shown = f"`{rel}`"
        return shown if text.strip("`") in (rel, rel.rstrip("/"), path) else f"{text} ({shown} in the repository)"

    out, fenced = [], False
    for line in markdown.split("\n"):
        if FENCE.match(line):
            fenced = not fenced
        out.append(line if fenced else LINK.sub(rewrite, line))
    return "\n".join(out)
