"""End-to-end tiles/s from files on disk, next to the encoder-only and decode-only figures.

Stages are timed one by one on one thread (decode, resize, normalise, copy into the batch, engine,
scoring), which says where the time goes; then the whole loop runs as rsz-infer runs it
(rsz_infer.batching.iter_batches: decoding in a thread pool while the engine works), and, for a bundle with
a class file, `rsz_infer.pipeline.label_tiles` itself (which adds the class embeddings and the output
files). The loop and label_tiles decode and preprocess as `--decoder` / `--preprocess` choose (rsz-infer's
options; the per-stage times are always Pillow's); a batched decoder (nvImageCodec) is also timed alone.
With the native library built (cpp_plugins), resize+normalise is also timed through it.
No torch import: this runs on an edge device with only the inference side installed.
"""

from __future__ import annotations

import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from rsz_bench.checks import at_least, ort_device
from rsz_infer.backend import ort_runner_on
from rsz_infer.batching import printable_name
from rsz_infer.errors import RszError, first_line
from rsz_infer.images import TileError, TileOptions, decode_tile, discover_tiles
from rsz_infer.preprocess import PreprocessSpec, normalize, resize_rgb
from rsz_infer.scoring import calibrated_stacking, class_logits, softmax, top_k


@dataclass
class E2EConfig:
    batch: int = 32
    backend: str = "auto"  # bundles: rsz_infer.backend.open_runner; ref: models always run on ort
    device: str = "auto"
    workers: int = 0  # decode threads of the pipeline loop (0: rsz-infer's default)
    decoder: str = "auto"  # rsz-infer --decoder: auto | pillow | pillow-draft | nvimgcodec
    preprocess: str = "auto"  # rsz-infer --preprocess: auto | pillow | native
    precision: str = "auto"  # bundles: rsz-infer --precision auto | int8 | fp16 | fp32
    engine_iters: int = 10
    num_random_classes: int = 50  # scoring cost without a class file


def _open_engine(spec: str, cfg: E2EConfig, tmp: Path) -> tuple[Any, PreprocessSpec, dict]:
    """(runner, preprocess spec, info) for a bundle folder or a ref: model (exported to ONNX)."""
    if spec.startswith("ref:"):
        from rsz_bench.reference import build_reference, export_reference_onnx
        from rsz_infer.runners.ort import OrtRunner

        ref = build_reference(spec)
        device = "cpu" if cfg.device == "auto" else ort_device(cfg.device)  # cuda: a GPU or an error
        runner = ort_runner_on(OrtRunner(export_reference_onnx(ref, tmp), device=device), device)
        return runner, PreprocessSpec(size=ref.image_size), {"scoring_rule": "cosine", "logit_scale": 16.0}
    from rsz_infer.backend import open_runner
    from rsz_infer.bundle import open_bundle

    manifest = open_bundle(spec)
    runner = open_runner(spec, manifest, "image", cfg.backend, cfg.device, precision=cfg.precision)
    info = {"scoring_rule": manifest.scoring_rule, "logit_scale": manifest.logit_scale, "manifest": manifest}
    return runner, manifest.preprocess, info


def _per_tile(seconds: float, n: int) -> dict:
    return {"ms_per_tile": 1e3 * seconds / max(n, 1), "tiles_per_s": n / seconds if seconds > 0 else None}


def run_e2e(inputs: list[str], spec: str, cfg: E2EConfig, classes: Path | None = None) -> dict:
    at_least(cfg.batch, 1, "--batch")
    at_least(cfg.workers, 0, "--workers", "0: rsz-infer's default")  # a thread pool of -1 is a traceback
    options = TileOptions()
    tiles = list(discover_tiles(inputs, options))
    if not tiles:
        raise RszError(f"{', '.join(inputs)}: no JPEG, PNG or TIFF files found")
    with tempfile.TemporaryDirectory(prefix="rsz-e2e-") as tmp:
        runner, prep, info = _open_engine(spec, cfg, Path(tmp))
        try:
            from rsz_infer.batching import open_decoding

            decoder, preprocessor = open_decoding(cfg.decoder, cfg.preprocess, prep, cfg.device)
            stages, rgbs = _stage_times(tiles, options, prep, runner, cfg, info, inputs)
            decoder_only = _decoder_stage(tiles, options, decoder, cfg.batch)
            loop = _pipeline_loop(tiles, options, prep, runner, cfg, info, decoder, preprocessor)
        finally:
            runner.close()
        full = None
        if classes is not None and not spec.startswith("ref:"):
            full = _label_tiles(inputs, spec, classes, cfg, Path(tmp))
        native = _native_stage(rgbs, prep)
    n = len(rgbs)
    serial = sum(s["seconds"] for s in stages.values())
    for s in stages.values():
        s.update(_per_tile(s["seconds"], n), share=s["seconds"] / serial if serial else None)
    decode_rate = decoder_only if decoder_only is not None else stages["decode"]["tiles_per_s"]
    return {
        "model": spec,
        "engine": f"{runner.name} {runner.precision}",
        "image_size": prep.size,
        "tiles": len(tiles),
        "decoded": n,
        "batch": cfg.batch,
        "decoder": decoder.name,
        "preprocess": preprocessor.name if preprocessor else "pillow",
        "stages": stages,
        "native_preprocess": native,
        "figures": {
            "decode_only_tiles_per_s": stages["decode"]["tiles_per_s"],
            "decoder_only_tiles_per_s": decoder_only,
            "encoder_only_tiles_per_s": stages["engine"]["tiles_per_s"],
            "serial_sum_tiles_per_s": n / serial if serial else None,
            "pipeline_loop_tiles_per_s": loop,
            "label_tiles_tiles_per_s": full,
            # the measure: the loop against its slower part run alone
            "loop_of_slower_stage": loop / min(decode_rate, stages["engine"]["tiles_per_s"]),
        },
    }


def _stage_times(tiles, options, prep, runner, cfg, info, inputs) -> tuple[dict, list[np.ndarray]]:
    """Each stage over all tiles on one thread; the engine on full batches (timed apart, warm)."""
    t = {k: 0.0 for k in ("decode", "resize", "normalize", "copy", "engine", "scoring")}
    rgbs, arrays = [], []
    first_error = None  # said when no tile decodes: which inputs, and why the first one failed
    for tile in tiles:
        t0 = time.perf_counter()
        try:
            rgb, _rule = decode_tile(tile, options)
        except TileError as err:
            first_error = first_error or f"{printable_name(tile.id)}: {first_line(err)}"
            continue  # a bad tile is skipped, as rsz-infer does
        t1 = time.perf_counter()
        small = resize_rgb(rgb, prep.size, prep.resize)
        t2 = time.perf_counter()
        arrays.append(normalize(small, prep))
        t3 = time.perf_counter()
        t["decode"] += t1 - t0
        t["resize"] += t2 - t1
        t["normalize"] += t3 - t2
        rgbs.append(rgb)
    if not rgbs:
        names = ", ".join(printable_name(str(i)) for i in inputs)
        raise RszError(f"{names}: none of the {len(tiles)} tiles could be decoded (first: {first_error})")
    batches = [arrays[i : i + cfg.batch] for i in range(0, len(arrays), cfg.batch)]
    stacked = []
    low = runner.batch_range[0]  # as the loop (batching.embed_batch): the real rows, padded to a minimum only
    for b in batches:
        t0 = time.perf_counter()
        x = np.zeros((max(len(b), low), 3, prep.size, prep.size), np.float32)
        x[: len(b)] = np.stack(b)
        t["copy"] += time.perf_counter() - t0
        stacked.append((x, len(b)))
    runner.infer({"image": stacked[0][0]})  # warm-up: first-run allocations and kernel selection
    embeddings = []
    for x, real in stacked:
        t0 = time.perf_counter()
        embeddings.append(runner.infer({"image": x})["embedding"][:real])
        t["engine"] += time.perf_counter() - t0
    emb = np.concatenate(embeddings)
    class_emb = (
        np.random.default_rng(0).standard_normal((cfg.num_random_classes, emb.shape[1])).astype(np.float32)
    )
    seen = np.arange(cfg.num_random_classes) % 2 == 0
    t0 = time.perf_counter()
    for i in range(0, len(emb), cfg.batch):
        logits = class_logits(emb[i : i + cfg.batch], class_emb, info["scoring_rule"], info["logit_scale"])
        top_k(softmax(calibrated_stacking(logits, seen, 0.0)), 5)
    t["scoring"] = time.perf_counter() - t0
    return {k: {"seconds": v} for k, v in t.items()}, rgbs


def _decoder_stage(tiles, options, decoder, batch: int) -> float | None:
    """The chosen decoder alone over all tiles, as the loop calls it (nvImageCodec: a batch per call,
    pillow-draft: a tile per call); None for plain Pillow (the decode stage is that figure)."""
    if decoder.name == "pillow":
        return None
    step = batch if decoder.batched else 1
    decoder.decode(tiles[:step], options)  # warm-up (GPU context, buffers)
    t0 = time.perf_counter()
    for i in range(0, len(tiles), step):
        decoder.decode(tiles[i : i + step], options)
    return len(tiles) / (time.perf_counter() - t0)


def _pipeline_loop(tiles, options, prep, runner, cfg, info, decoder, native) -> float:
    """rsz-infer's batching loop (threaded decode + preprocess) feeding the engine and the scoring."""
    from rsz_infer.batching import embed_batch, iter_batches

    rng = np.random.default_rng(0)
    class_emb = None
    done = 0
    t0 = time.perf_counter()
    for batch in iter_batches(tiles, options, prep, cfg.batch, cfg.workers, decoder, native):
        if not batch.tiles:
            continue
        emb = embed_batch(runner, batch)["embedding"]
        if class_emb is None:
            class_emb = rng.standard_normal((cfg.num_random_classes, emb.shape[1])).astype(np.float32)
        logits = class_logits(emb, class_emb, info["scoring_rule"], info["logit_scale"])
        top_k(softmax(logits), 5)
        done += len(batch.tiles)
    return done / (time.perf_counter() - t0)


def _label_tiles(inputs, bundle, classes, cfg, tmp: Path) -> float:
    """rsz_infer.pipeline.label_tiles end to end (class embeddings and output files included)."""
    from rsz_infer.pipeline import LabelConfig, label_tiles

    summary = label_tiles(
        LabelConfig(
            inputs=list(inputs),
            classes=Path(classes),
            out=tmp / "labels.csv",
            model=Path(bundle),
            backend=cfg.backend,
            precision=cfg.precision,
            device=cfg.device,
            batch=cfg.batch,
            workers=cfg.workers,
            decoder=cfg.decoder,
            preprocess=cfg.preprocess,
            progress=False,
        )
    )
    return summary.labeled / summary.seconds if summary.seconds > 0 else 0.0


def _native_stage(rgbs: list[np.ndarray], prep: PreprocessSpec) -> dict | None:
    """resize+normalise through cpp_plugins (when built), against the Pillow+numpy path."""
    from rsz_infer.native import NativePreprocessor, library_path

    if library_path() is None:
        return None
    try:
        native = NativePreprocessor(prep)
    except RszError:  # a library that cannot be used (stale, truncated): as --preprocess auto, no native row
        return None
    native(rgbs[:2])  # warm-up (CUDA context, buffers)
    t0 = time.perf_counter()
    out = native(rgbs)
    seconds = time.perf_counter() - t0
    return {
        "device": native.device,
        "seconds": seconds,
        **_per_tile(seconds, len(rgbs)),
        "shape": list(out.shape),
    }


E2E_COLUMNS = [
    ("stage", "stage"),
    ("ms_per_tile", "ms/tile"),
    ("tiles_per_s", "tiles/s"),
    ("share", "share of serial time"),
]


def e2e_markdown(result: dict) -> str:
    from rsz_bench.report import markdown_table

    rows = [{"stage": k, **v} for k, v in result["stages"].items()]
    nat = result["native_preprocess"]
    if nat:
        rows.append({"stage": f"resize+normalize, native ({nat['device']})", **nat})
    f = result["figures"]

    def rate(v: float | None) -> str:
        return "-" if v is None else f"{v:.1f}"

    lines = [
        f"Model `{result['model']}` ({result['engine']}), "
        f"{result['decoded']}/{result['tiles']} tiles decoded, "
        f"batch {result['batch']}, {result['image_size']} px; "
        f"decode {result['decoder']}, preprocess {result['preprocess']} (loop and label_tiles).",
        "",
        "| figure | tiles/s |",
        "|---|---|",
        f"| decode only (Pillow, one thread) | {rate(f['decode_only_tiles_per_s'])} |",
        *(
            [
                f"| decode only ({result['decoder']}, as the loop calls it) "
                f"| {rate(f['decoder_only_tiles_per_s'])} |"
            ]
            if f["decoder_only_tiles_per_s"] is not None
            else []
        ),
        f"| encoder only | {rate(f['encoder_only_tiles_per_s'])} |",
        f"| all stages one after another, one thread | {rate(f['serial_sum_tiles_per_s'])} |",
        f"| rsz-infer batching loop (threaded decode) | {rate(f['pipeline_loop_tiles_per_s'])} |",
        f"| rsz-infer label_tiles (with class embeddings, outputs) | {rate(f['label_tiles_tiles_per_s'])} |",
        "",
        f"Batching loop / the slower of decode only and encoder only: {f['loop_of_slower_stage']:.0%}.",
        "",
        markdown_table(rows, E2E_COLUMNS),
    ]
    return "\n".join(lines) + "\n"
