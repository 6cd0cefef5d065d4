"""CLIP graphs of a bundle through ONNX Runtime (FP32) against open_clip eager, on this CPU, in one run.

A random-weight open_clip checkpoint of `--arch` (speed does not depend on the weights) is written to disk,
bundled by `rsz-export clip` (FP32 graphs, no engines), and both the `image` and `text` graphs are timed
against open_clip's own encode_image / encode_text on the same inputs, batch 1 and 32, same thread count.
    python benchmarks/clip_speed.py --arch ViT-B-32 --batch 1,32 --threads 1 --out results/clip
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # this checkout first

from rsz_bench.report import markdown_table, new_result, write_result  # noqa: E402


def _median_ms(fn, reps: int) -> float:
    fn()  # warm-up (allocations, ORT's first-run kernels)
    times = []
    for _ in range(reps):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return float(np.median(times) * 1e3)


def measure(arch: str, batches: list[int], threads: int, reps: int) -> tuple[list[dict], dict]:
    import torch
    from safetensors.torch import save_file

    from rsz_export.clip import export_clip
    from rsz_infer.runners.ort import OrtRunner
    from rsz_infer.tokenizer import Tokenizer
    from rsz_train.models.clip import import_open_clip

    torch.set_num_threads(threads)
    open_clip = import_open_clip()
    net = open_clip.create_model(arch, pretrained=None).eval()
    rows = []
    with tempfile.TemporaryDirectory(prefix="rsz-clip-bench-") as tmp:
        checkpoint = Path(tmp) / f"{arch}.safetensors"
        save_file({k: v.contiguous() for k, v in net.state_dict().items()}, str(checkpoint))
        started = time.perf_counter()
        bundle, model = export_clip(checkpoint, Path(tmp) / "bundle", arch=arch, engine="none")
        export_s = time.perf_counter() - started
        size = model.preprocess.size
        tokenizer = Tokenizer(bundle / "tokenizer.json", model.context_length)
        image_ort = OrtRunner(bundle / "image.onnx", threads=threads)
        text_ort = OrtRunner(bundle / "text.onnx", threads=threads)
        rng = np.random.default_rng(0)
        for batch in batches:
            images = rng.standard_normal((batch, 3, size, size)).astype(np.float32)
            texts = [f"a satellite photo of {n} storage tanks beside a harbour." for n in range(batch)]
            feeds = tokenizer.encode(texts)
            ids = open_clip.tokenize(texts)
            image_t = torch.from_numpy(images)
            with torch.no_grad():
                eager = {
                    "image": _median_ms(lambda x=image_t: net.encode_image(x), reps),
                    "text": _median_ms(lambda t=ids: net.encode_text(t), reps),
                }
            onnx = {
                "image": _median_ms(lambda x=images: image_ort.infer({"image": x}), reps),
                "text": _median_ms(lambda f=feeds: text_ort.infer(f), reps),
            }
            for graph in ("image", "text"):
                rows.append(
                    {
                        "graph": graph,
                        "batch": batch,
                        "ort_ms": round(onnx[graph], 2),
                        "eager_ms": round(eager[graph], 2),
                        "ort_per_s": round(batch / onnx[graph] * 1e3, 1),
                        "speedup": round(eager[graph] / onnx[graph], 2),
                    }
                )
        image_ort.close()
        text_ort.close()
    versions = {"torch": torch.__version__, "open_clip": open_clip.__version__}
    return rows, {"arch": arch, "threads": threads, "reps": reps, "export_s": round(export_s, 1), **versions}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--arch", default="ViT-B-32", help="open_clip architecture (random weights)")
    parser.add_argument("--batch", default="1,32", help="comma-separated batch sizes")
    parser.add_argument("--threads", type=int, default=1, help="threads of ONNX Runtime and of PyTorch alike")
    parser.add_argument("--reps", type=int, default=5, help="timed repetitions per cell (median)")
    parser.add_argument("--out", type=Path, default=Path("results/clip"))
    args = parser.parse_args()
    rows, settings = measure(args.arch, [int(b) for b in args.batch.split(",")], args.threads, args.reps)
    result = new_result("clip", f"CLIP {args.arch} graphs: ONNX Runtime FP32 vs open_clip eager", rows=rows)
    result.update(settings)
    columns = [
        ("graph", "graph"),
        ("batch", "batch"),
        ("ort_ms", "ORT FP32 ms"),
        ("eager_ms", "open_clip eager ms"),
        ("ort_per_s", "ORT items/s"),
        ("speedup", "eager / ORT"),
    ]
    _, md_path = write_result(result, markdown_table(rows, columns), args.out, "clip")
    print(md_path.read_text(), end="")


if __name__ == "__main__":
    main()
