"""docs/DESIGN.md's directory map names every module of the packages, and no module that does not exist."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("rsz_infer", "rsz_train", "export", "benchmarks")


def _layout_block() -> str:
    text = (ROOT / "docs" / "DESIGN.md").read_text(encoding="utf-8")
    return text.split("## Layout", 1)[1].split("```", 2)[1]


def test_the_layout_map_lists_every_module_and_only_real_ones() -> None:
    block = _layout_block()
    named = set(re.findall(r"\b([a-z_][a-z0-9_]*\.py)\b", block))
    modules = {p.name for pkg in PACKAGES for p in (ROOT / pkg).rglob("*.py") if p.name != "__init__.py"}
    scripts = {p.name for p in (ROOT / "scripts").glob("*.py")}
    # a new module gets its line in the map (what it is for), and a removed one loses it
    assert sorted(modules - named) == []
    assert sorted(named - modules - scripts) == []
