"""The one tile-embedding loop that labeling, indexing and the Python API share.

Tiles -> decoding pool -> fixed-shape batches -> the bundle's image graph -> per-batch image embeddings.
Pillow, GDAL and nvImageCodec release the GIL while decoding and resizing, so worker threads keep the engine
fed without the cost of processes. Two choices (rsz_infer.decoders, rsz_infer.native): the decoder takes one
tile per pool task (Pillow) or a batch of files per task (nvImageCodec); preprocessing is Pillow's
to_model_input per tile in the pool, or one native call per batch writing the batch's input array.
A batch's input array holds only its real tiles (at most the configured batch size): a --batch far larger
than the input list must not allocate, or run, rows of padding. Only a graph whose batch range has a minimum
above the rows at hand (a TensorRT profile) gets padding rows, added in embed_batch and dropped again.

    engine = ImageEngine.open(model, manifest, EngineOptions(...))   # decoding + runner + batch size
    for done in embed_tiles(engine, tiles, tile_options):            # EmbeddedBatch per batch
        done.outputs["embedding"], done.tiles, done.skipped
    counts = run_tiles(engine, tiles, tile_options, sink)            # + progress bar, counts, Ctrl-C
"""

from __future__ import annotations

import os
import sys
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, fields
from pathlib import Path

import numpy as np

from rsz_infer.backend import open_runner, resolve_device
from rsz_infer.bundle import Manifest
from rsz_infer.decoders import NvImageCodecDecoder, PillowDecoder, open_decoder
from rsz_infer.errors import RszError
from rsz_infer.images import NodataTile, Tile, TileError, TileOptions, utf8_escaped
from rsz_infer.native import NativePreprocessor, open_preprocessor
from rsz_infer.preprocess import PreprocessSpec, to_model_input
from rsz_infer.runners.base import Runner

Decoder = PillowDecoder | NvImageCodecDecoder
RESIZE_NOTE_FACTOR = 4  # the summaries say when tiles reach the model shrunk or enlarged more than this


SKIPPED_FLUSH = 1024  # skipped tiles held at most before they are passed on in a batch of their own


@dataclass
class Batch:
    tiles: list[Tile]  # the real tiles, in order
    rules: list[str]
    inputs: np.ndarray  # [len(tiles), 3, S, S]: one row per real tile, no padding
    sizes: list[tuple[int, int]] = field(default_factory=list)  # (height, width) of each tile as decoded
    skipped: list[tuple[Tile, TileError]] = field(default_factory=list)  # finished since the last batch


def _prepare(
    tiles: list[Tile],
    options: TileOptions,
    spec: PreprocessSpec,
    decoder: Decoder,
    native: NativePreprocessor | None,
) -> list[tuple[np.ndarray, str, tuple[int, int]] | TileError]:
    """Decode and preprocess a chunk of tiles in a pool thread (Pillow per tile, or one native call).

    Each result: (model input, rule, decoded (height, width)) or the error. The native call runs here, not
    in the engine's thread, so that preprocessing overlaps the engine instead of following it.
    """
    decoded = decoder.decode(tiles, options)
    if native is None:
        return [
            r if isinstance(r, TileError) else (to_model_input(r[0], spec), r[1], r[0].shape[:2])
            for r in decoded
        ]
    good = [r for r in decoded if not isinstance(r, TileError)]
    inputs = iter(native([r[0] for r in good]) if good else ())
    return [r if isinstance(r, TileError) else (next(inputs), r[1], r[0].shape[:2]) for r in decoded]


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


def default_workers() -> int:
    # Leave one core to the engine thread: on a 2-core machine a second decode thread slows the engine more
    # than it speeds decoding (measured: 891 vs 692 tiles/s through the batching loop).
    return min(8, max(1, (os.cpu_count() or 1) - 1))


def iter_batches(
    tiles: Iterable[Tile],
    options: TileOptions,
    spec: PreprocessSpec,
    batch_size: int,
    workers: int,
    decoder: Decoder | None = None,
    native: NativePreprocessor | None = None,
) -> Iterator[Batch]:
    """Decoded, preprocessed tiles in batches of `batch_size` (the last one holds the rest); bad tiles ride
    along in `skipped`.

    decoder: Pillow when None; native: preprocess each batch with it, else Pillow per tile in the pool.
    """
    workers = workers or default_workers()
    decoder = decoder or PillowDecoder()
    chunk = batch_size if decoder.batched else 1
    empty = np.zeros((0, 3, spec.size, spec.size), np.float32)

    def full(batch: Batch, rows: list[np.ndarray]) -> Batch:
        # the array is made when the batch is complete, with exactly its rows: never batch_size rows up front
        batch.inputs = np.stack(rows).astype(np.float32, copy=False) if rows else empty
        return batch

    with ThreadPoolExecutor(workers, thread_name_prefix="rsz-decode") as pool:
        try:
            batch, rows = Batch([], [], empty), []
            results = prefetch_map(
                lambda c: _prepare(c, options, spec, decoder, native),
                _chunks(tiles, chunk),
                pool,
                depth=max(2, 2 * batch_size // chunk),
            )
            for tiles_done, chunk_results in results:
                for tile, result in zip(tiles_done, chunk_results):
                    if isinstance(result, TileError):
                        batch.skipped.append((tile, result))
                        if len(batch.skipped) >= SKIPPED_FLUSH:
                            # a sparse scene has 100,000s of nodata windows between real tiles: hand them
                            # on (logged, counted) instead of holding them until the batch fills
                            yield Batch([], [], empty, skipped=batch.skipped)
                            batch.skipped = []
                        continue
                    rows.append(result[0])
                    batch.tiles.append(tile)
                    batch.rules.append(result[1])
                    batch.sizes.append(result[2])
                    if len(batch.tiles) == batch_size:
                        yield full(batch, rows)
                        batch, rows = Batch([], [], empty), []
            if batch.tiles or batch.skipped:
                yield full(batch, rows)
        finally:
            pool.shutdown(wait=True, cancel_futures=True)


def open_decoding(
    decoder: str, preprocess: str, spec: PreprocessSpec, device: str, notes: list[str] | None = None
) -> tuple[Decoder, NativePreprocessor | None]:
    """The `--decoder` and `--preprocess` choices for the engine's device (auto | cuda | cpu)."""
    device = resolve_device(device)
    return open_decoder(decoder, device, notes, spec.size), open_preprocessor(preprocess, spec, device, notes)


def embed_batch(runner: Runner, batch: Batch) -> dict[str, np.ndarray]:
    """Image graph outputs for the real tiles of the batch. A graph with a minimum batch (a TensorRT
    profile's) gets zero rows up to that minimum, dropped again; any other graph runs just the real rows."""
    inputs = batch.inputs
    low = runner.batch_range[0]
    if len(inputs) < low:
        pad = np.zeros((low - len(inputs), *inputs.shape[1:]), inputs.dtype)
        inputs = np.concatenate([inputs, pad])
    out = runner.infer({"image": inputs})
    return {name: value[: len(batch.tiles)] for name, value in out.items()}


# ---------------------------------------------------------------- the engine and the loop


@dataclass
class EngineOptions:
    """How the image graph runs and is fed: the options labeling and indexing share."""

    backend: str = "auto"  # auto | trt | ort | torch (rsz_infer.backend)
    device: str = "auto"  # auto | cuda | cpu
    batch: int = 32  # tiles per engine call (the graph's batch range may change it, with a note)
    workers: int = 0  # decode threads; 0: one per core but one, at most 8
    decoder: str = "auto"  # JPEG/PNG decoding: auto | pillow | pillow-draft | nvimgcodec (rsz_infer.decoders)
    preprocess: str = "auto"  # resize + normalise: auto | pillow | native (rsz_infer.native)
    precision: str = "auto"  # image graph variant: auto | int8 | fp16 | fp32 (rsz_infer.backend)


def engine_options(config: object) -> EngineOptions:
    """The EngineOptions of a config that carries their fields by name (LabelConfig, IndexConfig)."""
    return EngineOptions(**{f.name: getattr(config, f.name) for f in fields(EngineOptions)})


@dataclass
class ImageEngine:
    """A bundle's image graph behind its decoding pool; open with ImageEngine.open, close when done."""

    manifest: Manifest
    runner: Runner
    decoder: Decoder
    native: NativePreprocessor | None
    batch_size: int
    workers: int
    notes: list[str]  # what the user should know about the choices made (fallbacks, batch size)

    @classmethod
    def open(cls, model: Path, manifest: Manifest, options: EngineOptions) -> ImageEngine:
        for name, count in (("--batch", options.batch), ("--workers", options.workers)):
            if not is_whole_number(count):  # the API's batch="32": a TypeError on `<`
                raise RszError(f"{name} {count!r}: expected a whole number")
        if options.batch < 1:
            raise RszError(f"--batch {options.batch}: must be at least 1")
        if options.workers < 0:  # a thread pool of -1 would be a traceback at the first folder
            raise RszError(f"--workers {options.workers}: must be at least 0 (0: one per core but one)")
        notes: list[str] = []
        decoder, native = open_decoding(
            options.decoder, options.preprocess, manifest.preprocess, options.device, notes
        )
        runner = open_runner(
            model, manifest, "image", options.backend, options.device, notes, options.precision
        )
        batch_size = runner.batch_size(options.batch)
        if batch_size != options.batch:
            low, high = runner.batch_range
            notes.append(
                f"{runner.name}: the image graph takes batches of {low} to {high}; using --batch {batch_size}"
            )
        return cls(manifest, runner, decoder, native, batch_size, options.workers, notes)

    @property
    def preprocess_name(self) -> str:
        return self.native.name if self.native else "pillow"

    def decode_line(self) -> str:
        """`decode X, preprocess Y[, KIND by Z]`: the decoders that actually ran, per input kind."""
        ran = sorted(self.decoder.ran)  # (decoder name, input kind) of every tile decoded so far
        names = [name for name, _ in ran]
        main = self.decoder.name if self.decoder.name in names or not names else names[0]
        others = [f"{kind} by {name}" for name, kind in ran if name != main]
        return ", ".join([f"decode {main}", f"preprocess {self.preprocess_name}", *others])

    closed: bool = False

    def close(self) -> None:
        """Frees the runner (a TensorRT engine's device buffers); closing twice is fine."""
        if not self.closed:
            self.closed = True
            self.runner.close()

    def check_open(self) -> None:
        # after close a TensorRT runner's buffers are freed: a later batch would use freed device memory
        if self.closed:
            raise RszError(f"image engine {self.runner.name}: it is closed")

    def __enter__(self) -> ImageEngine:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


@dataclass
class EmbeddedBatch:
    """One batch through the image graph: outputs row i belongs to tiles[i]; skipped finished meanwhile."""

    tiles: list[Tile]
    rules: list[str]  # how each tile became RGB (images.decode_tile)
    outputs: dict[str, np.ndarray]  # image graph outputs ("embedding", ...) of the real tiles
    skipped: list[tuple[Tile, TileError]]
    sizes: list[tuple[int, int]] = field(default_factory=list)  # (height, width) of each tile as decoded


NON_FINITE_OUTPUT = (
    "the image graph gave NaN or infinite values for this tile (an FP16 or INT8 graph overflowing? "
    "try --precision fp32)"
)


def embed_batches(engine: ImageEngine, batches: Iterable[Batch]) -> Iterator[EmbeddedBatch]:
    """Already decoded batches (e.g. from a cluster's decode stage) through the image graph. A tile whose
    outputs are not finite is skipped with a reason: its NaN scores would label it at random, and in an
    index the row would make every later search refuse the index as damaged."""
    engine.check_open()
    for batch in batches:
        engine.check_open()
        outputs = embed_batch(engine.runner, batch) if batch.tiles else {}
        yield _without_non_finite(
            EmbeddedBatch(batch.tiles, batch.rules, outputs, batch.skipped, batch.sizes)
        )


def _without_non_finite(batch: EmbeddedBatch) -> EmbeddedBatch:
    finite = np.ones(len(batch.tiles), dtype=bool)
    for value in batch.outputs.values():
        finite &= np.isfinite(value.reshape(len(value), -1)).all(axis=1)
    if finite.all():
        return batch
    keep = np.flatnonzero(finite)
    bad = [(tile, TileError(NON_FINITE_OUTPUT)) for tile, ok in zip(batch.tiles, finite) if not ok]
    return EmbeddedBatch(
        tiles=[batch.tiles[i] for i in keep],
        rules=[batch.rules[i] for i in keep],
        outputs={name: value[keep] for name, value in batch.outputs.items()},
        skipped=batch.skipped + bad,
        sizes=[batch.sizes[i] for i in keep] if batch.sizes else [],
    )


def embed_tiles(engine: ImageEngine, tiles: Iterable[Tile], options: TileOptions) -> Iterator[EmbeddedBatch]:
    """Tiles -> decoded batches -> image graph outputs, batch by batch; bad tiles come back in `skipped`."""
    spec = engine.manifest.preprocess
    batches = iter_batches(
        tiles, options, spec, engine.batch_size, engine.workers, engine.decoder, engine.native
    )
    yield from embed_batches(engine, batches)


@dataclass
class TileCounts:
    """What a run did with its tiles; labeling and indexing count the same way."""

    embedded: int = 0  # tiles through the image graph in this run
    skipped: int = 0  # bad tiles (a reason each)
    nodata: int = 0  # scene windows without valid pixels (skipped quietly)
    startup_seconds: float = (
        0.0  # from the call to the first tile in flight: bundle, graphs, class embeddings
    )
    loop_seconds: float = 0.0  # the embedding loop itself (what the progress bar's rate measures)
    interrupted: bool = False  # Ctrl-C: the sink holds what finished
    model_px: int = 0  # the image graph's input side
    resized: int = 0  # tiles resized by more than RESIZE_NOTE_FACTOR to reach the model's input
    largest: tuple[int, int] = (0, 0)  # the largest such tile (width, height)
    by_gsd: bool = False  # the largest was a scene window --gsd resampled (its size: source pixels)

    def add(self, batch: EmbeddedBatch) -> None:
        self.embedded += len(batch.tiles)
        for tile, (height, width) in zip(batch.tiles, batch.sizes):  # sizes[i] is tiles[i]'s
            # a tile --gsd resampled while reading: its source pixels are what was resized (8192 px of
            # 0.3 m to a 256 px tile at 10 m is 32x, however close 256 is to the model's input)
            gsd = tile.scale != 1.0
            if gsd:
                width, height = round(width * tile.scale), round(height * tile.scale)
            shrunk = max(height, width) > RESIZE_NOTE_FACTOR * self.model_px
            if shrunk or RESIZE_NOTE_FACTOR * min(height, width) < self.model_px:
                self.resized += 1
                if width * height > self.largest[0] * self.largest[1]:
                    self.largest, self.by_gsd = (width, height), gsd
        for _, err in batch.skipped:
            nodata = isinstance(err, NodataTile)
            self.nodata += nodata
            self.skipped += not nodata

    @property
    def rate(self) -> float:
        return self.embedded / self.loop_seconds if self.loop_seconds > 0 else 0.0

    def resize_note(self) -> str | None:
        """Says when tiles reached the model shrunk or enlarged more than 4x (detail lost or invented)."""
        if not self.resized:
            return None
        width, height = self.largest
        hint = (
            "source pixels resampled by --gsd"
            if self.by_gsd
            else "--tile-size sets the windows of large images"
        )
        return (
            f"{self.resized} tiles resized more than {RESIZE_NOTE_FACTOR}x to the model's {self.model_px} px "
            f"input (e.g. {width}x{height}; {hint})"
        )

    def timing(self) -> str:
        return f"start-up {self.startup_seconds:.1f} s, {self.loop_seconds:.1f} s at {self.rate:.1f} tiles/s"


def printable_name(name: str) -> str:
    """A file name for one message line: a newline or other control character, and bytes that are not
    UTF-8 (surrogate escapes), as backslash escapes, so one skipped tile is one line on the terminal."""
    return "".join(
        c if c.isprintable() else c.encode("unicode_escape").decode("ascii") for c in utf8_escaped(name)
    )


def warn(message: str) -> None:
    """A line on stderr that does not break the progress bar."""
    from tqdm import tqdm

    tqdm.write(message, file=sys.stderr)


def run_tiles(
    engine: ImageEngine,
    tiles: Iterable[Tile],
    options: TileOptions,
    sink: Callable[[EmbeddedBatch], None],
    progress: bool = True,
    started: float | None = None,
    total: int | None = None,
) -> TileCounts:
    """embed_tiles with a progress bar, the counts, a warning per bad tile, and Ctrl-C kept as `interrupted`.

    sink(batch) stores each batch (a crash-safe log, index rows) before the next one is counted; a
    KeyboardInterrupt anywhere in the loop ends it with what the sink holds (counts.interrupted).
    started: time.perf_counter() when the caller began (start-up is measured from there).
    """
    from tqdm import tqdm

    counts = TileCounts(model_px=engine.manifest.preprocess.size)
    loop_start = time.perf_counter()
    counts.startup_seconds = loop_start - (loop_start if started is None else started)
    total = len(tiles) if total is None else total  # tiles may be a generator: the caller counted them
    bar = tqdm(total=total, unit="tile", disable=not progress, file=sys.stderr, dynamic_ncols=True)
    try:
        for batch in embed_tiles(engine, tiles, options):
            for tile, err in batch.skipped:
                if not isinstance(err, NodataTile):
                    warn(f"skipped {printable_name(tile.id)}: {err}")
            sink(batch)
            counts.add(batch)
            bar.update(len(batch.tiles) + len(batch.skipped))
    except KeyboardInterrupt:
        counts.interrupted = True
    finally:
        bar.close()
        counts.loop_seconds = time.perf_counter() - loop_start
    return counts


def exit_code(done: int, errors: int, unlabeled: int = 0) -> int:
    """The exit code of a batch job, one rule for labeling and indexing: 0 every tile done, 3 done with some
    tiles skipped (errors), 2 nothing done because every tile was skipped (errors or nodata: `unlabeled`)."""
    if done == 0 and errors + unlabeled > 0:
        return 2
    return 3 if errors else 0


def is_whole_number(value: object) -> bool:
    """An API count (batch, k, top_k ...): an int or numpy integer, never a bool (True would be 1)."""
    return isinstance(value, (int, np.integer)) and not isinstance(value, bool)


def tile_record(tile: Tile) -> dict:
    """A tile as stored in label logs and index rows: id, file, scene window, GeoJSON footprint, its CRS."""
    window = list(tile.window) if tile.window else None
    return {
        "tile": tile.id,
        "path": tile.path,
        "window": window,
        "footprint": tile.footprint,
        "source_crs": tile.crs,
    }
