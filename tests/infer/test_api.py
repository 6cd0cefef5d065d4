"""The Python engine API (rsz_infer.Labeler, Embedder, Index.open) against the CLI path it shares the
engine with, on the tiny real bundles: arrays, paths and Tiles, bad tiles, tables, search, --shard."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

import rsz_infer
from rsz_infer import ClassEntry, Index, Labeler, RszError
from rsz_infer.backend import check_device
from rsz_infer.cli import main
from rsz_infer.cluster import parse_shard
from rsz_infer.index import IndexConfig, build_index
from rsz_infer.pipeline import LabelConfig, label_tiles

from .helpers import COLOURS, read_jsonl, solid, write_colour_tiles


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    folder = tmp_path_factory.mktemp("api_tiles")
    write_colour_tiles(folder, 7)
    (folder / "corrupt.jpg").write_bytes(b"\xff\xd8\xff\xe0 not a jpeg" * 20)
    return folder


def test_arrays_are_labeled_like_their_colour_and_every_class_form_agrees(bundles, class_file):
    arrays = [solid(c, 30, seed=i) for i, c in enumerate(COLOURS)]
    names = ["red: red roofs", "green: green fields", "blue: blue water"]
    with Labeler(bundles["mcfa"], class_file, backend="ort", device="cpu") as from_file:
        records = from_file.label(arrays)
        stacked = from_file.label(np.stack(arrays))
        assert from_file.embed(arrays).shape == (3, from_file.manifest.embedding_dim)
    assert [r["labels"][0] for r in records] == list(COLOURS)
    assert [r["tile"] for r in records] == ["#0", "#1", "#2"] and records == stacked
    entries = [ClassEntry(*n.split(": ")) for n in names]
    for classes in (names, entries):
        with Labeler(bundles["mcfa"], classes, backend="ort", device="cpu") as labeler:
            assert labeler.label(arrays) == records
    # float pixels in [0, 1] ("unit") and grey arrays; the rule says what was done
    with Labeler(bundles["mcfa"], names, device="cpu") as labeler:
        floats = labeler.label([a.astype(np.float32) / 255.0 for a in arrays])
        grey = labeler.label([np.full((20, 20), 200, np.uint8)])[0]
        with pytest.raises(RszError, match=r"images\[0\]: expected an HxWx3"):
            labeler.label([np.zeros((4, 4, 5), np.uint8)])
    assert [r["labels"][0] for r in floats] == list(COLOURS) and floats[0]["rule"] == "rgb; float x255"
    assert grey["rule"] == "grey to rgb"


def test_classes_as_a_dict_are_refused_not_labeled_without_their_descriptions(bundles):
    # list(dict) is its keys: {"red": "red roofs"} would label with "red" alone, the description lost
    with pytest.raises(RszError, match=r'^classes: a dict; pass a list of "name: description" strings'):
        Labeler(bundles["mcfa"], {"red": "red roofs", "blue": "blue water"}, backend="ort", device="cpu")


def test_paths_give_what_the_cli_path_writes_bad_tiles_included(bundles, class_file, folder, tmp_path):
    out = tmp_path / "labels.jsonl"
    label_tiles(LabelConfig([str(folder)], class_file, out, bundles["dsva"], "ort", "cpu", progress=False))
    by_cli = {r["tile"]: r for r in read_jsonl(out)}
    with Labeler(bundles["dsva"], class_file, backend="ort", device="cpu") as labeler:
        records = labeler.label([folder])
        table = labeler.label_table([folder])
    labeled = [r for r in records if "labels" in r]
    assert len(labeled) == 7 and {r["tile"]: r["labels"] for r in labeled} == {
        t: r["labels"] for t, r in by_cli.items()
    }
    assert all(r["scores"] == by_cli[r["tile"]]["scores"] for r in labeled)
    (bad,) = [r for r in records if "skipped" in r]
    assert bad["tile"].endswith("corrupt.jpg") and "cannot decode" in bad["skipped"]
    frame = table.to_pandas()
    assert list(frame["tile"]) == [r["tile"] for r in records]
    assert frame["label"].isna().sum() == 1 and frame["skipped"].notna().sum() == 1


def test_index_open_search_and_embed_agree(bundles, folder, tmp_path):
    idx = tmp_path / "idx"
    build_index(IndexConfig([str(folder)], bundles["msa"], idx, backend="ort", device="cpu", progress=False))
    index = Index.open(idx)
    hits = index.search(text="a red roof", k=3)
    assert [h.rank for h in hits] == [1, 2, 3] and all("red" in h.tile["tile"] for h in hits)
    by_array = index.search(image=solid("blue", 24), k=1)[0]
    assert "blue" in by_array.tile["tile"]
    with (
        Image.open(folder / "t2_blue.png") as pil,
        pytest.raises(RszError, match=r"^image: a PngImageFile is not"),
    ):
        index.search(image=pil, k=1)  # one line, as for Labeler.label, never a TypeError from Path()
    with rsz_infer.Embedder(bundles["msa"], backend="ort", device="cpu") as embedder:
        good = [str(p) for p in sorted(folder.glob("*.png"))]
        emb = embedder.embed(good)
        with pytest.raises(RszError, match="corrupt.jpg"):
            embedder.embed([folder])
    emb /= np.linalg.norm(emb, axis=1, keepdims=True)
    row = {t["tile"]: i for i, t in enumerate(index.tiles)}
    np.testing.assert_allclose(emb, index.embeddings[[row[p] for p in good]], atol=1e-6)


def test_shards_split_the_tiles_once_and_merge_to_the_whole(bundles, class_file, folder, tmp_path):
    def run(shard, name):
        out = tmp_path / name
        cfg = LabelConfig([str(folder)], class_file, out, bundles["dsva"], "ort", "cpu", progress=False)
        cfg.shard = shard
        label_tiles(cfg)
        return {r["tile"]: r["labels"] for r in read_jsonl(out)}

    whole = run(None, "all.jsonl")
    parts = [run(parse_shard(f"{i}/3"), f"part{i}.jsonl") for i in range(3)]
    assert sum(len(p) for p in parts) == len(whole) == 7
    assert {k: v for p in parts for k, v in p.items()} == whole
    assert parts[0] == run((0, 3), "again.jsonl")  # deterministic
    for bad in ("3/3", "1", "a/b", "-1/2"):
        with pytest.raises(RszError, match="--shard"):
            parse_shard(bad)


def test_device_forms():
    assert [check_device(d) for d in ("auto", "cpu", "cuda", "cuda:1")] == ["auto", "cpu", "cuda", "cuda:1"]
    for bad in ("gpu", "cuda:", "cuda:x", "cuda1"):
        with pytest.raises(RszError, match=f"--device {bad}: expected"):
            check_device(bad)


def test_index_shards_merge_into_the_whole_index(bundles, folder, tmp_path, capsys):
    def build(shard, name):
        cfg = IndexConfig([str(folder)], bundles["msa"], tmp_path / name, device="cpu", progress=False)
        cfg.shard = shard
        build_index(cfg)
        return tmp_path / name

    whole = Index.open(build(None, "whole"))
    parts = [build((i, 2), f"part{i}") for i in range(2)]
    with pytest.raises(SystemExit) as exit_info:
        main(["merge", str(tmp_path / "merged"), *map(str, parts), str(parts[0])])  # a shard twice: once
    assert exit_info.value.code in (None, 0), capsys.readouterr().err
    merged = Index.open(tmp_path / "merged")
    rows = {t["tile"]: i for i, t in enumerate(merged.tiles)}
    assert len(merged.tiles) == len(whole.tiles) == 7 and set(rows) == {t["tile"] for t in whole.tiles}
    order = [rows[t["tile"]] for t in whole.tiles]
    np.testing.assert_array_equal(merged.embeddings[order], whole.embeddings)
    assert [merged.tiles[i] for i in order] == whole.tiles
    assert merged.search(text="a red roof", k=1)[0].tile == whole.search(text="a red roof", k=1)[0].tile
    with pytest.raises(SystemExit) as exit_info:  # into an existing index: refused in one line
        main(["merge", str(tmp_path / "merged"), str(parts[0])])
    assert exit_info.value.code == 2 and "exists; merge into a new folder" in capsys.readouterr().err


def test_label_table_without_pyarrow_says_what_to_install(monkeypatch):
    # pyarrow comes with the geo/ray/train extras only, not with a plain `pip install .`
    import sys

    from rsz_infer.api import records_table

    monkeypatch.setitem(sys.modules, "pyarrow", None)  # what `import pyarrow` sees when it is not installed
    with pytest.raises(RszError, match=r"label_table needs pyarrow \(pip install 'rsz\[geo\]'\)"):
        records_table([{"tile": "a.png", "labels": ["x"], "scores": [1.0]}])
