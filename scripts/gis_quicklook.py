"""Make docs/img/class_map_quicklook.png: the class-map quicklook rsz-infer writes, on a made-up scene.

The scene is procedural (smooth noise: water, fields, roofs; a nodata swath edge) in UTM 33N at 1 m; the
model is the test suite's toy colour bundle (tests/infer/helpers.py: labels a tile by its mean colour), so
the picture shows what rsz writes (COG class map, legend, nodata), not a model's accuracy.

    python scripts/gis_quicklook.py            # needs the dev install (torch, to export the toy graphs)
"""

from __future__ import annotations

import shutil
import sys
import tempfile
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from rsz_infer.images import TileOptions  # noqa: E402
from rsz_infer.pipeline import LabelConfig, label_tiles  # noqa: E402
from tests.infer.helpers import export_graphs, write_bundle, write_geotiff  # noqa: E402


def _smooth_noise(shape: tuple[int, int], cells: int, rng: np.random.Generator) -> np.ndarray:
    from PIL import Image

    coarse = rng.random((cells, cells)).astype(np.float32)
    return np.asarray(Image.fromarray(coarse, "F").resize(shape[::-1], Image.BICUBIC))


def main() -> None:
    rng = np.random.default_rng(7)
    height, width = 1536, 2048
    land = _smooth_noise((height, width), 6, rng)
    built = _smooth_noise((height, width), 10, rng)
    rgb = np.zeros((height, width, 3), np.uint8)
    rgb[...] = (40, 170, 50)  # fields
    rgb[built > 0.62] = (200, 60, 50)  # roofs
    rgb[land < 0.35] = (30, 60, 190)  # water
    rgb = np.clip(rgb + rng.integers(-20, 21, rgb.shape), 1, 255).astype(np.uint8)
    rows, cols = np.mgrid[0:height, 0:width]
    rgb[cols < 0.3 * (height - rows)] = 0  # the edge of a swath: nodata
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        scene = write_geotiff(tmp / "scene.tif", np.ascontiguousarray(rgb.transpose(2, 0, 1)), nodata=0)
        (tmp / "graphs").mkdir()
        bundle = write_bundle(tmp / "toy", "mcfa", export_graphs(tmp / "graphs"))  # classes by description
        classes = tmp / "classes.txt"
        classes.write_text("water: blue water\nroofs: red roofs\nfields: green fields\n", encoding="utf-8")
        cfg = LabelConfig(
            inputs=[str(scene)], classes=classes, out=tmp / "labels.parquet", model=bundle, progress=False,
            tiles=TileOptions(tile_size=128), class_map=tmp / "map.tif",
        )  # fmt: skip
        label_tiles(cfg)
        target = ROOT / "docs" / "img" / "class_map_quicklook.png"
        shutil.copyfile(tmp / "map.png", target)
    print(f"{target}: {target.stat().st_size} bytes")


if __name__ == "__main__":
    main()
