"""The labeling pipeline: the tile-embedding loop of rsz_infer.batching, then scoring and a crash-safe log."""

from __future__ import annotations

import math
import os
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path

from rsz_infer.api import (
    Labeler,
    check_explainable,
    check_hubness_penalty,
    check_min_score,
    check_seen_calibration,
    class_entries,
)
from rsz_infer.batching import (
    EmbeddedBatch,
    EngineOptions,
    engine_options,
    exit_code,
    run_tiles,
    warn,
)
from rsz_infer.bundle import DEFAULT_MODEL, Manifest, manifest_sha256, open_bundle
from rsz_infer.classfile import ClassEntry, class_file_hash
from rsz_infer.classmap import map_targets
from rsz_infer.cluster import RUN_FILE, in_shard, parts_folder
from rsz_infer.errors import RszError
from rsz_infer.images import (
    Tile,
    TileListing,
    TileOptions,
    discover_tiles,
    is_gdal_path,
    list_tiles,
    local_file,
    no_tiles_found,
    tiff_page,
)
from rsz_infer.locking import OutputLock
from rsz_infer.outputs import (
    RunLog,
    check_finished,
    check_output_path,
    drop_other_progress,
    errors_path,
    output_format,
    part_path,
    ray_resume_problem,
    write_finished,
    write_outputs,
)


def resolve_gsd(choice: str | float | None, manifest: Manifest, tiles: TileOptions) -> TileOptions:
    """`--gsd auto|METRES|off` -> the tile options with the metres per pixel scene windows are resampled to.

    auto: the GSD the model was trained at (Manifest.gsd) when the bundle knows it, else no resampling.
    """
    text = "off" if choice is None else str(choice).strip().lower()
    if text == "off":
        return replace(tiles, gsd=None)
    if text == "auto":
        return replace(tiles, gsd=manifest.gsd)
    try:
        metres = float(text)
    except ValueError:
        raise RszError(f"--gsd {choice}: expected auto, off or metres per pixel such as 0.3") from None
    if not (math.isfinite(metres) and metres > 0):  # inf would make windows of infinite source pixels
        raise RszError(f"--gsd {choice}: metres per pixel must be positive and finite")
    return replace(tiles, gsd=metres)


def run_log_engine(precision: str, decoder: str) -> dict:
    """What of the engine goes into a run log's header, so that --resume never mixes rows made otherwise:
    the image graph's precision (INT8 and FP16 rows differ from FP32 ones) and pillow-draft decoding
    (every other decoder gives the same pixels, rsz_infer.decoders)."""
    return {"precision": precision, **({"decoder": decoder} if decoder == "pillow-draft" else {})}


def hubness_header(penalty: float | None) -> dict:
    """--hubness-penalty in a run log's header when given (runs that leave it out keep their header)."""
    return {} if penalty is None else {"hubness_penalty": penalty}


def gsd_note(tiles: TileOptions, manifest: Manifest) -> list[str]:
    if tiles.gsd is None:
        return []
    trained = f" (trained at {manifest.gsd:g} m)" if manifest.gsd else ""
    return [f"--gsd: scene windows resampled to {tiles.gsd:g} m per pixel{trained}"]


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
    hubness_penalty: float | None = None  # None: the bundle's (DSVA); 0 scores without the correction
    min_score: float | None = None  # --min-score: raw similarity below which label_1 is UNKNOWN
    resume: bool = False
    tiles: TileOptions = field(default_factory=TileOptions)
    class_map: Path | None = None  # a class-map COG per scene (rsz_infer.classmap)
    class_map_scores: bool = False  # the class map's second band: the top score
    gsd: str = "auto"  # auto | off | metres per pixel: resample scene windows (resolve_gsd)
    explain: bool = False  # DSVA: each tile's top attributes (and their attention maps for the gallery)
    html: Path | None = None  # an HTML gallery of the labeled tiles (and the class maps' quicklooks)
    workers: int = 0  # decode threads; 0: one per core but one, at most 8
    decoder: str = "auto"  # JPEG/PNG decoding: auto | pillow | pillow-draft | nvimgcodec (rsz_infer.decoders)
    preprocess: str = "auto"  # resize + normalise: auto | pillow | native (rsz_infer.native)
    progress: bool = True
    precision: str = "auto"  # image graph variant: auto | int8 | fp16 | fp32 (rsz_infer.backend)
    shard: tuple[int, int] | None = None  # (I, N): only the tiles of shard I of N (rsz_infer.cluster)

    @property
    def engine(self) -> EngineOptions:
        return engine_options(self)


@dataclass
class Summary:
    labeled: int  # in this run
    skipped: int  # bad tiles in this run
    nodata: int  # empty scene windows in this run
    already_done: int  # finished by an earlier run (--resume)
    seconds: float  # the whole call
    backend: str
    total_errors: int = 0  # skipped tiles in the whole output (errors.csv rows)
    notes: list[str] = field(default_factory=list)
    decode: str = "decode pillow, preprocess pillow"  # the decoders that ran (ImageEngine.decode_line)
    total_labeled: int = 0  # labeled tiles in the whole output
    startup_seconds: float = 0.0  # bundle, class embeddings, graphs: before the first tile is decoded
    loop_seconds: float = 0.0  # the labeling loop (the progress bar's rate)
    nothing_left: bool = False  # --resume on an output that had already finished
    resize_note: str | None = None  # tiles resized more than 4x to the model's input (TileCounts)
    class_maps: list[Path] = field(default_factory=list)  # each with its .png quicklook beside it
    class_map_scenes: list[str] = field(default_factory=list)  # the scene of each class map
    gallery_tiles: int | None = None  # tiles in the HTML gallery, when one was written
    gallery_missing: int = 0  # of those, the tiles without a preview (report.write_gallery)
    labeling: str | None = None  # which rule labeled, for bundles with a choice (rsz_infer.latent_classifier)

    @property
    def exit_code(self) -> int:
        if self.nothing_left:
            return 0
        return exit_code(self.total_labeled, self.total_errors, self.nodata)

    def line(self, out: Path) -> str:
        if self.nothing_left:
            return f"rsz-infer: {out} is already complete; nothing left to do"
        parts = [f"{self.labeled} tiles labeled", f"{self.skipped} skipped"]
        if self.nodata:
            parts.append(f"{self.nodata} nodata")
        if self.already_done:
            parts.append(f"{self.already_done} done before (resumed)")
        rate = self.labeled / self.loop_seconds if self.loop_seconds > 0 else 0.0
        parts += [
            f"start-up {self.startup_seconds:.1f} s",
            f"{self.loop_seconds:.1f} s at {rate:.1f} tiles/s",
        ]
        parts += [f"backend {self.backend}", self.decode]
        if self.labeling:
            parts.append(f"labeled by the {self.labeling}")
        if self.resize_note:
            parts.append(self.resize_note)
        line = f"rsz-infer: {', '.join(parts)} -> {out}"
        if len(self.class_maps) > 1:  # which map is which scene's: the names alone may not tell
            for scene, path in zip(self.class_map_scenes, self.class_maps):
                line += f"\nrsz-infer: class map of {scene} -> {path}"
        if self.exit_code == 2:
            line += "\nerror: nothing was labeled: every tile was skipped"
            if self.total_errors:
                line += f" (reasons in {errors_path(out).name})"
        return line


def input_names(inputs: list) -> list[str]:
    """The inputs as the run log records them: local paths made absolute (a TIFF page's file too), GDAL
    paths and URLs as given."""

    def recorded(name: str) -> str:
        page = tiff_page(name)
        if page is not None and local_file(name) is not None:
            return f"GTIFF_DIR:{page[0]}:{os.path.abspath(page[1])}"
        return name if is_gdal_path(name) else os.path.abspath(name)

    return [recorded(str(p)) for p in inputs]


def _check_distinct_outputs(cfg: LabelConfig) -> None:
    """--out, --html and --class-map are three different files, none of them an input."""
    # a TIFF page's file too (GTIFF_DIR:2:scan.tif): a class map named scan.tif would replace every page
    inputs = {os.path.realpath(f) for f in map(local_file, input_names(cfg.inputs)) if f is not None}
    written = {"--out": cfg.out, "--html": cfg.html, "--class-map": cfg.class_map}
    seen: dict[str, str] = {}
    for option, path in written.items():
        if path is None:
            continue
        real = os.path.realpath(path)
        if real in inputs:
            raise RszError(f"{option} {path}: is one of the inputs; it would be overwritten")
        if real in seen:
            raise RszError(
                f"{option} {path}: is the same file as {seen[real]}; give each output its own name"
            )
        seen[real] = option


class MapSources:
    """What the class maps must not overwrite, gathered in the listing pass: the scenes (each scene's map
    is named after it) and every input file in the --class-map folder named like a map or its quicklook
    (a STAC asset, a file of an input folder, a previous run's map there)."""

    def __init__(self, class_map: Path) -> None:
        self.folder, self.stem = os.path.realpath(class_map.parent), class_map.stem
        self.scenes: set[str] = set()
        self.near: set[str] = set()

    def add(self, tile: Tile, kept: bool) -> None:
        if kept and tile.window is not None:
            self.scenes.add(tile.path)
        file = local_file(tile.path)  # a TIFF page's file too
        if file is not None and os.path.basename(file).startswith(self.stem):
            real = os.path.realpath(file)
            if os.path.dirname(real) == self.folder:
                self.near.add(real)

    def check(self, class_map: Path) -> None:
        """RszError when a map or quicklook would replace an input (the one-scene name too: a scene
        whose windows are all nodata gets no map, and one scene left takes the --class-map name)."""
        maps = {class_map, *map_targets(class_map, sorted(self.scenes)).values()}
        for path in sorted(p for m in maps for p in (m, m.with_suffix(".png"))):
            if os.path.realpath(path) in self.near:
                raise RszError(
                    f"--class-map {class_map}: would overwrite {path}, one of the inputs; "
                    "write the class maps to another folder or name"
                )


def _check_outputs(cfg: LabelConfig, listing: TileListing, sources: MapSources | None) -> None:
    """Every output option, before the first tile is decoded: a bad one must not cost a whole run."""
    output_format(cfg.out)
    check_output_path(cfg.out, "--out", (cfg.out.suffix.lower(),))
    if cfg.class_map is not None:
        check_output_path(cfg.class_map, "--class-map", (".tif", ".tiff"))
    _check_distinct_outputs(cfg)
    if cfg.class_map is not None and not listing.windows:
        raise RszError(
            f"--class-map {cfg.class_map}: no scene among the inputs (a raster larger than --tile-size "
            f"{cfg.tiles.tile_size}, cut into windows: a class map is drawn in a scene's grid)"
        )
    if sources is not None:
        sources.check(cfg.class_map)


@dataclass
class LabelPlan:
    """A labeling run's set-up before its first tile; the single-process and the Ray path share it."""

    cfg: LabelConfig  # with the GSD resolved into cfg.tiles
    manifest: Manifest
    entries: list[ClassEntry]
    notes: list[str]
    listing: TileListing


def plan_labeling(cfg: LabelConfig, check_outputs: bool = True) -> LabelPlan:
    """Check --batch and --top-k, open the bundle and the classes, resolve --gsd, count the tiles of this
    shard and check every output option (`check_outputs`) before anything is decoded or written (the
    single-process and Ray paths alike: the Ray actors would find a bad --batch only after the partition
    folder was made)."""
    if cfg.batch < 1 or cfg.top_k < 1:
        raise RszError(f"--batch {cfg.batch} / --top-k {cfg.top_k}: must be at least 1")
    manifest = open_bundle(cfg.model)
    if cfg.explain:
        check_explainable(manifest, cfg.model)
    entries = class_entries(cfg.classes)
    check_min_score(cfg.min_score, entries, cfg.classes)
    check_seen_calibration(cfg.seen_calibration)
    check_hubness_penalty(cfg.hubness_penalty, manifest)
    cfg = replace(cfg, tiles=resolve_gsd(cfg.gsd, manifest, cfg.tiles))
    notes = gsd_note(cfg.tiles, manifest)
    # Tiles are listed twice (a count, then the run) and never held: memory does not grow with the inputs
    # (a scene of any declared size costs one window at a time). An empty shard writes an empty output.
    sources = MapSources(cfg.class_map) if cfg.class_map is not None else None

    def keep(tile: Tile) -> bool:
        kept = in_shard(tile.id, cfg.shard)
        if sources is not None:
            sources.add(tile, kept)
        return kept

    listing = list_tiles(cfg.inputs, cfg.tiles, notes, keep)
    if not listing.found:
        raise no_tiles_found(cfg.inputs)
    if check_outputs:
        _check_outputs(cfg, listing, sources)
    return LabelPlan(cfg, manifest, entries, notes, listing)


def label_tiles(cfg: LabelConfig, on_batch: Callable[[int], None] | None = None) -> Summary:
    """Label every tile of cfg.inputs with the class file; on_batch(n) is called after each logged batch.

    Ctrl-C (KeyboardInterrupt) still writes the output of what finished, then re-raises. One run at a time
    writes an --out (rsz_infer.locking): a second one fails at once with one line.
    """
    output_format(cfg.out)
    check_output_path(cfg.out, "--out", (cfg.out.suffix.lower(),))  # before the lock file goes beside it
    with OutputLock(cfg.out, "labeling run"):
        return _label_tiles(cfg, on_batch)


def _label_tiles(cfg: LabelConfig, on_batch: Callable[[int], None] | None) -> Summary:
    start = time.perf_counter()
    problem = ray_resume_problem(cfg.out, False, parts_folder(cfg.out) / RUN_FILE) if cfg.resume else None
    if problem:  # before the model and the inputs are read
        raise RszError(problem)
    plan = plan_labeling(cfg)
    cfg, manifest, entries, notes = plan.cfg, plan.manifest, plan.entries, plan.notes
    labeler = Labeler(
        cfg.model, entries, cfg.backend, cfg.device, cfg.top_k, cfg.seen_calibration, batch=cfg.batch,
        workers=cfg.workers, decoder=cfg.decoder, preprocess=cfg.preprocess, tiles=cfg.tiles,
        manifest=manifest, explain=cfg.explain, min_score=cfg.min_score, precision=cfg.precision,
        hubness_penalty=cfg.hubness_penalty,
    )  # fmt: skip
    scorer, engine = labeler.scorer, labeler.engine
    header = {
        "model": manifest_sha256(cfg.model),
        "classes": class_file_hash(entries),
        "top_k": cfg.top_k,
        "seen_calibration": scorer.seen_calibration,
        **hubness_header(cfg.hubness_penalty),
        "min_score": cfg.min_score,
        "inputs": input_names(cfg.inputs),  # --resume with other inputs must not mix two runs' rows
        **({"shard": list(cfg.shard)} if cfg.shard else {}),  # nor with another shard of the same inputs
        "tiles": [cfg.tiles.tile_size, cfg.tiles.overlap, list(cfg.tiles.bands or [])]
        + ([cfg.tiles.gsd] if cfg.tiles.gsd else []),
        **({"explain": True} if cfg.explain else {}),
        **({"labeling": scorer.labeling} if scorer.labeling else {}),
        **run_log_engine(engine.runner.precision, engine.decoder.name),
    }
    if cfg.resume and cfg.out.exists() and not part_path(cfg.out).exists():
        # finished: its run log is gone, its header and tile list are kept beside it (outputs.check_finished)
        labeler.close()
        check_finished(cfg.out, header, plan.listing.tiles())
        return Summary(0, 0, 0, 0, time.perf_counter() - start, "none", nothing_left=True)
    engine.notes[:0] = notes + scorer.notes
    for note in engine.notes:
        warn(note)
    try:
        log = RunLog(cfg.out, header, cfg.resume)
    except RszError:
        labeler.close()
        raise
    done_before = 0

    def todo() -> Iterator[Tile]:
        nonlocal done_before
        for tile in discover_tiles(cfg.inputs, cfg.tiles):
            if not in_shard(tile.id, cfg.shard):
                continue
            if tile.id in log.done:
                done_before += 1
            else:
                yield tile

    batches_logged = 0

    def log_batch(batch: EmbeddedBatch) -> None:
        nonlocal batches_logged
        log.append(labeler.batch_records(batch))
        batches_logged += 1
        if on_batch is not None:
            on_batch(batches_logged)

    with labeler:
        try:
            total = max(0, plan.listing.count - len(log.done))
            counts = run_tiles(engine, todo(), cfg.tiles, log_batch, cfg.progress, started=start, total=total)
        finally:
            log.close()
    interrupted = counts.interrupted
    written = write_outputs(
        log, cfg.out, cfg.top_k, scorer.names, None if interrupted else cfg.class_map, cfg.class_map_scores,
        best_class=cfg.min_score is not None,
    )  # fmt: skip
    summary = Summary(
        counts.embedded, counts.skipped, counts.nodata, done_before, time.perf_counter() - start,
        f"{engine.runner.name} {engine.runner.precision}", total_errors=written["errors"], notes=engine.notes,
        decode=engine.decode_line(),
        total_labeled=written["labeled"], startup_seconds=counts.startup_seconds,
        loop_seconds=counts.loop_seconds, resize_note=counts.resize_note(), class_maps=written["class_maps"],
        class_map_scenes=written["class_map_scenes"], labeling=scorer.labeling,
    )  # fmt: skip
    if interrupted:
        print(
            f"interrupted: {written['labeled']} tiles written to {cfg.out}; "
            f"run again with --resume to finish ({part_path(cfg.out).name} keeps the progress)",
            file=sys.stderr,
        )
        raise KeyboardInterrupt
    if cfg.html is not None:
        from rsz_infer.report import write_label_gallery

        heading = f"rsz labels: {cfg.classes.name}"
        labeled = [r for r in log.records() if "labels" in r]
        summary.gallery_tiles, summary.gallery_missing = write_label_gallery(
            cfg.html, heading, labeled, cfg.tiles, summary.class_maps
        )
    # what the output was made with, for a later --resume; written before the log goes (a kill between
    # the two leaves the log, which --resume reads first)
    write_finished(cfg.out, header, plan.listing.tiles())
    part_path(cfg.out).unlink()
    note = drop_other_progress(cfg.out, False, parts_folder(cfg.out) / RUN_FILE)
    if note:
        warn(note)
    return summary
