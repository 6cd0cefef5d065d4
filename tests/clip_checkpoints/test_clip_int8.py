"""rsz-export clip --int8: the INT8 step is the same for a CLIP bundle's image graph as for trained runs
(a real open_clip ViT with random weights, calibrated on PNG tiles written here)."""

from __future__ import annotations

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from rsz_export.cli import main as export_main
from rsz_infer.bundle import load_manifest

from .helpers import TINY_VIT, random_open_clip

TINY_VIT_TEXT_1 = {**TINY_VIT, "text_cfg": {**TINY_VIT["text_cfg"], "layers": 1}}


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    from safetensors.torch import save_file

    folder = tmp_path_factory.mktemp("clip_int8")
    _, net = random_open_clip(folder, "rsz-int8-vit", TINY_VIT_TEXT_1)
    save_file({k: v.contiguous() for k, v in net.state_dict().items()}, str(folder / "vit.safetensors"))
    tiles = folder / "tiles"
    tiles.mkdir()
    rng = np.random.default_rng(0)
    for i in range(24):
        base = rng.integers(0, 255, (1, 1, 3))
        tile = np.clip(base + rng.integers(-40, 40, (40, 40, 3)), 0, 255).astype(np.uint8)
        Image.fromarray(tile).save(tiles / f"t{i:02d}.png")
    return folder / "vit.safetensors", tiles


def test_clip_bundle_gets_a_checked_int8_image_graph(checkpoint, tmp_path):
    weights, tiles = checkpoint
    out = tmp_path / "clip8"
    args = ["clip", "--checkpoint", str(weights), "--arch", "rsz-int8-vit", "--engine", "none"]
    args += ["--int8", "--calibration", str(tiles), "--out", str(out)]
    result = CliRunner().invoke(export_main, args)
    assert result.exit_code == 0, result.output
    manifest = load_manifest(out)
    info = manifest.extra["int8"]["image"]
    assert info["calibration"]["tiles"] == 18 and info["calibration"]["check_tiles"] == 6
    assert len(info["candidates"]) == 3 and all("min_cosine" in c for c in info["candidates"])
    # every candidate was made (ORT's percentile collector fails on this graph: MinMax then)
    assert not [c["reason"] for c in info["candidates"] if c["reason"].startswith("failed")]
    if info["method"]:  # shipped only when the check passed
        assert manifest.extra["checks"]["image.int8"]["min_cosine"] >= 0.995
        assert manifest.extra["variants"]["image"]["int8"] == "image.int8.onnx"
    else:
        assert "no candidate passed" in info["note"]


def test_clip_int8_needs_calibration_tiles(checkpoint, tmp_path):
    weights, _ = checkpoint
    args = ["clip", "--checkpoint", str(weights), "--arch", "rsz-int8-vit", "--engine", "none", "--int8"]
    result = CliRunner().invoke(export_main, [*args, "--out", str(tmp_path / "x")])
    assert result.exit_code == 2 and "pass --calibration DIR" in result.output
    assert len(result.output.strip().splitlines()) == 1
