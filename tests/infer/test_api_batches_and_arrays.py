"""Batch sizes that do not pad, the array rules of the Python API (grey images and stacks, 0-255 floats,
NaN and tiny arrays), one record per input, mixed inputs, and closed Labelers; on the tiny real bundles."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from rsz_infer import Embedder, Labeler, RszError
from rsz_infer.pipeline import LabelConfig, label_tiles
from rsz_infer.runners.ort import OrtRunner

from .helpers import COLOURS, read_jsonl, save, solid, write_colour_tiles


class RecordingOrtRunner(OrtRunner):
    """The real ONNX Runtime runner that also keeps the shape of every image batch it was given."""

    shapes: list[tuple[int, ...]]

    def _infer(self, feeds):
        self.shapes.append(feeds["image"].shape)
        return super()._infer(feeds)


def recording(labeler: Labeler) -> RecordingOrtRunner:
    """The labeler's own loaded runner, made to record what it runs (same session, same graph)."""
    runner = labeler.engine.runner
    assert isinstance(runner, OrtRunner)
    runner.__class__ = RecordingOrtRunner
    runner.shapes = []
    return runner


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    folder = tmp_path_factory.mktemp("batch_tiles")
    write_colour_tiles(folder, 7)
    save(folder / "tiny.png", solid("red", 4))  # a bad file among good ones: skipped, never run
    return folder


def test_batch_size_changes_neither_labels_nor_the_rows_run(bundles, class_file, folder, tmp_path):
    by_batch = {}
    for batch in (1, 3, 1000):
        out = tmp_path / f"b{batch}.jsonl"
        config = LabelConfig([str(folder)], class_file, out, bundles["dsva"], "ort", "cpu", progress=False)
        config.batch = batch
        label_tiles(config)
        by_batch[batch] = sorted(read_jsonl(out), key=lambda r: r["tile"])
    assert len(by_batch[1]) == 7 and by_batch[1] == by_batch[3] == by_batch[1000]

    arrays = [solid(c, 30, seed=i) for i, c in enumerate(list(COLOURS) * 2)]
    with Labeler(bundles["dsva"], class_file, backend="ort", device="cpu", batch=100000) as labeler:
        runner = recording(labeler)
        from_files = labeler.label([folder])
        from_arrays = labeler.label(arrays)
        # the decoding loop (files) and the array path run only the rows they hold, not 100,000
        assert [s[0] for s in runner.shapes] == [7, 6]
        # a graph with a minimum batch (a TensorRT profile's) gets padding up to it, and only up to it
        runner.batch_range = (8, None)
        assert labeler.label(arrays) == from_arrays and runner.shapes[-1][0] == 8
    with Labeler(bundles["dsva"], class_file, backend="ort", device="cpu", batch=1) as labeler:
        assert labeler.label(arrays) == from_arrays
        assert labeler.label([folder]) == from_files


def test_grey_arrays_and_stacks_are_images_by_one_rule(bundles, class_file):
    colour = solid("green", 30)
    grey = colour[..., 1]
    with Labeler(bundles["mcfa"], class_file, backend="ort", device="cpu") as labeler:
        one = labeler.label(grey)  # HxW: one grey image, not H rows
        assert len(one) == 1 and one[0]["rule"] == "grey to rgb"
        assert labeler.label([grey]) == one
        stack = labeler.label(np.stack([grey] * 5))  # NxHxW: five grey images
        # grey is equally far from red, green and blue: the order of that tie is float noise, not compared
        assert [r["tile"] for r in stack] == ["#0", "#1", "#2", "#3", "#4"]
        assert [r["rule"] for r in stack] == ["grey to rgb"] * 5
        # 3 (or 4) rows of HxW is far more often one CxHxW image than three grey tiles: refused, not 3 records
        chw = np.moveaxis(colour, 2, 0)
        with pytest.raises(RszError, match=r"images: shape \(3, 30, 30\) looks like one channels-first"):
            labeler.label(chw)
        assert len(labeler.label(list(np.stack([grey] * 3)))) == 3  # a list says it is a stack
        with pytest.raises(RszError, match=r"images\[0\]: expected .*\(3, 30, 30\); channels first\?"):
            labeler.label(chw[None])  # NxCxHxW
        assert len(labeler.label(colour)) == 1  # HxWx3: one colour image
        rgba = np.dstack([colour, np.full(colour.shape[:2], 255, np.uint8)])
        assert labeler.label(rgba)[0]["rule"] == "rgb; alpha dropped"
        with pytest.raises(RszError, match=r"images: expected an HxW, .* got shape \(64,\)"):
            labeler.label(np.zeros(64, np.uint8))


def test_bad_arrays_are_refused_or_skipped_never_labeled(bundles, class_file):
    good = solid("blue", 30)
    with Labeler(bundles["mcfa"], class_file, backend="ort", device="cpu") as labeler:
        # 0-255 floats under "unit" would be clipped to white: refused, the message says what to do
        with pytest.raises(RszError, match=r"images\[0\]: float pixels .* not in \[0, 1\].*uint8.*stretch"):
            labeler.label([good.astype(np.float32)])
        stretched = Labeler(bundles["mcfa"], class_file, backend="ort", device="cpu", float_rule="stretch")
        with stretched:
            assert stretched.label([good.astype(np.float32)])[0]["labels"][0] == "blue"
        nan = np.full((30, 30, 3), np.nan, np.float32)
        part_nan = good / 255.0
        part_nan[:3] = np.nan  # a partly valid image is labeled, its NaN pixels black
        records = labeler.label([nan, good, np.zeros((0, 0, 3), np.uint8), good[:2, :2], part_nan])
        assert [r["tile"] for r in records] == ["#0", "#1", "#2", "#3", "#4"]
        assert records[0]["skipped"] == "all nodata (NaN pixels)" and records[0]["nodata"]
        assert records[2]["skipped"] == "image is 0x0 px, smaller than the 8 px minimum"
        assert records[3]["skipped"] == "image is 2x2 px, smaller than the 8 px minimum"
        assert records[1]["labels"][0] == records[4]["labels"][0] == "blue"
        assert all("labels" not in records[i] for i in (0, 2, 3))


def test_one_record_per_input_and_mixed_inputs_refused(bundles, class_file, folder):
    path = folder / "t0_red.png"
    with Labeler(bundles["mcfa"], class_file, backend="ort", device="cpu") as labeler:
        records = labeler.label([path, path, folder / "missing.png", path])
        assert [r["tile"] for r in records] == [str(path), str(path), str(folder / "missing.png"), str(path)]
        assert records[0] == records[1] == records[3] and records[0] is not records[1]
        assert labeler.embed([path, path]).shape == (2, labeler.manifest.embedding_dim)
        with pytest.raises(RszError, match="images: a list mixing arrays and paths: pass one kind per call"):
            labeler.label([solid("red", 30), path])
        # one PIL image or None: the same one-line refusal as inside a list, never a TypeError
        with Image.open(path) as image:
            for bad in (image, [image]):
                with pytest.raises(RszError, match=r"images: a PngImageFile is not an array, a path"):
                    labeler.label(bad)
        with pytest.raises(RszError, match=r"images: a NoneType is not an array"):
            labeler.embed(None)


def test_negative_workers_are_refused_when_the_labeler_opens(bundles, class_file):
    """The CLI's click range has no say here: -1 built a Labeler whose first folder was a ValueError."""
    for make in (
        lambda: Labeler(bundles["mcfa"], class_file, backend="ort", device="cpu", workers=-1),
        lambda: Embedder(bundles["mcfa"], backend="ort", device="cpu", workers=-1),
    ):
        with pytest.raises(RszError, match=r"^--workers -1: must be at least 0 \(0: one per core but one\)$"):
            make()


@pytest.mark.parametrize("top_k", [2.0, "3", None, True])  # True was top_k=1
def test_a_top_k_that_is_no_whole_number_is_refused_when_the_labeler_opens(bundles, class_file, top_k):
    """2.0 (a YAML config's 2.0) built a Labeler whose first label() was a TypeError on a slice."""
    with pytest.raises(RszError, match=rf"^top_k {top_k!r}: expected a whole number$"):
        Labeler(bundles["mcfa"], class_file, backend="ort", device="cpu", top_k=top_k)
    with Labeler(bundles["mcfa"], class_file, backend="ort", device="cpu", top_k=np.int64(2)) as labeler:
        assert len(labeler.label([solid("red", 30)])[0]["labels"]) == 2  # numpy integers are whole numbers


def test_closed_labelers_and_embedders_refuse_every_call(bundles, class_file, folder):
    image = solid("red", 30)
    labeler = Labeler(bundles["mcfa"], class_file, backend="ort", device="cpu")
    assert labeler.label([image])[0]["labels"][0] == "red"
    labeler.close()
    labeler.close()  # twice is fine
    for call in (
        lambda: labeler.label([image]),
        lambda: labeler.label([folder]),
        lambda: labeler.embed([image]),
        lambda: labeler.label_table([image]),
    ):
        with pytest.raises(RszError, match=r"^\S+: this Labeler is closed$"):
            call()
    with Embedder(bundles["mcfa"], backend="ort", device="cpu") as embedder:
        assert embedder.embed(image).shape == (1, embedder.manifest.embedding_dim)
    with pytest.raises(RszError, match="this Embedder is closed"):
        embedder.embed(image)
    with pytest.raises(RszError, match="image engine .* is closed"):
        embedder.engine.check_open()
