"""Menu paths named to the user — in README.md, docs/ and in the window's own messages — are the
window's real menus and entries (a newcomer follows them literally)."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
# "File › Open Checkpoint…": a menu, then an entry; entries end at a backtick, quote, bracket,
# comma or a full stop that is not part of an ellipsis.
MENU_PATH = re.compile(r"([A-Z][A-Za-z]+) › ([A-Z][A-Za-z ]*[A-Za-z](?:…)?)")


def window_menu_paths(window) -> set[str]:
    paths = set()
    for menu_action in window.menuBar().actions():
        menu = menu_action.menu()
        if menu is None:
            continue
        name = menu.title().replace("&", "")
        for action in menu.actions():
            if action.text():
                paths.add(f"{name} › {action.text().replace('&', '')}")
    return paths


def named_paths(text: str) -> set[str]:
    return {f"{menu} › {entry.strip()}" for menu, entry in MENU_PATH.findall(text)}


def test_menu_paths_in_readme_and_messages_exist(window):
    real = window_menu_paths(window)
    assert "File › Open Checkpoint…" in real  # the parsing itself works
    sources = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]  # README's text moved
    sources += sorted((ROOT / "bnp_gui").rglob("*.py"))
    wrong = {}
    for path in sources:
        text = path.read_text(encoding="utf-8")
        if path.suffix == ".py":  # user-visible strings only, not docstrings or comments
            text = re.sub(r'"""[\s\S]*?"""', "", text)
            text = "\n".join(re.findall(r'"([^"\n]*›[^"\n]*)"', text))
        missing = named_paths(text) - real
        if missing:
            wrong[str(path.relative_to(ROOT))] = sorted(missing)
    assert not wrong, f"menu paths the window does not have: {wrong}; it has {sorted(real)}"
