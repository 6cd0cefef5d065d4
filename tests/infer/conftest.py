"""Session fixtures: the tiny real bundles (see helpers.py) and a class cache folder of the session."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from .helpers import export_graphs, write_bundle


@pytest.fixture(scope="session", autouse=True)
def _class_cache(tmp_path_factory):

    old = os.environ.get("RSZ_CACHE_DIR")
    os.environ["RSZ_CACHE_DIR"] = str(tmp_path_factory.mktemp("rsz-cache"))
    yield
    if old is None:
        os.environ.pop("RSZ_CACHE_DIR", None)
    else:
        os.environ["RSZ_CACHE_DIR"] = old


@pytest.fixture(scope="session")
def bundles(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("bundles")
    graphs = export_graphs(root)
    return {kind: write_bundle(root / kind, kind, graphs) for kind in ("msa", "mcfa", "dsva")}


@pytest.fixture(scope="session")
def class_file(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("classes") / "new.txt"
    path.write_text("red: red roofs\ngreen: green fields\nblue: blue water\n", encoding="utf-8")
    return path
