"""What a notebook hands the Python API besides what it was made for: one Tile, bytes, a dict, HxWx1
arrays, odd k / rerank / option values. Each works as documented or is one RszError naming the value."""

from __future__ import annotations

import pytest

from rsz_infer import Labeler, RszError, Tile

from .helpers import write_colour_tiles


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
