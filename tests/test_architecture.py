"""The rooms of fhirgw/ depend downwards only (README, Architecture): no room imports one
listed above it, so there are no cycles between rooms."""
from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "fhirgw"
#: the README's order, top to bottom
ROOMS = ["api", "rest", "sync", "operations", "workflows", "security", "validation",
         "search", "client", "store", "model"]


def _imported_rooms(path: Path, room: str) -> set[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    depth_of_room = len(path.relative_to(PACKAGE / room).parts)  # 1: a module of the room
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            if node.level == 0:
                parts = (node.module or "").split(".")
                if parts[0] == "fhirgw" and len(parts) > 1:
                    found.add(parts[1])
            elif node.level > depth_of_room and node.module:
                found.add(node.module.split(".")[0])
        elif isinstance(node, ast.Import):
            for alias in node.names:
                parts = alias.name.split(".")
                if parts[0] == "fhirgw" and len(parts) > 1:
                    found.add(parts[1])
    return found & set(ROOMS)


def test_rooms_depend_downwards_only():
    wrong = []
    for room in ROOMS:
        for path in sorted((PACKAGE / room).rglob("*.py")):
            for other in _imported_rooms(path, room) - {room}:
                if ROOMS.index(other) < ROOMS.index(room):
                    wrong.append(f"{path.relative_to(PACKAGE)} imports {other}/")
    assert not wrong, "\n".join(wrong)


def test_every_room_is_listed():
    rooms = {p.name for p in PACKAGE.iterdir() if p.is_dir() and (p / "__init__.py").exists()}
    assert rooms == set(ROOMS)
