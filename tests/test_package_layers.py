"""The shape of the code (issue 22): packages by job, imports in one direction, no cycles,
no module over 700 lines, at most six modules at core/'s top.

The import direction is the one docs/engine-api.md writes down (its "Import direction" line),
so the document and the code cannot drift apart. Imports under ``if TYPE_CHECKING:`` do not run
and do not count; imports inside functions do (they run, later).
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
MAX_LINES = 700
MAX_TOP_MODULES = 6


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _modules(package: str) -> dict[str, Path]:
    return {_module_name(p): p for p in sorted((ROOT / package).rglob("*.py"))}


def _imports(path: Path, known: dict[str, Path]) -> set[str]:
    """The modules of `known` that `path` imports when it runs (TYPE_CHECKING blocks left out)."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    not_run = {
        id(node)
        for block in ast.walk(tree)
        if isinstance(block, ast.If) and "TYPE_CHECKING" in ast.unparse(block.test)
        for node in ast.walk(block)
    }
    found = set()
    for node in ast.walk(tree):
        if id(node) in not_run:
            continue
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            for alias in node.names:
                full = f"{node.module}.{alias.name}"
                found.add(full if full in known else node.module)
        elif isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
    return {name for name in found if name in known} - {_module_name(path)}


def _graph(package: str) -> dict[str, set[str]]:
    known = _modules(package)
    return {name: _imports(path, known) for name, path in known.items()}


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def _direction() -> list[str]:
    """The import direction docs/engine-api.md writes: `core.errors` → ... → `core.cli`."""
    text = (ROOT / "docs" / "engine-api.md").read_text(encoding="utf-8")
    line = next(ln for ln in text.splitlines() if ln.startswith("Import direction"))
    return re.findall(r"`(core[\w.]*)`", line)


def _layer(module: str, order: list[str]) -> int:
    for i, name in enumerate(order):
        if module == name or module.startswith(name + "."):
            return i
    raise AssertionError(f"{module} is in no layer of docs/engine-api.md's import direction")


@pytest.mark.parametrize("package", ["core", "bnp_gui"])
def test_no_import_cycles(package):
    assert _cycles(_graph(package)) == []


def test_cycle_finder_finds_a_cycle():
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_core_imports_follow_the_documented_direction():
    order = _direction()
    assert order[0] == "core.errors" and order[-1] == "core.cli", order
    against = [
        f"{m} imports {d}"
        for m, deps in sorted(_graph("core").items())
        if m != "core"
        for d in sorted(deps)
        if _layer(d, order) > _layer(m, order)
    ]
    assert against == []


def test_every_core_package_is_in_the_documented_direction():
    order = _direction()
    packages = {_module_name(p.parent) for p in (ROOT / "core").glob("*/__init__.py")} | {
        _module_name(p) for p in (ROOT / "core").glob("*.py") if p.name != "__init__.py"
    }
    assert sorted(p for p in packages if p not in order) == []


def test_packages_say_what_they_own():
    for init in sorted((ROOT / "core").glob("*/__init__.py")):
        doc = ast.get_docstring(ast.parse(init.read_text(encoding="utf-8")))
        assert doc and "Imports" in doc, f"{init.relative_to(ROOT)} says what it owns and imports"


def test_few_modules_at_cores_top():
    top = sorted(p.name for p in (ROOT / "core").glob("*.py"))
    assert len(top) <= MAX_TOP_MODULES, top


@pytest.mark.parametrize("package", ["core", "bnp_gui"])
def test_no_module_is_too_long(package):
    lines = {
        str(p.relative_to(ROOT)): len(p.read_text(encoding="utf-8").splitlines())
        for p in _modules(package).values()
    }
    long = {name: n for name, n in lines.items() if n > MAX_LINES}
    assert long == {}


def test_the_shipped_signatures_are_where_the_code_reads_them():
    """Moving a package must move its data files: without them detection describes every
    library model again (minutes)."""
    from core.model.detect import SIGNATURE_FILE
    from core.model.library_models import SHIPPED_FILE

    assert SIGNATURE_FILE.is_file() and SHIPPED_FILE.is_file()
