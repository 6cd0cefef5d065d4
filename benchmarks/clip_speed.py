"""CLIP graphs of a bundle through ONNX Runtime (FP32, INT8) against open_clip eager, on this CPU, in one run.

A random-weight open_clip checkpoint of `--arch` (speed does not depend on the weights) is written to disk and
bundled by `rsz-export clip --int8 --calibration DIR` (FP32 graphs, rsz's own INT8 step for the image graph,
no engines). DIR holds `--int8-tiles` procedural aerial tiles from rsz_train's synthetic renderer, drawn at
the model's input size (real-looking tiles: calibration ranges from random noise would not be the ones users
get). The text graph stays FP32 by design (rsz_export.int8 quantizes image graphs only). Then, per batch size,
open_clip's own encode_image / encode_text, the FP32 `image` and `text` graphs and the INT8 `image` graph run
on the same inputs, interleaved (each timed round calls every contender once, in turn), same thread count.
    python benchmarks/clip_speed.py --arch ViT-B-32 --batch 1,32 --threads 1 --out results/clip
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # this checkout first

from rsz_bench.report import markdown_table, new_result, write_result  # noqa: E402


def interleaved_median_ms(contenders: dict[str, Callable[[], object]], reps: int) -> dict[str, float]:
    """Median ms per contender; each round runs every contender once, so load changes hit them all alike."""
    for fn in contenders.values():
        fn()  # warm-up (allocations, ORT's first-run kernels)
    times: dict[str, list[float]] = {name: [] for name in contenders}
    for _ in range(reps):
        for name, fn in contenders.items():
            start = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - start)
    return {name: float(np.median(t) * 1e3) for name, t in times.items()}


def write_calibration_tiles(folder: Path, count: int, size: int, seed: int = 0) -> Path:
    """`count` PNG tiles of rsz_train's procedural aerial scenes, every class in turn, drawn at `size` px."""
    from PIL import Image

    from rsz_train.data.synth import CLASS_NAMES
    from rsz_train.data.synth.rendering import render_tile

    folder.mkdir(parents=True, exist_ok=True)
    for i in range(count):
        name = CLASS_NAMES[i % len(CLASS_NAMES)]
        pixels, _ = render_tile(name, seed, i // len(CLASS_NAMES), size=size)
        Image.fromarray(pixels).save(folder / f"{i:04d}_{name}.png")
    return folder


def _ratio(a: float | None, b: float | None) -> float | None:
    return round(a / b, 2) if a and b else None


def measure(
    arch: str, batches: list[int], threads: int, reps: int, int8_tiles: int = 96
) -> tuple[list[dict], dict]:
    """Rows per (graph, batch) and the run's settings, including what rsz's INT8 step chose (`int8`).
    int8_tiles = 0: no INT8 export (FP32 against eager only)."""
    import torch
    from safetensors.torch import save_file

    from rsz_export.clip import export_clip
    from rsz_infer.runners.ort import OrtRunner
    from rsz_infer.tokenizer import Tokenizer
    from rsz_train.models.clip import import_open_clip

    torch.set_num_threads(threads)
    open_clip = import_open_clip()
    net = open_clip.create_model(arch, pretrained=None).eval()
    size = int(
        net.visual.image_size[0] if isinstance(net.visual.image_size, tuple) else net.visual.image_size
    )
    rows = []
    with tempfile.TemporaryDirectory(prefix="rsz-clip-bench-") as tmp:
        checkpoint = Path(tmp) / f"{arch}.safetensors"
        save_file({k: v.contiguous() for k, v in net.state_dict().items()}, str(checkpoint))
        calibration = write_calibration_tiles(Path(tmp) / "tiles", int8_tiles, size) if int8_tiles else None
        started = time.perf_counter()
        bundle, model = export_clip(
            checkpoint,
            Path(tmp) / "bundle",
            arch=arch,
            engine="none",
            int8=bool(int8_tiles),
            calibration=calibration,
        )
        export_s = time.perf_counter() - started
        extra = json.loads((bundle / "manifest.json").read_text())["extra"]
        int8 = _int8_summary(extra, int8_tiles)
        tokenizer = Tokenizer(bundle / "tokenizer.json", model.context_length)
        image_ort = OrtRunner(bundle / "image.onnx", threads=threads)
        text_ort = OrtRunner(bundle / "text.onnx", threads=threads)
        int8_name = extra.get("variants", {}).get("image", {}).get("int8")
        image_int8 = OrtRunner(bundle / int8_name, threads=threads) if int8_name else None
        rng = np.random.default_rng(0)
        for batch in batches:
            images = rng.standard_normal((batch, 3, size, size)).astype(np.float32)
            image_t = torch.from_numpy(images)
            texts = [f"a satellite photo of {n} storage tanks beside a harbour." for n in range(batch)]
            feeds, ids = tokenizer.encode(texts), open_clip.tokenize(texts)
            contenders = {
                "image eager": lambda x=image_t: net.encode_image(x),
                "image fp32": lambda x=images: image_ort.infer({"image": x}),
                "text eager": lambda t=ids: net.encode_text(t),
                "text fp32": lambda f=feeds: text_ort.infer(f),
            }
            if image_int8 is not None:
                contenders["image int8"] = lambda x=images: image_int8.infer({"image": x})
            with torch.no_grad():
                ms = interleaved_median_ms(contenders, reps)
            for graph in ("image", "text"):
                eager, fp32, q8 = ms[f"{graph} eager"], ms[f"{graph} fp32"], ms.get(f"{graph} int8")
                rows.append(
                    {
                        "graph": graph,
                        "batch": batch,
                        "eager_ms": round(eager, 1),
                        "ort_ms": round(fp32, 1),
                        "int8_ms": round(q8, 1) if q8 else "- (FP32 by design)" if graph == "text" else "-",
                        "ort_per_s": round(batch / fp32 * 1e3, 2),
                        "int8_per_s": round(batch / q8 * 1e3, 2) if q8 else "-",
                        "speedup": _ratio(eager, fp32),
                        "int8_vs_eager": _ratio(eager, q8) or "-",
                        "int8_vs_fp32": _ratio(fp32, q8) or "-",
                    }
                )
        for runner in (image_ort, text_ort, image_int8):
            if runner is not None:
                runner.close()
    versions = {"torch": torch.__version__, "open_clip": open_clip.__version__}
    settings = {"arch": arch, "threads": threads, "reps": reps, "export_s": round(export_s, 1), "int8": int8}
    return rows, settings | versions


def _int8_summary(extra: dict, int8_tiles: int) -> dict:
    """What rsz's INT8 step chose for the image graph and every candidate's measured cosine."""
    if not int8_tiles:
        return {"requested": False}
    record = extra.get("int8", {}).get("image", {})
    return {
        "requested": True,
        "calibration": f"{int8_tiles} procedural tiles (rsz_train synth renderer)",
        "chosen": record.get("method"),
        "note": record.get("note", ""),
        "bound": record.get("bound", {}),
        "calibration_record": record.get("calibration", {}),
        "candidates": [
            {k: c[k] for k in ("method", "min_cosine", "label_changes", "ms_per_batch", "passed", "reason")}
            for c in record.get("candidates", [])
        ],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--arch", default="ViT-B-32", help="open_clip architecture (random weights)")
    parser.add_argument("--batch", default="1,32", help="comma-separated batch sizes")
    parser.add_argument("--threads", type=int, default=1, help="threads of ONNX Runtime and of PyTorch alike")
    parser.add_argument("--reps", type=int, default=5, help="timed rounds per batch size (median)")
    parser.add_argument(
        "--int8-tiles",
        type=int,
        default=96,
        help="procedural tiles to calibrate and check INT8 on (0: no INT8)",
    )
    parser.add_argument("--out", type=Path, default=Path("results/clip"))
    args = parser.parse_args()
    batches = [int(b) for b in args.batch.split(",")]
    rows, settings = measure(args.arch, batches, args.threads, args.reps, args.int8_tiles)
    result = new_result(
        "clip", f"CLIP {args.arch} graphs: ONNX Runtime FP32/INT8 vs open_clip eager", rows=rows
    )
    result.update(settings)
    columns = [
        ("graph", "graph"),
        ("batch", "batch"),
        ("eager_ms", "open_clip eager ms"),
        ("ort_ms", "ORT FP32 ms"),
        ("int8_ms", "ORT INT8 ms"),
        ("ort_per_s", "FP32 items/s"),
        ("int8_per_s", "INT8 items/s"),
        ("speedup", "eager / FP32"),
        ("int8_vs_eager", "eager / INT8"),
        ("int8_vs_fp32", "FP32 / INT8"),
    ]
    table = markdown_table(rows, columns)
    int8 = settings["int8"]
    if int8["requested"]:
        tried = ", ".join(
            f"{c['method']} {c['min_cosine']:.5f}{' ok' if c['passed'] else ''}" for c in int8["candidates"]
        )
        chosen = int8["chosen"] or f"none ({int8['note']})"
        table += f"\nINT8 image graph chosen by rsz: {chosen}; candidates (min cosine): {tried}\n"
    _, md_path = write_result(result, table, args.out, "clip")
    print(md_path.read_text(), end="")


if __name__ == "__main__":
    main()
