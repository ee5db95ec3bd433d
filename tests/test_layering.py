"""DESIGN.md layering: errors <- registry <- core <- hub <- models/<family> <- cli; families never import siblings."""

from __future__ import annotations

import re
from pathlib import Path

from zoo.models import FAMILIES

ZOO = Path(__file__).resolve().parents[1] / "zoo"
IMPORT = re.compile(r"^\s*(?:from|import)\s+zoo\.(\w+)(?:\.(\w+))?", re.MULTILINE)


def imports_of(path: Path) -> set[tuple[str, str | None]]:
    return set(IMPORT.findall(path.read_text()))


def test_lower_floors_never_import_families_or_the_cli():
    lower = [ZOO / "errors.py", ZOO / "registry.py", *(ZOO / "core").rglob("*.py"), *(ZOO / "hub").rglob("*.py")]
    for path in lower:
        bad = {m for m in imports_of(path) if m[0] in ("models", "cli")}
        assert not bad, f"{path.relative_to(ZOO)} imports {bad}"
    for path in (ZOO / "core").rglob("*.py"):
        assert not {m for m in imports_of(path) if m[0] == "hub"}, f"{path} imports zoo.hub (core is below hub)"


def test_families_do_not_import_each_other():
    for family in FAMILIES:
        for path in (ZOO / "models" / family).rglob("*.py"):
            siblings = {m[1] for m in imports_of(path) if m[0] == "models" and m[1] and m[1] != family}
            assert not siblings, f"{path.relative_to(ZOO)} imports sibling families {siblings}"
