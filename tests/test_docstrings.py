"""Every public function, class and method of the engine (`core/`) says what it does: the
promise of docs/engine-api.md, checked on the source (no import, no torch)."""

from __future__ import annotations

import ast
from pathlib import Path

CORE = Path(__file__).resolve().parent.parent / "core"


def _undocumented(path: Path, root: Path = CORE.parent) -> list[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    missing = []

    def visit(nodes, prefix: str = "") -> None:
        for node in nodes:
            if not isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                continue
            if node.name.startswith("_"):
                continue
            if ast.get_docstring(node) is None:
                missing.append(f"{path.relative_to(root)}:{node.lineno} {prefix}{node.name}")
            if isinstance(node, ast.ClassDef):
                visit(node.body, f"{node.name}.")

    visit(tree.body)
    return missing


def test_public_engine_functions_have_docstrings():
    missing = [name for path in sorted(CORE.rglob("*.py")) for name in _undocumented(path)]
    assert missing == []


SAMPLE = """
def public():
    pass


def _private():
    pass


class C:
    \"\"\"C.\"\"\"

    def method(self):
        return 1
"""


def test_the_check_finds_an_undocumented_function(tmp_path):
    source = tmp_path / "m.py"
    source.write_text(SAMPLE)
    assert [m.split()[-1] for m in _undocumented(source, tmp_path)] == ["public", "C.method"]
