"""The architecture, enforced: the toolkit (``hessbatch``) never imports the paper layer
(``hessbatch.paper``), the import graph has no cycle, no module takes another's private name,
and modules and functions stay small. Each check is shown failing on a planted violation."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

LIB = Path(__file__).resolve().parents[1] / "lib"
PAPER = "hessbatch.paper"
MAX_MODULE_LINES = 450
MAX_FUNCTION_LINES = 60
ARGUMENT_PARSERS = {("hessbatch.cli", "build_parser"), ("hessbatch.paper.cli", "add_commands")}


def modules(root: Path) -> dict[str, Path]:
    """Dotted name → file of every module under ``root`` (a folder holding packages)."""
    out = {}
    for f in sorted(root.rglob("*.py")):
        parts = list(f.relative_to(root).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(parts)] = f
    return out


def _package(name: str, path: Path) -> str:
    return name if path.name == "__init__.py" else name.rpartition(".")[0]


def imports(name: str, path: Path, known: dict[str, Path]) -> list[tuple[str, str | None, int]]:
    """``(module, imported name or None, line)`` for every import of a known module in a file,
    nested (lazy) imports included; ``from pkg import mod`` counts as an import of ``pkg.mod``."""
    out = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            out += [(a.name, None, node.lineno) for a in node.names if a.name in known]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                pkg = _package(name, path).split(".")
                pkg = pkg[:len(pkg) - node.level + 1]
                base = ".".join(pkg + ([node.module] if node.module else []))
            for a in node.names:
                if f"{base}.{a.name}" in known:
                    out.append((f"{base}.{a.name}", None, node.lineno))
                elif base in known:
                    out.append((base, a.name, node.lineno))
    return out


def graph(root: Path) -> dict[str, set[str]]:
    known = modules(root)
    return {m: {target for target, _, _ in imports(m, p, known) if target != m} for m, p in known.items()}


def cycle(edges: dict[str, set[str]]) -> list[str] | None:
    """One import cycle as a path of modules, or None."""
    state, stack = {}, []

    def visit(m):
        state[m] = "open"
        stack.append(m)
        for n in sorted(edges.get(m, ())):
            if state.get(n) == "open":
                return stack[stack.index(n):] + [n]
            if n not in state and (found := visit(n)):
                return found
        stack.pop()
        state[m] = "done"
        return None

    for m in sorted(edges):
        if m not in state and (found := visit(m)):
            return found
    return None


def layer_violations(root: Path, paper: str = PAPER) -> list[str]:
    """Imports of the paper layer from outside it."""
    known = modules(root)
    return [f"{m}:{line} imports {target}" for m, p in known.items() if not (m == paper or m.startswith(paper + "."))
            for target, _, line in imports(m, p, known) if target == paper or target.startswith(paper + ".")]


def private_imports(root: Path) -> list[str]:
    """``from x import _y`` of another module's private name, and ``module._y`` on an imported module."""
    known = modules(root)
    found = []
    for m, p in known.items():
        tree = ast.parse(p.read_text())
        aliases = {}
        for target, name, line in imports(m, p, known):
            if name and name.startswith("_") and not name.startswith("__"):
                found.append(f"{m}:{line} imports {target}.{name}")
        for node in ast.walk(tree):
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                for a in node.names:
                    aliases[a.asname or a.name.split(".")[-1]] = a.name
        for node in ast.walk(tree):
            if (isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.attr.startswith("_")
                    and not node.attr.startswith("__") and node.value.id in aliases
                    and any(k.split(".")[-1] == aliases[node.value.id].split(".")[-1] for k in known)):
                found.append(f"{m}:{node.lineno} uses {node.value.id}.{node.attr}")
    return found


def oversized(root: Path) -> list[str]:
    out = []
    for m, p in modules(root).items():
        text = p.read_text()
        if len(text.splitlines()) > MAX_MODULE_LINES:
            out.append(f"{m}: {len(text.splitlines())} lines")
        for node in ast.walk(ast.parse(text)):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and (m, node.name) not in ARGUMENT_PARSERS:
                n = node.end_lineno - node.lineno + 1
                if n > MAX_FUNCTION_LINES:
                    out.append(f"{m}.{node.name}: {n} lines")
    return out


def test_the_toolkit_never_imports_the_paper_layer():
    assert layer_violations(LIB) == []


def test_the_import_graph_has_no_cycle():
    assert cycle(graph(LIB)) is None


def test_no_module_takes_another_modules_private_names():
    assert private_imports(LIB) == []


def test_modules_and_functions_stay_small():
    assert oversized(LIB) == []


def test_the_paper_layer_builds_on_the_toolkit():
    edges = graph(LIB)
    assert "hessbatch.measurements" in edges["hessbatch.paper.chapters.batch_size"]
    assert all(not t.startswith(PAPER) for m, ts in edges.items() if not m.startswith(PAPER) for t in ts)


@pytest.fixture
def planted(tmp_path):
    """A small package with every violation: a cycle through three modules (one import lazy), a
    private import, a private attribute of an imported module, and a toolkit module importing its
    paper layer."""
    pkg = tmp_path / "pkg"
    (pkg / "paper").mkdir(parents=True)
    files = {
        "__init__.py": "",
        "a.py": "from .b import helper\n",
        "b.py": "def helper():\n    from . import c\n    return c\n",
        "c.py": "from .a import helper\nfrom .d import _secret\n",
        "d.py": "_secret = 1\n",
        "e.py": "from . import d\nx = d._secret\n",
        "f.py": "from .paper import book\n",
        "paper/__init__.py": "",
        "paper/book.py": "from ..d import _secret\n",
    }
    for name, text in files.items():
        (pkg / name).write_text(text)
    return tmp_path


def test_the_checks_fail_on_planted_violations(planted):
    assert cycle(graph(planted)) == ["pkg.a", "pkg.b", "pkg.c", "pkg.a"]
    assert layer_violations(planted, "pkg.paper") == ["pkg.f:1 imports pkg.paper.book"]
    found = private_imports(planted)
    assert "pkg.c:2 imports pkg.d._secret" in found and "pkg.e:2 uses d._secret" in found
    assert "pkg.paper.book:1 imports pkg.d._secret" in found
    (planted / "pkg" / "big.py").write_text("def f():\n" + "    x = 1\n" * 70 + "\n" * 400)
    assert oversized(planted) == ["pkg.big: 471 lines", "pkg.big.f: 71 lines"]
