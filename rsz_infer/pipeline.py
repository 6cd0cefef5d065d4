"""The labeling pipeline: decode in a thread pool while the engine runs, fixed-shape batches, crash-safe log.

Pillow, GDAL and nvImageCodec release the GIL while decoding and resizing, so worker threads keep the engine
fed without the cost of processes. Two choices (rsz_infer.decoders, rsz_infer.native): the decoder takes one
tile per pool task (Pillow) or a batch of files per task (nvImageCodec); preprocessing is Pillow's
to_model_input per tile in the pool, or one native call per batch writing the batch's input array.
Batches always have the configured shape (the last one is padded and the padding dropped), which is what
TensorRT engines with a fixed profile and CUDA graphs want.
"""

from __future__ import annotations

import hashlib
import os
import sys
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from rsz_infer.backend import open_runner, resolve_device
from rsz_infer.bundle import MANIFEST, Manifest, load_manifest
from rsz_infer.classes import class_embeddings
from rsz_infer.classfile import class_file_hash, read_class_file
from rsz_infer.decoders import NvImageCodecDecoder, PillowDecoder, open_decoder
from rsz_infer.errors import RszError
from rsz_infer.images import NodataTile, Tile, TileError, TileOptions, discover_tiles
from rsz_infer.native import NativePreprocessor, open_preprocessor
from rsz_infer.outputs import RunLog, output_format, part_path, write_outputs
from rsz_infer.preprocess import PreprocessSpec, to_model_input
from rsz_infer.runners.base import Runner
from rsz_infer.scoring import calibrated_stacking, class_logits, softmax, top_k

DEFAULT_MODEL = Path("models/default")


def open_bundle(model: Path | str) -> Manifest:
    model = Path(model)
    if not model.exists():
        hint = " (the README demo writes it)" if model == DEFAULT_MODEL else ""
        raise RszError(f"{model}: no model bundle here{hint}; pass --model models/NAME")
    return load_manifest(model)


# ---------------------------------------------------------------- decoding pool and batches


@dataclass
class Batch:
    tiles: list[Tile]  # the real tiles, in order
    rules: list[str]
    inputs: np.ndarray  # [batch_size, 3, S, S]; rows past len(tiles) are padding
    skipped: list[tuple[Tile, TileError]] = field(default_factory=list)  # finished since the last batch


def _prepare(
    tiles: list[Tile],
    options: TileOptions,
    spec: PreprocessSpec,
    decoder: PillowDecoder | NvImageCodecDecoder,
    native: bool,
) -> list[tuple[np.ndarray, str] | TileError]:
    """Decode a chunk of tiles; then Pillow preprocessing here, or the RGB as is for the native batch call."""
    decoded = decoder.decode(tiles, options)
    if native:
        return decoded
    return [r if isinstance(r, TileError) else (to_model_input(r[0], spec), r[1]) for r in decoded]


def _chunks(items: Iterable, size: int) -> Iterator[list]:
    chunk: list = []
    for item in items:
        chunk.append(item)
        if len(chunk) == size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


def prefetch_map(fn: Callable, items: Iterable, pool: ThreadPoolExecutor, depth: int) -> Iterator:
    """fn over items in the pool, results in input order, at most `depth` in flight."""
    pending: deque = deque()
    for item in items:
        pending.append((item, pool.submit(fn, item)))
        if len(pending) >= depth:
            first, future = pending.popleft()
            yield first, future.result()
    while pending:
        first, future = pending.popleft()
        yield first, future.result()


def iter_batches(
    tiles: Iterable[Tile],
    options: TileOptions,
    spec: PreprocessSpec,
    batch_size: int,
    workers: int,
    decoder: PillowDecoder | NvImageCodecDecoder | None = None,
    native: NativePreprocessor | None = None,
) -> Iterator[Batch]:
    """Decoded, preprocessed tiles in fixed-shape batches; bad tiles ride along in `skipped`.

    decoder: Pillow when None; native: preprocess each batch with it, else Pillow per tile in the pool.
    """
    # Leave one core to the engine thread: on a 2-core machine a second decode thread slows the engine more
    # than it speeds decoding (measured: 891 vs 692 tiles/s through the batching loop).
    workers = workers or min(8, max(1, (os.cpu_count() or 1) - 1))
    decoder = decoder or PillowDecoder()
    chunk = batch_size if decoder.batched else 1
    shape = (batch_size, 3, spec.size, spec.size)
    rgbs: list[np.ndarray] = []  # the native path's decoded tiles of the batch being filled

    def finished(batch: Batch) -> Batch:
        if native is not None and rgbs:
            native(rgbs, out=batch.inputs[: len(rgbs)])
            rgbs.clear()
        return batch

    with ThreadPoolExecutor(workers, thread_name_prefix="rsz-decode") as pool:
        try:
            batch = Batch([], [], np.zeros(shape, np.float32))
            results = prefetch_map(
                lambda c: _prepare(c, options, spec, decoder, native is not None),
                _chunks(tiles, chunk),
                pool,
                depth=max(2, 2 * batch_size // chunk),
            )
            for tiles_done, chunk_results in results:
                for tile, result in zip(tiles_done, chunk_results):
                    if isinstance(result, TileError):
                        batch.skipped.append((tile, result))
                        continue
                    if native is not None:
                        rgbs.append(result[0])
                    else:
                        batch.inputs[len(batch.tiles)] = result[0]
                    batch.tiles.append(tile)
                    batch.rules.append(result[1])
                    if len(batch.tiles) == batch_size:
                        yield finished(batch)
                        batch = Batch([], [], np.zeros(shape, np.float32))
            if batch.tiles or batch.skipped:
                yield finished(batch)
        finally:
            pool.shutdown(wait=True, cancel_futures=True)


def open_decoding(
    decoder: str, preprocess: str, spec: PreprocessSpec, device: str, notes: list[str] | None = None
) -> tuple[PillowDecoder | NvImageCodecDecoder, NativePreprocessor | None]:
    """The `--decoder` and `--preprocess` choices for the engine's device (auto | cuda | cpu)."""
    device = resolve_device(device)
    return open_decoder(decoder, device, notes), open_preprocessor(preprocess, spec, device, notes)


def embed_batch(runner: Runner, batch: Batch) -> dict[str, np.ndarray]:
    """Image graph outputs for the real tiles of the batch (padding rows dropped)."""
    out = runner.infer({"image": batch.inputs})
    return {name: value[: len(batch.tiles)] for name, value in out.items()}


# ---------------------------------------------------------------- labeling


@dataclass
class LabelConfig:
    inputs: list[str]
    classes: Path
    out: Path = Path("labels.csv")
    model: Path = DEFAULT_MODEL
    backend: str = "auto"
    device: str = "auto"
    batch: int = 32
    top_k: int = 5
    seen_calibration: float | None = None  # None: the bundle's value, chosen on validation data
    resume: bool = False
    tiles: TileOptions = field(default_factory=TileOptions)
    class_map: Path | None = None
    workers: int = 0  # decode threads; 0: one per core but one, at most 8
    decoder: str = "auto"  # JPEG/PNG decoding: auto | pillow | nvimgcodec (rsz_infer.decoders)
    preprocess: str = "auto"  # resize + normalise: auto | pillow | native (rsz_infer.native)
    progress: bool = True


@dataclass
class Summary:
    labeled: int  # in this run
    skipped: int  # bad tiles in this run
    nodata: int  # empty scene windows in this run
    already_done: int  # finished by an earlier run (--resume)
    seconds: float
    backend: str
    total_errors: int = 0  # skipped tiles in the whole output (errors.csv rows)
    notes: list[str] = field(default_factory=list)
    decoder: str = "pillow"
    preprocess: str = "pillow"

    @property
    def exit_code(self) -> int:
        return 3 if self.total_errors else 0

    def line(self, out: Path) -> str:
        rate = self.labeled / self.seconds if self.seconds > 0 else 0.0
        parts = [f"{self.labeled} tiles labeled", f"{self.skipped} skipped"]
        if self.nodata:
            parts.append(f"{self.nodata} nodata")
        if self.already_done:
            parts.append(f"{self.already_done} done before (resumed)")
        parts += [f"{self.seconds:.1f} s", f"{rate:.1f} tiles/s", f"backend {self.backend}"]
        parts += [f"decode {self.decoder}", f"preprocess {self.preprocess}"]
        return f"rsz-infer: {', '.join(parts)} -> {out}"


def _tile_record(tile: Tile) -> dict:
    return {"tile": tile.id, "path": tile.path, "window": list(tile.window) if tile.window else None}


def _warn(message: str) -> None:
    from tqdm import tqdm

    tqdm.write(message, file=sys.stderr)


@dataclass
class Scorer:
    """The model's scoring rule with calibrated stacking on the classes it was trained on."""

    class_emb: np.ndarray  # [C, D]
    names: list[str]
    seen_mask: np.ndarray  # [C] bool: class names the model saw in training (case-insensitive)
    calibration: float  # lambda subtracted from seen-class logits
    rule: str
    scale: float
    top_k: int

    def records(self, emb: np.ndarray, tiles: list[Tile], rules: list[str]) -> list[dict]:
        if emb.shape[1] != self.class_emb.shape[1]:
            raise RszError(
                f"image embeddings are {emb.shape[1]}-d but class embeddings {self.class_emb.shape[1]}-d "
                "(the bundle's graphs do not belong together)"
            )
        logits = class_logits(emb, self.class_emb, self.rule, self.scale)
        probs = softmax(calibrated_stacking(logits, self.seen_mask, self.calibration))
        idx, scores = top_k(probs, self.top_k)
        return [
            _tile_record(tile)
            | {
                "labels": [self.names[j] for j in idx[i]],
                "scores": [round(float(s), 6) for s in scores[i]],
                "class_index": int(idx[i, 0]),
                "rule": rules[i],
                "footprint": tile.footprint,
            }
            for i, tile in enumerate(tiles)
        ]


def _scorer(cfg: LabelConfig, manifest: Manifest, entries: list) -> Scorer:
    class_emb = class_embeddings(
        cfg.model,
        manifest,
        entries,
        lambda role: open_runner(cfg.model, manifest, role, cfg.backend, cfg.device),
    )
    seen = {n.casefold() for n in manifest.seen_classes}
    lam = manifest.seen_calibration if cfg.seen_calibration is None else cfg.seen_calibration
    return Scorer(
        class_emb=class_emb,
        names=[e.name for e in entries],
        seen_mask=np.array([e.name.casefold() in seen for e in entries]),
        calibration=lam,
        rule=manifest.scoring_rule,
        scale=manifest.logit_scale,
        top_k=cfg.top_k,
    )


def label_tiles(cfg: LabelConfig, on_batch: Callable[[int], None] | None = None) -> Summary:
    """Label every tile of cfg.inputs with the class file; on_batch(n) is called after each logged batch.

    Ctrl-C (KeyboardInterrupt) still writes the output of what finished, then re-raises.
    """
    from tqdm import tqdm

    start = time.perf_counter()
    output_format(cfg.out)
    if cfg.batch < 1 or cfg.top_k < 1:
        raise RszError(f"--batch {cfg.batch} / --top-k {cfg.top_k}: must be at least 1")
    manifest = open_bundle(cfg.model)
    entries = read_class_file(cfg.classes)
    notes: list[str] = []
    decoder, native = open_decoding(cfg.decoder, cfg.preprocess, manifest.preprocess, cfg.device, notes)
    tiles = list(discover_tiles(cfg.inputs, cfg.tiles))
    if not tiles:
        raise RszError(f"{', '.join(map(str, cfg.inputs))}: no JPEG, PNG or TIFF files found")
    scorer = _scorer(cfg, manifest, entries)
    header = {
        "model": hashlib.sha256((Path(cfg.model) / MANIFEST).read_bytes()).hexdigest(),
        "classes": class_file_hash(entries),
        "top_k": cfg.top_k,
        "seen_calibration": scorer.calibration,
        "tiles": [cfg.tiles.tile_size, cfg.tiles.overlap, list(cfg.tiles.bands or [])],
    }
    runner = open_runner(cfg.model, manifest, "image", cfg.backend, cfg.device, notes)
    batch_size = runner.batch_size(cfg.batch)
    if batch_size != cfg.batch:
        low, high = runner.batch_range
        notes.append(
            f"{runner.name}: the image graph takes batches of {low} to {high}; using --batch {batch_size}"
        )
    for note in notes:
        _warn(note)
    try:
        log = RunLog(cfg.out, header, cfg.resume)
    except RszError:
        runner.close()
        raise
    todo = [t for t in tiles if t.id not in log.done]
    summary = Summary(
        0, 0, 0, len(tiles) - len(todo), 0.0, runner.name, notes=notes,
        decoder=decoder.name, preprocess=native.name if native else "pillow",
    )  # fmt: skip
    bar = tqdm(total=len(todo), unit="tile", disable=not cfg.progress, file=sys.stderr, dynamic_ncols=True)
    interrupted = False
    try:
        batches = iter_batches(todo, cfg.tiles, manifest.preprocess, batch_size, cfg.workers, decoder, native)
        for n, batch in enumerate(batches, start=1):
            records = []
            for tile, err in batch.skipped:
                nodata = isinstance(err, NodataTile)
                records.append(_tile_record(tile) | {"skipped": str(err), "nodata": nodata})
                summary.nodata += nodata
                summary.skipped += not nodata
                if not nodata:
                    _warn(f"skipped {tile.id}: {err}")
            if batch.tiles:
                emb = embed_batch(runner, batch)["embedding"]
                records += scorer.records(emb, batch.tiles, batch.rules)
                summary.labeled += len(batch.tiles)
            log.append(records)
            bar.update(len(records))
            if on_batch is not None:
                on_batch(n)
    except KeyboardInterrupt:
        interrupted = True
    finally:
        bar.close()
        runner.close()
        log.close()
    counts = write_outputs(log, cfg.out, cfg.top_k, scorer.names, None if interrupted else cfg.class_map)
    summary.total_errors = counts["errors"]
    summary.seconds = time.perf_counter() - start
    if interrupted:
        print(
            f"interrupted: {counts['labeled']} tiles written to {cfg.out}; "
            f"run again with --resume to finish ({part_path(cfg.out).name} keeps the progress)",
            file=sys.stderr,
        )
        raise KeyboardInterrupt
    part_path(cfg.out).unlink()
    return summary
