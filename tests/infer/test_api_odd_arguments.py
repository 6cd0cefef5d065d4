"""What a notebook hands the Python API besides what it was made for: one Tile, bytes, a dict, HxWx1
arrays, odd k / rerank / option values. Each works as documented or is one RszError naming the value."""

from __future__ import annotations

import numpy as np
import pytest

from rsz_infer import Index, Labeler, RszError, Tile
from rsz_infer.index import IndexConfig, build_index

from .helpers import solid, write_colour_tiles


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    return write_colour_tiles(tmp_path_factory.mktemp("odd_tiles"), 3)


@pytest.fixture(scope="module")
def labeler(bundles, class_file):
    with Labeler(bundles["mcfa"], class_file, backend="ort", device="cpu") as labeler:
        yield labeler


def test_one_tile_is_one_input_and_bytes_or_a_dict_are_refused_by_their_type(labeler, folder):
    path = str(folder / "t0_red.png")
    # one Tile, as one path is: the refusal said "a Tile is not ... a Tile"
    (record,) = labeler.label(Tile(id="mine", path=path))
    assert record["tile"] == "mine" and record["labels"][0] == "red"
    # a file's bytes iterate as ints ("a int is not ..."); a dict as its keys, labeled as missing paths
    with open(path, "rb") as f:
        data = f.read()
    for bad, kind in ((data, "bytes"), (bytearray(data), "bytearray"), ({"a": path}, "dict")):
        with pytest.raises(RszError, match=rf"^images: a {kind} is not an array, a path, a Tile or a list"):
            labeler.label(bad)


def test_an_hxwx1_array_is_one_grey_image_not_a_stack_of_one_pixel_wide_tiles(labeler):
    """(30, 30, 1), one band moved last, read as a stack: 30 records "1x30 px, smaller than the minimum"."""
    grey = np.full((30, 30), 200, np.uint8)
    (expected,) = labeler.label(grey)
    for image in (grey[:, :, None], np.dstack([grey, np.full_like(grey, 255)])):  # HxWx1, HxWx2 (with alpha)
        (record,) = labeler.label(image)
        assert record["labels"] == expected["labels"] and record["scores"] == expected["scores"]
        assert record["rule"] == ("grey to rgb" if image.shape[2] == 1 else "grey to rgb; alpha dropped")
    stack = labeler.label(np.stack([grey[:, :, None]] * 2))  # NxHxWx1: two grey images
    assert [r["labels"] for r in stack] == [expected["labels"]] * 2
    (float_grey,) = labeler.label(grey[:, :, None] / 255.0)
    assert float_grey["labels"] == expected["labels"] and float_grey["rule"] == "grey to rgb; float x255"


def test_search_refuses_a_k_rerank_or_text_of_the_wrong_type_in_one_line(bundles, folder, tmp_path):
    """k=2.0 (a config's float) was a TypeError from numpy's argpartition, text=5 an AttributeError."""
    idx = tmp_path / "idx"
    build_index(IndexConfig([str(folder)], bundles["msa"], idx, backend="ort", device="cpu", progress=False))
    index = Index.open(idx)

    def search(**kw):
        return index.search(backend="ort", device="cpu", **kw)

    for kw, message in (
        ({"text": "red", "k": 2.0}, "k 2.0: expected a whole number"),
        ({"text": "red", "k": None}, "k None: expected a whole number"),
        ({"text": "red", "k": "2"}, "k '2': expected a whole number"),
        ({"text": "red", "k": 1, "rerank": 2.5}, "rerank 2.5: expected a whole number"),
        ({"text": "red", "k": True}, "k True: expected a whole number"),  # a bool was k=1
        ({"text": "red", "k": 2, "rerank": True}, "rerank True: expected a whole number"),
        ({"text": 5}, r"text: a int, expected one sentence \(a str\)"),
        ({"text": ["red", "blue"]}, r"text: a list, expected one sentence \(a str\)"),
        ({"text": b"red"}, r"text: a bytes, expected one sentence \(a str\)"),
    ):
        with pytest.raises(RszError, match=f"^{message}$"):
            search(**kw)
    assert len(search(text="red", k=np.int64(2), rerank=np.int64(3))) == 2  # numpy integers are whole


def test_labeler_options_of_the_wrong_type_are_one_rsz_error_naming_the_value(bundles, class_file):
    """Each was a TypeError or AttributeError from inside math, pathlib or a comparison, naming no option."""
    mcfa = bundles["mcfa"]
    cls = class_file
    for make, message in (
        (lambda: Labeler(mcfa, None), r"classes: a NoneType; expected a class file, a list of class names"),
        (lambda: Labeler(mcfa, []), r"classes: an empty list; expected a class file"),
        (lambda: Labeler(mcfa, cls, min_score="0.2"), r"min_score '0.2': expected a number \(or None\)"),
        (lambda: Labeler(mcfa, cls, seen_calibration="x"), r"seen_calibration 'x': expected a number"),
        (lambda: Labeler(mcfa, cls, hubness_penalty=[1]), r"hubness_penalty \[1\]: expected a number"),
        (lambda: Labeler(mcfa, cls, device="cpu", batch="32"), r"--batch '32': expected a whole number"),
        (lambda: Labeler(mcfa, cls, device="cpu", batch=4.0), r"--batch 4.0: expected a whole number"),
        (lambda: Labeler(mcfa, cls, device="cpu", workers="2"), r"--workers '2': expected a whole"),
        (lambda: Labeler(mcfa, cls, device="cpu", batch=True), r"--batch True: expected a whole number"),
        (lambda: Labeler(mcfa, cls, min_score=True), r"min_score True: expected a number \(or None\)"),
        (lambda: Labeler(mcfa, cls, device=None), r"--device None: expected one of auto, cuda, cpu"),
        (lambda: Labeler(mcfa, cls, tiles={"size": 64}), r"tiles: a dict; expected rsz_infer.TileOptions"),
        (lambda: Labeler(None, cls), r"bundle None: expected the path of a model bundle folder"),
    ):
        with pytest.raises(RszError, match=f"^{message}"):
            make()
    with Labeler(mcfa, cls, device="cpu", min_score=np.float32(0.1), batch=np.int64(2)) as labeler:
        assert labeler.label(solid("red", 30))[0]["labels"][0] == "red"  # numpy numbers are numbers
        with pytest.raises(RszError, match=r"^output 'attention': the mcfa image graph gives embedding"):
            labeler.embed(solid("red", 30), output="attention")  # was a KeyError: 'attention'


def test_a_16_bit_array_is_refused_with_what_to_pass_instead(bundles, class_file, labeler):
    red16 = solid("red", 30).astype(np.uint16) * 257  # 0-65535, as a 16-bit raster reads
    with pytest.raises(
        RszError, match=r"^images\[0\]: .* got uint16; for 16-bit data pass a.astype\(np.float32\) "
    ):
        labeler.label([red16])
    with pytest.raises(RszError, match=r"^images\[0\]: expected uint8 or float pixels, got bool$"):
        labeler.label([red16 > 0])  # no 16-bit hint where it would not help
    with Labeler(bundles["mcfa"], class_file, device="cpu", float_rule="stretch") as stretch:
        assert stretch.label(red16.astype(np.float32))[0]["labels"][0] == "red"  # the hint works


def test_dir_lists_the_lazily_imported_names_for_tab_completion():
    import rsz_infer

    assert {"Labeler", "Embedder", "Index", "Hit", "RszError", "Tile", "TileOptions"} <= set(dir(rsz_infer))
    assert all(hasattr(rsz_infer, name) for name in rsz_infer.__all__)
