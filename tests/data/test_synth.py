"""The procedural benchmark: layout on disk, determinism, splits, captions, CLI."""

from __future__ import annotations

import json

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from rsz_infer.errors import RszError
from rsz_train.cli import synth_command
from rsz_train.data import synth
from rsz_train.data.formats import list_splits, load_split


def test_benchmark_reads_back_with_every_part(synth_dir, synth_data, tiny):
    data = synth_data
    assert data.root == synth_dir / "images"
    assert data.class_names == list(synth.CLASS_NAMES) and len(data.class_names) >= 30
    assert len(data.attribute_names) >= 40
    assert set(data.attribute_groups) == {synth.COVER, synth.STRUCTURE, synth.LAYOUT}
    np.testing.assert_array_equal(data.attribute_matrix, synth.attribute_matrix())
    assert data.descriptions["dense_residential"] == synth.class_description("dense_residential")
    assert len(data.image_paths) == len(data.class_names) * tiny["per_class"]
    assert data.image_paths[0] == "airport/airport_0001.png"
    for path, label in zip(data.image_paths, data.labels):
        assert path.split("/")[0] == data.class_names[label]
    with Image.open(data.root / data.image_paths[-1]) as image:
        assert image.mode == "RGB" and image.size == (tiny["size"], tiny["size"])
    # Five captions per tile, Karpathy splits per image.
    assert set(data.captions) == set(data.image_paths)
    assert all(len(c) == 5 and len(set(c)) == 5 for c in data.captions.values())
    assert set(data.caption_splits.values()) == {"train", "val", "test"}
    assert json.loads((synth_dir / "synth.json").read_text())["per_class"] == tiny["per_class"]


def test_every_class_description_is_made_of_its_attribute_phrases():
    for name in synth.CLASS_NAMES:
        description = synth.class_description(name)
        for attr in synth.CLASSES[name]:
            assert synth.ATTRIBUTES[synth.ATTRIBUTE_INDEX[attr]].phrase in description


def test_captions_describe_the_instance(synth_data):
    # Each tile's captions name something its class draws (a cover, a structure or an object).
    nouns = {k: v[0] for k, v in synth.NOUNS.items()}
    for path, label in zip(synth_data.image_paths, synth_data.labels):
        attrs = synth.CLASSES[synth_data.class_names[label]]
        words = [synth.ATTRIBUTES[synth.ATTRIBUTE_INDEX[a]].phrase for a in attrs] + [
            nouns.get(a, "?") for a in attrs
        ]
        text = " ".join(synth_data.captions[path]).lower()
        assert any(w.lower() in text for w in words), (path, text)


def test_counts_in_captions_match_the_drawn_objects():
    rgb, record = synth.render_tile("storage_tank", seed=3, index=0, size=96)
    n = record["objects"]["storage_tanks"]
    assert n >= 2
    said = {s for k in range(10) for s in synth.captions_for(record, 96, np.random.default_rng(k))}
    counted = [s for s in said if "storage tanks" in s]
    word = synth.NUMBER_WORDS[n] if n < len(synth.NUMBER_WORDS) else "many"
    assert counted and all(f"{word} storage tanks" in s.lower() for s in counted)


def test_same_seed_same_pixels_other_seed_or_index_differs():
    a, _ = synth.render_tile("harbor", seed=1, index=4, size=64)
    b, _ = synth.render_tile("harbor", seed=1, index=4, size=64)
    c, _ = synth.render_tile("harbor", seed=2, index=4, size=64)
    d, _ = synth.render_tile("harbor", seed=1, index=5, size=64)
    np.testing.assert_array_equal(a, b)
    assert np.abs(a.astype(int) - c).mean() > 5 and np.abs(a.astype(int) - d).mean() > 5


@pytest.mark.parametrize("size", [64, 128, 256])
def test_tiles_at_each_size(size):
    for name in ("airport", "sea_ice", "center"):
        rgb, _ = synth.render_tile(name, seed=0, index=0, size=size)
        assert rgb.shape == (size, size, 3) and rgb.dtype == np.uint8 and rgb.std() > 5


def test_attributes_have_their_own_look():
    # Materials keep their colour through all the instance variation: snow fields are bright, forests
    # green and dark, ship scenes blue.
    def mean_rgb(name):
        return np.mean(
            [synth.render_tile(name, 0, i, 48)[0].reshape(-1, 3).mean(0) for i in range(6)], axis=0
        )

    snow, forest, ship = mean_rgb("snowberg"), mean_rgb("forest"), mean_rgb("ship")
    assert snow.mean() > forest.mean() + 60
    assert forest[1] > forest[0] and forest[1] > forest[2]
    assert ship[2] > ship[0] + 30


def test_bytes_do_not_depend_on_worker_count(synth_dir, tmp_path, tiny):
    other = synth.write_benchmark(tmp_path / "again", workers=2, **tiny)
    files = sorted(p.relative_to(synth_dir) for p in synth_dir.rglob("*") if p.is_file())
    assert files == sorted(p.relative_to(other) for p in other.rglob("*") if p.is_file())
    for rel in files:
        assert (synth_dir / rel).read_bytes() == (other / rel).read_bytes(), rel


def test_split_invariants(synth_dir, synth_data):
    assert list_splits(synth_dir) == sorted(synth.SPLIT_SIZES)
    assert synth.DEFAULT_SPLIT in synth.SPLIT_SIZES
    matrix = synth_data.attribute_matrix > 0
    index = {n: i for i, n in enumerate(synth_data.class_names)}
    for name, (n_seen, n_unseen) in synth.SPLIT_SIZES.items():
        split = load_split(synth_dir, name)
        assert (len(split.seen), len(split.unseen)) == (n_seen, n_unseen)
        assert not set(split.seen) & set(split.unseen)
        assert split.val and set(split.val) <= set(split.seen)
        train_classes = set(split.seen) - set(split.val)
        taught = matrix[[index[c] for c in train_classes]].any(axis=0)
        for c in split.unseen + split.val:
            assert taught[matrix[index[c]]].all(), f"{name}: {c} has an attribute no training class carries"
        kinds = ("train", "val_seen", "test_seen", "val_unseen", "test_unseen")
        of = {k: {p.split("/")[0] for p in getattr(split, k)} for k in kinds}
        assert of["train"] == of["val_seen"] == of["test_seen"] == train_classes
        assert of["val_unseen"] == set(split.val) and of["test_unseen"] == set(split.unseen)
        lists = split.train + split.val_seen + split.test_seen + split.val_unseen + split.test_unseen
        assert len(lists) == len(set(lists)) == len(synth_data.image_paths)


def test_cli_writes_refuses_and_accepts_the_same_benchmark(tmp_path):
    out = tmp_path / "cli"
    args = ["--out", str(out), "--size", "32", "--per-class", "5", "--seed", "7"]
    result = CliRunner().invoke(synth_command, args)
    assert result.exit_code == 0, result.output
    assert (out / "images" / "harbor" / "harbor_0005.png").is_file()
    stamp = (out / "classes.txt").stat().st_mtime_ns
    assert CliRunner().invoke(synth_command, args).exit_code == 0  # same content: kept as it is
    assert (out / "classes.txt").stat().st_mtime_ns == stamp
    result = CliRunner().invoke(synth_command, [*args[:-1], "8"])
    assert result.exit_code == 2
    message = result.stderr
    assert str(out) in message and "not empty" in message and len(message.strip().splitlines()) == 1
    assert not list(tmp_path.glob(".cli.tmp-*"))


def test_bad_parameters_are_one_line_errors(tmp_path):
    with pytest.raises(RszError, match="--per-class 2"):
        synth.write_benchmark(tmp_path / "x", per_class=2)
    (tmp_path / "file").write_text("x")
    with pytest.raises(RszError, match="not a folder"):
        synth.write_benchmark(tmp_path / "file")


def test_every_object_attribute_has_a_drawer():
    from rsz_train.data.synth.catalogue import OBJECTS
    from rsz_train.data.synth.rendering import OBJECT_DRAWERS, OBJECT_SHAPES

    assert set(OBJECT_DRAWERS) == set(OBJECT_SHAPES) and set(OBJECT_SHAPES) <= set(OBJECTS)
