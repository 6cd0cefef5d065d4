"""rsz-bench from a checkout on an edge GPU (e.g. Jetson with TensorRT from JetPack), nothing installed but
the inference side (numpy, pillow, onnxruntime and/or tensorrt, click):

    python benchmarks/edge_bench.py latency --model models/NAME --backend trt,ort --precision fp16
    python benchmarks/edge_bench.py e2e tiles/ --model models/NAME --backend trt
    python benchmarks/native_speed.py   # after: make -C cpp_plugins cuda CUDA_ARCHS=87

GPU decoding on a Jetson: `pip install nvidia-nvimgcodec-tegra-cu13` (or -cu12 for JetPack 6), then
`--decoder nvimgcodec` (not run on a Jetson yet).

The same entry as `rsz-bench` and `python -m rsz_bench` (rsz_infer.entry.bench_main); torch is imported only
by ref: models and the torch backends.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path


def checkout_packages() -> None:
    """Where rsz is not installed, this checkout's folders benchmarks/ and export/ become the packages
    rsz_bench and rsz_export (as pyproject's package-dir installs them), and rsz_infer comes from it."""
    root = Path(__file__).resolve().parent.parent
    sys.path.insert(0, str(root))
    for name, folder in (("rsz_bench", "benchmarks"), ("rsz_export", "export")):
        try:
            importlib.import_module(name)
        except ModuleNotFoundError as err:
            if err.name != name:  # a module the package needs is missing: not ours to hide
                raise
            init = root / folder / "__init__.py"
            spec = importlib.util.spec_from_file_location(
                name, init, submodule_search_locations=[init.parent]
            )
            sys.modules[name] = module = importlib.util.module_from_spec(spec)
            spec.loader.exec_module(module)


if __name__ == "__main__":
    checkout_packages()
    from rsz_infer.entry import bench_main

    bench_main()
