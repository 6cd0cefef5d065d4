"""A tile whose image-graph outputs are NaN or infinite (an FP16 or INT8 graph overflowing on it) is skipped
with a reason, in labeling and in indexing, and the other tiles of its batch go on: NaN scores labeled it at
random (argmax of NaN), and an index holding the row was refused as damaged by every later search."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest

from rsz_infer import Labeler
from rsz_infer.errors import RszError
from rsz_infer.preprocess import PreprocessSpec

from .helpers import DM, SIZE, D, S, save, solid, write_bundle
from .test_label import run_cli


def _nan_on_black_bundle(bundles: dict[str, Path], kind: str, folder: Path) -> Path:
    """The tiny bundle of `kind` with an image graph dividing the mean colour by its sum: 0 / 0 on a black
    tile. On any other tile the DSVA output is a positive multiple of helpers' (colour minus its mean), so
    a red tile is still labeled red."""
    import torch

    torch.manual_seed(0)
    to_emb, to_scales = torch.randn(3, D), torch.randn(3, S * DM)
    mean = torch.tensor(PreprocessSpec().mean).view(1, 3, 1, 1)
    std = torch.tensor(PreprocessSpec().std).view(1, 3, 1, 1)

    class Graph(torch.nn.Module):
        def forward(self, image):
            colour = torch.round(
                (image * std + mean).mean(dim=(2, 3)) * 255
            )  # [B, 3] mean colour: 0 on black
            share = colour / colour.sum(dim=1, keepdim=True)
            if kind == "dsva":
                return share - 1.0 / 3.0
            return share @ to_emb, (share @ to_scales).view(-1, S, DM)

    name = "image_dsva.onnx" if kind == "dsva" else "image.onnx"
    outputs = ["embedding"] if kind == "dsva" else ["embedding", "scales"]
    graph = folder / "graphs" / name
    graph.parent.mkdir(parents=True)
    torch.onnx.export(
        Graph(), (torch.zeros(2, 3, SIZE, SIZE),), str(graph), input_names=["image"], output_names=outputs,
        dynamic_axes={n: {0: "batch"} for n in ["image", *outputs]}, opset_version=17, dynamo=False,
    )  # fmt: skip
    graphs = {p.name: p for p in bundles[kind].iterdir() if p.suffix == ".onnx"} | {name: graph}
    return write_bundle(folder / kind, kind, graphs)


def _tiles(folder: Path) -> Path:
    save(folder / "a_red.png", solid("red", 24, seed=1))
    save(folder / "b_black.png", np.zeros((24, 24, 3), np.uint8))
    save(folder / "c_blue.png", solid("blue", 24, seed=2))
    return folder


def test_a_nan_tile_is_skipped_and_its_batch_neighbours_labeled(bundles, class_file, tmp_path, capsys):
    bundle = _nan_on_black_bundle(bundles, "dsva", tmp_path)
    tiles = _tiles(tmp_path / "tiles")
    out = tmp_path / "labels.csv"
    code, _, err = run_cli(
        [tiles, "--classes", class_file, "--model", bundle, "--out", out, "--quiet"], capsys
    )
    assert code == 3, err
    with open(out, newline="") as f:
        assert {Path(r["tile"]).name: r["label_1"] for r in csv.DictReader(f)} == {
            "a_red.png": "red",
            "c_blue.png": "blue",
        }
    with open(tmp_path / "labels.csv.errors.csv", newline="") as f:
        errors = {Path(r["tile"]).name: r["reason"] for r in csv.DictReader(f)}
    assert list(errors) == ["b_black.png"] and "NaN or infinite" in errors["b_black.png"]
    assert "--precision fp32" in errors["b_black.png"]

    with Labeler(bundle, class_file) as labeler:
        records = labeler.label(sorted(tiles.iterdir()))
        assert [r.get("labels", [None])[0] for r in records] == ["red", None, "blue"]
        assert "NaN or infinite" in records[1]["skipped"]
        with pytest.raises(RszError, match="b_black.png: the image graph gave NaN"):
            labeler.embed(sorted(tiles.iterdir()))


def test_an_index_leaves_out_a_nan_tile_and_stays_searchable(bundles, tmp_path, capsys):
    bundle = _nan_on_black_bundle(bundles, "msa", tmp_path)
    tiles = _tiles(tmp_path / "tiles")
    idx = tmp_path / "idx"
    code, _, err = run_cli(["index", tiles, "--model", bundle, "--out", idx, "--quiet"], capsys)
    assert code == 3 and "2 tiles added, 0 already in, 1 skipped" in err, err
    code, out, err = run_cli(["search", idx, "--text", "red roofs", "-k", "5"], capsys)
    assert code == 0, err
    assert "a_red.png" in out and "c_blue.png" in out and "b_black.png" not in out
