"""docs/DESIGN.md names every module of the packages in its directory map (and no module that does not exist),
and every Manifest field in its manifest.json line."""

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


def test_the_manifest_line_names_every_manifest_field() -> None:
    import dataclasses

    from rsz_infer.bundle import Manifest

    text = (ROOT / "docs" / "DESIGN.md").read_text(encoding="utf-8")
    line = text.split("manifest.json (`Manifest`", 1)[1].split("\nWriting", 1)[0]
    named = set(re.findall(r"[a-z_]+", line))
    # a new manifest field gets its name there (what rsz-export writes and rsz-infer reads)
    assert sorted(f.name for f in dataclasses.fields(Manifest) if f.name not in named) == []
