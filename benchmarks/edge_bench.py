"""rsz-bench from a checkout on an edge GPU (e.g. Jetson with TensorRT from JetPack), nothing installed but
the inference side (numpy, pillow, onnxruntime and/or tensorrt, click):

    python benchmarks/edge_bench.py latency --model models/NAME --backend trt,ort --precision fp16
    python benchmarks/edge_bench.py e2e tiles/ --model models/NAME --backend trt
    python benchmarks/native_speed.py   # after: make -C cpp_plugins cuda CUDA_ARCHS=87

GPU decoding on a Jetson: `pip install nvidia-nvimgcodec-tegra-cu13` (or -cu12 for JetPack 6), then
`--decoder nvimgcodec` (not run on a Jetson yet).

The same code as `rsz-bench`; torch is imported only by ref: models and the torch backends.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from rsz_bench.cli import main  # noqa: E402

if __name__ == "__main__":
    main()
