"""The README's Python API example, run as written: its code block, in a folder holding what it names
(models/default, tiles/, scene.tif, my_images, idx/ built with models/msa), on the tiny real bundles."""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import numpy as np
from PIL import Image

from rsz_infer.index import IndexConfig, build_index

from .helpers import bands_first, solid, write_colour_tiles, write_geotiff

README = Path(__file__).resolve().parents[2] / "README.md"


def readme_python_api_block() -> str:
    text = README.read_text(encoding="utf-8")
    section = text[text.index("## Python API") :]
    return re.search(r"```python\n(.*?)```", section, re.S).group(1)


def test_the_readme_python_api_example_runs_as_written(bundles, tmp_path, monkeypatch):
    shutil.copytree(bundles["mcfa"], tmp_path / "models" / "default")
    shutil.copytree(bundles["msa"], tmp_path / "models" / "msa")
    write_colour_tiles(tmp_path / "tiles", 3)
    write_geotiff(tmp_path / "scene.tif", bands_first(solid("green", 40)))
    monkeypatch.chdir(tmp_path)
    # idx/ as the README's comment makes it (rsz-infer index tiles/ --model models/msa --out idx/)
    build_index(IndexConfig(["tiles"], Path("models/msa"), Path("idx"), backend="ort", progress=False))
    my_images = [Image.fromarray(solid(c, 30)) for c in ("red", "blue")]
    scope = {"my_images": my_images}
    exec(compile(readme_python_api_block(), str(README), "exec"), scope)
    records, frame, embeddings, hits = (scope[n] for n in ("records", "frame", "embeddings", "hits"))
    # the tiny text graph knows only colour words: which README class wins is arbitrary, that one does is not
    assert all(r["labels"][0] in ("airport", "river", "dense residential") for r in records)
    assert len(records) == 4 and records[-1]["tile"].startswith("scene.tif")  # 3 tiles, 1 scene window
    assert list(frame["tile"]) == ["#0", "#1"] and frame["label"].notna().all()
    assert embeddings.shape == (2, 16) and embeddings.dtype == np.float32
    assert [h.rank for h in hits] == [1, 2, 3] and all(isinstance(h.score, float) for h in hits)
