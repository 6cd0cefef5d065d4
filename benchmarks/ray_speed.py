"""Tiles/s of rsz-infer's single-process labeling against --ray with 1 and 2 engine actors, in one run.

A plain script. The tiles are JPEGs written here (`--tiles` of `--size` px, colours with noise); the
bundle is `--model` with `--classes`, or, without `--model`, the tests' tiny real bundle (an ONNX image
graph that averages colours: the engine costs nearly nothing, so the figures are decoding plus each
path's orchestration, which is what Ray adds). Each path labels the same tiles to its own output; the
loop rate is tiles / loop seconds (after start-up: bundle, class embeddings, actors), the call rate is
tiles / the whole call. Ray is started once (num_cpus = the cores) and its start-up is reported apart.
    python benchmarks/ray_speed.py --tiles 1000 --out results/ray
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # this checkout first

from rsz_bench.report import markdown_table, new_result, write_result  # noqa: E402
from rsz_infer.cluster import RayOptions, label_tiles_ray  # noqa: E402
from rsz_infer.images import TileOptions  # noqa: E402
from rsz_infer.pipeline import LabelConfig, label_tiles  # noqa: E402


def write_tiles(folder: Path, count: int, size: int, seed: int = 0) -> Path:
    rng = np.random.default_rng(seed)
    colours = np.array([(220, 30, 30), (30, 200, 40), (30, 40, 210)])
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(count):
        noise = rng.integers(-20, 21, (size, size, 3))
        rgb = np.clip(colours[i % 3] + noise, 0, 255).astype(np.uint8)
        Image.fromarray(rgb).save(folder / f"tile_{i:05d}.jpg", quality=90)
    return folder


def toy_bundle(folder: Path) -> tuple[Path, Path]:
    sys.path.insert(0, str(ROOT / "tests" / "infer"))
    from helpers import export_graphs, write_bundle  # the tests' tiny real bundle (needs torch to export)

    bundle = write_bundle(folder / "dsva", "dsva", export_graphs(folder))
    classes = folder / "classes.txt"
    classes.write_text("red: red roofs\ngreen: green fields\nblue: blue water\n", encoding="utf-8")
    return bundle, classes


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tiles", type=int, default=1000)
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--model", type=Path, default=None)
    parser.add_argument("--classes", type=Path, default=None)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--partition-tiles", type=int, default=64)
    parser.add_argument("--actors", default="1,2", help="comma-separated actor counts")
    parser.add_argument("--out", type=Path, default=Path("results/ray"))
    args = parser.parse_args()
    import ray

    work = Path(tempfile.mkdtemp(prefix="rsz-ray-bench-"))
    tiles = write_tiles(work / "tiles", args.tiles, args.size)
    model, classes = (args.model, args.classes) if args.model else toy_bundle(work)

    def config(name: str, **kw) -> LabelConfig:
        return LabelConfig([str(tiles)], classes, work / f"{name}.csv", model, "ort", args.device,
                           tiles=TileOptions(), progress=False, **kw)  # fmt: skip

    rows = []
    t0 = time.perf_counter()
    summary = label_tiles(config("single"))
    rows.append(_row("single process (rsz-infer defaults)", summary, time.perf_counter() - t0, args.tiles))
    # the decoders the Ray tasks use (Pillow decode, numpy normalise), for a like-for-like ratio
    t0 = time.perf_counter()
    summary = label_tiles(config("single_pillow", decoder="pillow", preprocess="pillow"))
    rows.append(_row("single process, Pillow decode", summary, time.perf_counter() - t0, args.tiles))
    t0 = time.perf_counter()
    ray.init(num_cpus=os.cpu_count(), include_dashboard=False, log_to_driver=False)
    ray_start = time.perf_counter() - t0
    for actors in [int(a) for a in args.actors.split(",")]:
        options = RayOptions(actors=actors, partition_tiles=args.partition_tiles)
        t0 = time.perf_counter()
        summary = label_tiles_ray(config(f"ray{actors}"), options)
        rows.append(_row(f"--ray, {actors} actor(s)", summary, time.perf_counter() - t0, args.tiles))
    ray.shutdown()
    base = rows[0]["loop_tiles_s"]
    for row in rows:
        row["loop_vs_single"] = round(row["loop_tiles_s"] / base, 2)
    result = new_result(
        "ray",
        "Labeling tiles/s: single process vs --ray (local Ray, 1 and 2 actors)",
        rows=rows,
        tiles=args.tiles,
        size=args.size,
        partition_tiles=args.partition_tiles,
        ray_start_s=round(ray_start, 2),
        model=str(args.model or "tests' tiny bundle (colour-mean image graph)"),
    )
    columns = [
        ("path", "path"),
        ("loop_tiles_s", "loop tiles/s"),
        ("loop_vs_single", "loop vs single"),
        ("call_tiles_s", "whole call tiles/s"),
        ("startup_s", "start-up s"),
        ("decode", "decode"),
    ]
    body = markdown_table(rows, columns) + f"\n\nRay start (ray.init, once): {ray_start:.1f} s\n"
    json_path, md_path = write_result(result, body, args.out, "ray")
    print(md_path.read_text(), end="")


def _row(path: str, summary, seconds: float, tiles: int) -> dict:  # pipeline.Summary
    labeled = summary.labeled + summary.skipped
    assert labeled == tiles, f"{path}: {labeled} of {tiles} tiles"
    return {
        "path": path,
        "loop_tiles_s": round(tiles / summary.loop_seconds, 1),
        "call_tiles_s": round(tiles / seconds, 1),
        "startup_s": round(summary.startup_seconds, 2),
        "backend": summary.backend,
        "decode": summary.decode,
    }


if __name__ == "__main__":
    main()
