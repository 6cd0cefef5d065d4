"""Scores users can threshold: every record keeps the raw similarity beside the softmax probability, and
--min-score (on the raw similarity) labels a tile `unknown` below it, for every bundle kind."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest

from rsz_infer.backend import open_runner
from rsz_infer.bundle import load_manifest
from rsz_infer.class_embeddings import class_embeddings
from rsz_infer.classfile import read_class_file
from rsz_infer.images import TileOptions, decode_tile, discover_tiles
from rsz_infer.pipeline import LabelConfig, label_tiles
from rsz_infer.preprocess import to_model_input
from rsz_infer.scoring import class_logits

from .helpers import save, solid


@pytest.fixture(scope="module")
def tiles(tmp_path_factory):
    folder = tmp_path_factory.mktemp("tiles")
    for i, colour in enumerate(["red", "red", "green", "blue", (200, 120, 40)]):  # last: orange, off-class
        save(folder / f"t{i}.png", solid(colour, 24, seed=i))
    return folder


def _raw_similarity(bundle, manifest, class_file, folder) -> dict[str, float]:
    """Independent of the pipeline: image graph + class embeddings + the scoring rule at scale 1."""
    entries = read_class_file(class_file)
    classes = class_embeddings(bundle, manifest, entries, lambda role: open_runner(bundle, manifest, role))
    runner = open_runner(bundle, manifest, "image")
    out = {}
    for tile in discover_tiles([str(folder)], TileOptions()):
        x = to_model_input(decode_tile(tile, TileOptions())[0], manifest.preprocess)[None]
        emb = runner.infer({"image": x})["embedding"]
        out[tile.path.split("/")[-1]] = float(class_logits(emb, classes, manifest.scoring_rule, 1.0)[0, 0])
    runner.close()
    return out


@pytest.mark.parametrize("kind", ["msa", "mcfa", "dsva"])
def test_one_class_file_gives_similarities_and_unknown_below_min_score(bundles, tiles, tmp_path, kind):
    bundle = bundles[kind]
    manifest = load_manifest(bundle)
    class_file = tmp_path / "one.txt"
    class_file.write_text("red: red roofs\n", encoding="utf-8")
    out = tmp_path / "labels.jsonl"
    label_tiles(LabelConfig([str(tiles)], class_file, out, bundle, progress=False, top_k=1))
    rows = {r["path"].split("/")[-1]: r for r in map(json.loads, out.read_text().splitlines())}
    assert all(r["scores"] == [1.0] for r in rows.values())  # the softmax over one class says nothing
    expected = _raw_similarity(bundle, manifest, class_file, tiles)
    sims = {name: r["similarities"][0] for name, r in rows.items()}
    assert sims == pytest.approx(expected, abs=1e-5)
    assert len({round(s, 4) for s in sims.values()}) >= 3  # the tiles differ, and the numbers say so

    threshold = float(np.median(list(sims.values())))
    csv_out = tmp_path / "labels.csv"
    cfg = LabelConfig([str(tiles)], class_file, csv_out, bundle, progress=False, top_k=1, min_score=threshold)
    label_tiles(cfg)
    with open(csv_out, newline="", encoding="utf-8") as f:
        table = {r["path"].split("/")[-1]: r for r in csv.DictReader(f)}
    for name, sim in sims.items():
        assert table[name]["label_1"] == ("unknown" if sim < threshold else "red"), (name, sim)
        assert float(table[name]["similarity_1"]) == pytest.approx(sim, abs=1e-5)
        assert float(table[name]["score_1"]) == pytest.approx(1.0)
    assert {r["label_1"] for r in table.values()} == {"unknown", "red"}
