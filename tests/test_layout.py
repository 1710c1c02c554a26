"""The folder names are the architecture: these checks keep them true (see
docs/design-notes.md, "Layout")."""

from __future__ import annotations

import ast
from pathlib import Path

PKG = Path(__file__).resolve().parents[1] / "src" / "actstore"

#: What may sit at the top of ``query/``: the read side's shared pieces, no analysis.
QUERY_TOP = {
    "__init__.py",
    "_backend.py",
    "_views.py",
    "export.py",
    "frames.py",
    "head.py",
    "results.py",
    "rowstream.py",
    "select.py",
    "sql.py",
    "store.py",
}
ANALYSES = {"similarity", "mapping", "sparse"}


def _imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text())
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
    return names


def test_query_top_holds_no_analysis() -> None:
    top = {p.name for p in (PKG / "query").glob("*.py")}
    assert top == QUERY_TOP
    subs = {p.name for p in (PKG / "query").iterdir() if p.is_dir() and p.name != "__pycache__"}
    assert subs == ANALYSES


def test_command_line_code_lives_in_cli() -> None:
    outside = [
        str(p.relative_to(PKG))
        for p in PKG.rglob("*.py")
        if "cli" not in p.relative_to(PKG).parts and "argparse" in _imports(p)
    ]
    assert outside == []


def test_imports_flow_one_way() -> None:
    """cli -> extract, query -> store -> errors; query never imports extract."""
    rules = {
        "store": ("actstore.extract", "actstore.query", "actstore.cli"),
        "query": ("actstore.extract", "actstore.cli"),
        "extract": ("actstore.query", "actstore.cli"),
    }
    bad = []
    for part, banned in rules.items():
        for p in (PKG / part).rglob("*.py"):
            bad += [
                f"{p.relative_to(PKG)} imports {m}" for m in _imports(p) if m.startswith(banned)
            ]
    assert bad == []


def test_long_modules_say_why() -> None:
    """A module over ~400 lines says why in its docstring (it mentions its length)."""
    long = []
    for p in PKG.rglob("*.py"):
        lines = p.read_text().count("\n")
        doc = ast.get_docstring(ast.parse(p.read_text())) or ""
        if lines > 420 and "lines" not in doc:
            long.append(f"{p.relative_to(PKG)}: {lines}")
    assert long == []
