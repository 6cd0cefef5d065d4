"""Preprocessing speed: Pillow + numpy (rsz_infer.preprocess) vs the native library, CPU and CUDA paths.

A plain script (no torch), for a workstation or an edge GPU:
    make -C cpp_plugins cuda   # or: make -C cpp_plugins cpu
    python benchmarks/native_speed.py --tiles 256 --tile-size 256 --size 224
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # this checkout first

from rsz_infer.native import NativePreprocessor  # noqa: E402
from rsz_infer.preprocess import PreprocessSpec, to_model_input  # noqa: E402


def best_of(fn, repeats: int) -> float:
    fn()  # warm-up
    return min(_timed(fn) for _ in range(repeats))


def _timed(fn) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tiles", type=int, default=256)
    parser.add_argument("--tile-size", type=int, default=256)
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    spec = PreprocessSpec(size=args.size)
    rng = np.random.default_rng(0)
    tiles = [
        rng.integers(0, 256, (args.tile_size, args.tile_size, 3), dtype=np.uint8) for _ in range(args.tiles)
    ]
    result = {"tiles": args.tiles, "tile_size": args.tile_size, "size": args.size, "tiles_per_s": {}}
    rate = result["tiles_per_s"]
    rate["pillow_numpy_1_thread"] = args.tiles / best_of(lambda: [to_model_input(t, spec) for t in tiles], 2)
    native = NativePreprocessor(spec, device="cpu")
    rate["native_cpu_all_cores"] = args.tiles / best_of(lambda: native(tiles), args.repeats)
    if native.lib.rsz_cuda_available():
        gpu = NativePreprocessor(spec, device="cuda")
        rate["native_cuda_fp32_to_host"] = args.tiles / best_of(lambda: gpu(tiles), args.repeats)
        rate["native_cuda_fp16_to_host"] = args.tiles / best_of(lambda: gpu(tiles, "float16"), args.repeats)
        same = np.array_equal(gpu(tiles[:8]), np.stack([to_model_input(t, spec) for t in tiles[:8]]))
        result["cuda_equals_pillow_first_8"] = bool(same)
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
