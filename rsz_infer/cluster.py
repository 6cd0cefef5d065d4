"""Past one process: `--shard I/N` for plain processes and array jobs, and the Ray Data path (`--ray`).

Sharding: a tile belongs to shard crc32(tile id) mod N, so N processes given the same inputs split them
without talking to each other, a tile keeps its shard when the folder grows (resume stays valid), and
the N outputs together hold every tile once.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import sys
import time
import zlib
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from rsz_infer.batching import Batch, TileCounts, embed_batches
from rsz_infer.errors import RszError, first_line, reclaim_sigterm
from rsz_infer.images import NodataTile, Tile, TileError, TileOptions, decode_tile
from rsz_infer.outputs import atomic_write
from rsz_infer.preprocess import PreprocessSpec, normalize, resize_rgb
from rsz_infer.scoring import l2_normalize

Shard = tuple[int, int]  # (index I, count N), 0 <= I < N


def parse_shard(text: str | None) -> Shard | None:
    """ "I/N" -> (I, N); None stays None."""
    if text is None or text == "":
        return None
    index, sep, count = text.partition("/")
    if not sep or not index.strip().isdigit() or not count.strip().isdigit():
        raise RszError(f"--shard {text}: expected I/N, e.g. 0/4 for the first of 4 shards")
    shard = int(index), int(count)
    if not 0 <= shard[0] < shard[1]:
        raise RszError(f"--shard {text}: I must be at least 0 and smaller than N")
    return shard


def in_shard(tile_id: str, shard: Shard | None) -> bool:
    # the id's own bytes: a file name that is not UTF-8 holds surrogate escapes (the same hash as before
    # for every UTF-8 id, so existing shards keep their tiles)
    return shard is None or zlib.crc32(tile_id.encode("utf-8", "surrogateescape")) % shard[1] == shard[0]


def shard_tiles(tiles: Iterable[Tile], shard: Shard | None) -> list[Tile]:
    """The tiles of this shard, in discovery order (all of them without a shard)."""
    return [t for t in tiles if in_shard(t.id, shard)]


# ---------------------------------------------------------------- Ray Data (--ray)
#
# The discovered tiles (files and scene windows) are cut into partitions of RayOptions.partition_tiles, in
# discovery order; one partition is one row of a Ray Dataset. Decoding (images.decode_tile + the resize of
# preprocess.to_model_input) runs as Ray tasks; the engine runs in a fixed pool of actors, each holding one
# Labeler (or Embedder for indexing), which normalises, embeds, scores and writes its partition as one
# Parquet file, atomically (written beside, then renamed). Only a few counts per partition reach the
# driver. A killed job leaves whole partition files, and the same command with --resume (labeling) or again
# (indexing) does only the partitions that are missing. Labels files (any format) are merged from the
# partitions at the end; an --out without a suffix keeps the partition folder as the output.

RAY_HINT = "pip install 'rsz[ray]' (Ray Data; no PyTorch)"
PART_GLOB = "part-*.parquet"
RUN_FILE = "run.json"


@dataclass
class RayOptions:
    """How the Ray path runs; address "local" starts Ray on this machine, else e.g. "auto" or ray://host:10001."""

    address: str = "local"
    actors: int = 1  # engine actors (one per GPU on GPU clusters)
    partition_tiles: int = 256  # tiles per partition: one decode task, one actor call, one Parquet file
    gpus_per_actor: float | None = None  # None: 1 when the cluster has GPUs and --device is not cpu
    max_partitions: int | None = None  # submit only this many partitions (a job stopped early; tests)


def check_ray_address(address: str) -> str:
    """--ray's optional ADDRESS; a path there means the option took the tiles (put --ray after them)."""
    if address != "local" and "://" not in address and address != "auto" and Path(address).exists():
        raise RszError(f"--ray {address}: looks like an input, not a Ray address; put --ray after the tiles")
    return address


def import_ray():  # the ray module
    try:
        import ray
        import ray.data  # noqa: F401
    except ImportError:
        raise RszError(f"--ray: Ray is not installed ({RAY_HINT})") from None
    return ray


def connect(options: RayOptions):  # the ray module
    """Join (or start) the Ray cluster; an already initialised Ray (a notebook, a test) is used as it is."""
    ray = import_ray()
    if options.actors < 1 or options.partition_tiles < 1:
        raise RszError(
            f"--ray-actors {options.actors} / --ray-partition-tiles {options.partition_tiles}: "
            "must be at least 1"
        )
    if not ray.is_initialized():
        address = None if options.address == "local" else options.address
        try:
            ray.init(address=address, include_dashboard=False, log_to_driver=False)
        except (ConnectionError, ValueError, RuntimeError) as err:
            raise RszError(f"--ray {options.address}: cannot connect ({first_line(err)})") from None
        reclaim_sigterm()  # SIGTERM stops the job as Ctrl-C does, not by Ray's handler
    ray.data.DataContext.get_current().enable_progress_bars = False  # rsz's own bar counts tiles
    for name in ("ray", "ray.data"):  # Ray Data's per-dataset INFO lines would bury rsz's summary
        logging.getLogger(name).setLevel(logging.WARNING)
    return ray


def _actor_resources(ray, options: RayOptions, device: str) -> tuple[dict, str]:
    """(Ray resources of one engine actor, the --device it opens its engine on)."""
    if device.startswith("cuda:"):
        raise RszError(
            f"--device {device}: with --ray, Ray gives each actor its GPU; use --device cuda or auto"
        )
    gpus = options.gpus_per_actor
    if gpus is None:
        gpus = 1.0 if device != "cpu" and ray.cluster_resources().get("GPU", 0) > 0 else 0.0
    if device == "cuda" and gpus == 0:
        raise RszError("--device cuda --ray: the Ray cluster has no GPUs")
    # Half a CPU each: the decode tasks (one CPU each) always find cores beside the actors.
    return {"num_cpus": 0.5, "num_gpus": gpus}, ("cuda" if gpus > 0 else "cpu")


def partitions(tiles: list[Tile], size: int) -> list[list[Tile]]:
    return [tiles[i : i + size] for i in range(0, len(tiles), size)]


def part_file(parts_dir: Path, partition: int) -> Path:
    return parts_dir / f"part-{partition:06d}.parquet"


def _write_part(parts_dir: Path, partition: int, table) -> None:  # pyarrow.Table
    import pyarrow.parquet as pq

    target = part_file(parts_dir, partition)
    tmp = target.with_name(f".{target.name}.{os.getpid()}.tmp")
    pq.write_table(table, tmp)
    os.replace(tmp, target)


def _run_key(tiles: list[Tile], header: dict, options: RayOptions) -> dict:
    """What a partition folder was made for: a resumed job must cut the same tiles the same way."""
    ids = hashlib.sha256("\n".join(t.id for t in tiles).encode("utf-8", "surrogateescape")).hexdigest()
    return {"header": header, "partition_tiles": options.partition_tiles, "tiles": len(tiles), "ids": ids}


def open_parts(parts_dir: Path, key: dict, resume: bool) -> set[int]:
    """The partition folder for this job -> the partitions already written (only when resuming)."""
    run_file = parts_dir / RUN_FILE
    if resume and run_file.is_file():
        if json.loads(run_file.read_text(encoding="utf-8")) != key:
            raise RszError(
                f"{parts_dir}: partitions of another model, class file, tile list or --ray-partition-tiles; "
                "delete the folder to start over"
            )
        for stale in parts_dir.glob(".part-*.tmp"):  # a partition being written when the job died
            stale.unlink()
        return {int(p.stem.split("-")[1]) for p in parts_dir.glob(PART_GLOB)}
    if parts_dir.exists():
        check_parts_folder(parts_dir)
        shutil.rmtree(parts_dir)
    parts_dir.mkdir(parents=True)
    atomic_write(run_file, json.dumps(key))
    return set()


def _is_part_entry(path: Path) -> bool:
    name = path.name
    return path.is_file() and (
        name == RUN_FILE or path.match(PART_GLOB) or (name.startswith(".part-") and name.endswith(".tmp"))
    )


def check_parts_folder(parts_dir: Path) -> None:
    """A folder a new job may replace: only an earlier job's partitions (or nothing). An --out without a
    suffix is the partition folder, so it may name any folder the user has (even the tiles' own)."""
    if not parts_dir.is_dir():
        raise RszError(
            f"{parts_dir}: is a file, not a partition folder of rsz-infer --ray; choose another --out"
        )
    if not all(_is_part_entry(p) for p in parts_dir.iterdir()):
        raise RszError(
            f"{parts_dir}: a folder that holds other files than rsz-infer --ray partitions (it would be "
            "replaced); choose another --out, or a file name with a suffix (e.g. labels.parquet)"
        )


def decode_partition(
    row: dict, options: TileOptions, size: int, jpeg_draft: int = 0, resize: str = "bilinear"
) -> dict:
    """Ray task: decode one partition's tiles and resize them to the model's input (uint8, as
    preprocess.to_model_input resizes before it normalises, with the bundle's preprocess.resize filter); bad
    tiles come back with their reason. jpeg_draft: as images.decode_tile's (`--decoder pillow-draft`: the
    model input size)."""
    good, rules, rgbs, sizes, skipped = [], [], [], [], []
    for tile in row["tiles"]:
        try:
            rgb, rule = decode_tile(tile, options, jpeg_draft)
        except TileError as err:
            skipped.append((tile, str(err), isinstance(err, NodataTile)))
            continue
        good.append(tile)
        rules.append(rule)
        sizes.append(rgb.shape[:2])
        rgbs.append(resize_rgb(rgb, size, resize))
    stacked = np.stack(rgbs) if rgbs else np.zeros((0, size, size, 3), np.uint8)
    return {
        "partition": row["partition"],
        "tiles": good,
        "rules": rules,
        "sizes": sizes,
        "rgb": stacked,
        "skipped": skipped,
    }


def partition_batches(row: dict, spec: PreprocessSpec, batch_size: int) -> list[Batch]:
    """A decoded partition as the engine's batches (normalised as preprocess.normalize does);
    its bad tiles ride in the first batch."""
    skipped = [
        (tile, NodataTile(reason) if nodata else TileError(reason)) for tile, reason, nodata in row["skipped"]
    ]
    tiles, rules, rgb = list(row["tiles"]), list(row["rules"]), row["rgb"]
    sizes = [tuple(int(v) for v in hw) for hw in row["sizes"]]
    batches = []
    for start in range(0, max(len(tiles), 1), batch_size):
        chunk = tiles[start : start + batch_size]
        # only the rows the batch holds (batching.embed_batch pads up to a graph's minimum batch)
        inputs = np.zeros((len(chunk), 3, spec.size, spec.size), np.float32)
        for i in range(len(chunk)):
            inputs[i] = normalize(rgb[start + i], spec)
        end = start + batch_size
        batches.append(
            Batch(
                chunk, rules[start:end], inputs, sizes=sizes[start:end], skipped=skipped if start == 0 else []
            )
        )
    return batches


def _counts(counts: TileCounts) -> dict:
    return {"done": counts.embedded, "skipped": counts.skipped, "nodata": counts.nodata}


class LabelActor:
    """One engine of the actor pool: a Labeler that labels decoded partitions and writes their Parquet."""

    def __init__(self, bundle: str, entries: list, labeler_options: dict, parts_dir: str) -> None:
        from rsz_infer.api import Labeler

        # the actor never decodes (the decode tasks did): no decoder or native library to open
        self.labeler = Labeler(bundle, entries, decoder="pillow", preprocess="pillow", **labeler_options)
        self.parts_dir = Path(parts_dir)

    def __call__(self, row: dict) -> dict:
        from rsz_infer.api import records_table

        engine = self.labeler.engine
        records: list[dict] = []
        counts = TileCounts()
        batches = partition_batches(row, engine.manifest.preprocess, engine.batch_size)
        for batch in embed_batches(engine, batches):
            records += self.labeler.batch_records(batch)
            counts.add(batch)
        _write_part(self.parts_dir, row["partition"], records_table(records))
        return {"partition": row["partition"], **_counts(counts)}


class EmbedActor:
    """One engine of the actor pool for indexing: embeddings (+ MSA scales) of decoded partitions."""

    def __init__(self, bundle: str, engine_options: dict, parts_dir: str) -> None:
        from rsz_infer.api import Embedder

        self.embedder = Embedder(bundle, decoder="pillow", preprocess="pillow", **engine_options)
        self.parts_dir = Path(parts_dir)

    def __call__(self, row: dict) -> dict:
        from rsz_infer.api import skipped_records
        from rsz_infer.index import index_row

        engine = self.embedder.engine
        records: list[dict] = []
        embeddings: list[np.ndarray | None] = []
        scales: list[np.ndarray | None] = []
        with_scales = "rerank" in engine.manifest.graphs
        counts = TileCounts()
        batches = partition_batches(row, engine.manifest.preprocess, engine.batch_size)
        for batch in embed_batches(engine, batches):
            counts.add(batch)
            bad = skipped_records(batch)
            records += bad
            embeddings += [None] * len(bad)
            scales += [None] * len(bad)
            if batch.tiles:
                records += [index_row(t) for t in batch.tiles]
                embeddings += list(l2_normalize(batch.outputs["embedding"]).astype(np.float32))
                out_scales = batch.outputs.get("scales") if with_scales else None
                scales += (
                    list(out_scales.astype(np.float32))
                    if out_scales is not None
                    else [None] * len(batch.tiles)
                )
        _write_part(self.parts_dir, row["partition"], _index_table(records, embeddings, scales))
        return {"partition": row["partition"], **_counts(counts)}


def _index_table(records: list[dict], embeddings: list, scales: list):  # pyarrow.Table
    """An index partition: the tile record (JSON), its L2-normalised embedding and its MSA scales
    (flattened, with their shape), null for skipped tiles."""
    import pyarrow as pa

    def floats(arrays: list) -> pa.Array:
        return pa.array(
            [a.ravel().tolist() if a is not None else None for a in arrays], pa.list_(pa.float32())
        )

    shape = next((list(a.shape) for a in scales if a is not None), None)
    table = pa.table(
        {
            "tile": [r["tile"] for r in records],
            "record": [json.dumps(r) for r in records],
            "embedding": floats(embeddings),
            "scales": floats(scales),
        }
    )
    return table.replace_schema_metadata({"scales_shape": json.dumps(shape)})


def run_partitions(
    ray,
    todo: list[tuple[int, list[Tile]]],
    tile_options: TileOptions,
    size: int,
    actor_cls: type,
    actor_kwargs: dict,
    resources: dict,
    options: RayOptions,
    progress: bool,
    decoder: str = "auto",
    resize: str = "bilinear",
) -> dict:
    """Decode tasks -> actor pool over the partitions in `todo`; the driver sees only their counts.
    The tasks decode with Pillow and GDAL whatever `decoder` says (the same pixels), but pillow-draft's
    reduced-scale JPEGs are other pixels, which the run log's header records: the tasks decode them too."""
    from tqdm import tqdm

    totals = {"done": 0, "skipped": 0, "nodata": 0, "partitions": 0}
    if not todo:
        return totals
    ds = ray.data.from_items([{"partition": p, "tiles": tiles} for p, tiles in todo])
    draft = size if decoder == "pillow-draft" else 0
    decode_args = {"options": tile_options, "size": size, "jpeg_draft": draft, "resize": resize}
    ds = ds.map(decode_partition, fn_kwargs=decode_args, num_cpus=1)
    ds = ds.map(
        actor_cls,
        fn_constructor_kwargs=actor_kwargs,
        compute=ray.data.ActorPoolStrategy(size=options.actors),
        **resources,
    )
    bar = tqdm(total=sum(len(t) for _, t in todo), unit="tile", disable=not progress, file=sys.stderr)
    try:
        for row in ds.iter_rows():
            for key in ("done", "skipped", "nodata"):
                totals[key] += int(row[key])
            totals["partitions"] += 1
            bar.update(int(row["done"]) + int(row["skipped"]) + int(row["nodata"]))
    except (RszError, KeyboardInterrupt):
        raise
    except Exception as err:  # a task or actor failed: Ray's error holds the worker's traceback
        lines = [line for line in str(err).splitlines() if "RszError: " in line]
        if lines:  # e.g. a bundle an actor cannot open: the worker's one line
            raise RszError(lines[-1].split("RszError: ", 1)[1]) from None
        raise RszError(f"--ray: the job failed ({first_line(err)}); finished partitions are kept") from None
    finally:
        bar.close()
    return totals


# ---------------------------------------------------------------- the two jobs


def _decode_line(decoder: str) -> str:
    pillow = "pillow-draft" if decoder == "pillow-draft" else "pillow"
    return f"decode ray tasks (rasterio/{pillow}), preprocess pillow"


def _say_stopped(how: str, parts_dir: Path, total: int, finish: str) -> None:
    """The line of a job that stopped early: how many partitions it keeps, and how to finish."""
    kept = len(list(parts_dir.glob(PART_GLOB)))
    print(f"{how}: {kept} of {total} partitions in {parts_dir}; {finish}", file=sys.stderr)


def parts_folder(out: Path) -> Path:
    """Where a job's partitions go: --out itself when it has no suffix, else `<out>.parts/` beside it."""
    return out if out.suffix == "" else out.with_name(out.name + ".parts")


class _PartsLog:
    """The partitions of a labeling job read back as a run log (outputs.write_outputs reads `records()`)."""

    def __init__(self, parts_dir: Path) -> None:
        self.parts_dir = parts_dir

    def records(self) -> Iterable[dict]:
        import pyarrow.parquet as pq

        from rsz_infer.api import table_records

        for path in sorted(self.parts_dir.glob(PART_GLOB)):
            yield from table_records(pq.read_table(path))


def label_tiles_ray(cfg, options: RayOptions):  # pipeline.LabelConfig -> Summary
    """rsz-infer TILES --ray: label_tiles' job on a Ray cluster (the same discovery, checks, Labeler and
    outputs, and the same lock on --out; see the section comment above)."""
    from rsz_infer.locking import OutputLock
    from rsz_infer.outputs import check_outside_index

    check_outside_index(Path(cfg.out), "--out")  # before the lock file goes beside it
    with OutputLock(Path(cfg.out), "labeling run"):
        return _label_tiles_ray(cfg, options)


def _label_tiles_ray(cfg, options: RayOptions):  # pipeline.LabelConfig -> Summary
    from rsz_infer.bundle import manifest_sha256
    from rsz_infer.classfile import class_file_hash, with_training_descriptions
    from rsz_infer.images import discover_tiles
    from rsz_infer.latent_classifier import choose_rule
    from rsz_infer.outputs import (
        check_finished,
        drop_other_progress,
        output_format,
        ray_resume_problem,
        write_errors,
        write_finished,
        write_outputs,
    )
    from rsz_infer.pipeline import Summary, hubness_header, plan_labeling, run_log_engine

    start = time.perf_counter()
    out = Path(cfg.out)
    merged = out.suffix != ""  # a labels file merged from the partitions, or the partition folder itself
    if merged:
        output_format(out)
    if cfg.explain or cfg.html is not None:
        raise RszError("--ray: --explain and --html are single-process options for now")
    if not merged and cfg.class_map is not None:  # class maps are drawn when partitions are merged
        raise RszError(
            f"--class-map {cfg.class_map}: with --ray, --out must be a labels file (e.g. labels.parquet); "
            f"--out {out} has no suffix, so it would keep only the partitions"
        )
    parts_dir = parts_folder(out)
    problem = ray_resume_problem(out, True, parts_dir / RUN_FILE) if cfg.resume and merged else None
    if problem:  # before the model and the inputs are read
        raise RszError(problem)
    plan = plan_labeling(cfg, check_outputs=merged)
    cfg, manifest, entries, notes = plan.cfg, plan.manifest, plan.entries, plan.notes
    header = {
        "model": manifest_sha256(cfg.model),
        "classes": class_file_hash(entries),
        "top_k": cfg.top_k,
        "seen_calibration": cfg.seen_calibration,
        **hubness_header(cfg.hubness_penalty),
        "min_score": cfg.min_score,
        "tiles": [cfg.tiles.tile_size, cfg.tiles.overlap, list(cfg.tiles.bands or []), cfg.tiles.gsd],
        **({"shard": list(cfg.shard)} if cfg.shard else {}),  # named as such when a --resume differs
        **run_log_engine(cfg.precision, cfg.decoder),  # as asked: the actors resolve "auto" alike
    }
    if cfg.resume and merged and out.exists() and not parts_dir.exists():
        # finished: what it was made with is kept beside it (outputs.check_finished), as on one process
        check_finished(out, header, plan.listing.tiles())
        return Summary(0, 0, 0, 0, time.perf_counter() - start, "none", nothing_left=True)
    # The driver holds the Tiles (small records: path, window, footprint) to cut them into partitions.
    tiles = shard_tiles(discover_tiles(cfg.inputs, cfg.tiles), cfg.shard)
    ray = connect(options)
    resources, device = _actor_resources(ray, options, cfg.device)
    cut = partitions(tiles, options.partition_tiles)
    done = open_parts(parts_dir, _run_key(tiles, header, options), cfg.resume)
    todo = [(p, part) for p, part in enumerate(cut) if p not in done][: options.max_partitions]
    labeler_options = {
        "backend": cfg.backend,
        "device": device,
        "top_k": cfg.top_k,
        "seen_calibration": cfg.seen_calibration,
        "hubness_penalty": cfg.hubness_penalty,
        "min_score": cfg.min_score,
        "batch": cfg.batch,
        "precision": cfg.precision,
    }
    actor = {"bundle": str(cfg.model), "entries": entries, "labeler_options": labeler_options}
    actor["parts_dir"] = str(parts_dir)
    # what the actors' Labelers label by, and with which descriptions (their Scorer.open does the same)
    entries, trained_note = with_training_descriptions(entries, manifest.seen_descriptions)
    labeling, note = choose_rule(manifest, entries)
    notes += [n for n in (trained_note, note) if n]
    for note in notes:
        print(note, file=sys.stderr)
    loop_start = time.perf_counter()
    size = manifest.preprocess.size
    try:
        totals = run_partitions(
            ray, todo, cfg.tiles, size, LabelActor, actor, resources, options, cfg.progress, cfg.decoder,
            manifest.preprocess.resize,
        )  # fmt: skip
    except KeyboardInterrupt:  # Ctrl-C, SIGTERM: say what stays, as the single-process path does
        _say_stopped("interrupted", parts_dir, len(cut), "run again with --resume to finish")
        raise
    loop_seconds = time.perf_counter() - loop_start
    already = sum(len(cut[p]) for p in done)
    finished = len(done) + totals["partitions"] == len(cut)
    summary = Summary(
        totals["done"], totals["skipped"], totals["nodata"], already, time.perf_counter() - start,
        f"ray: {options.actors} {cfg.backend} actor(s) on {device}", notes=notes,
        decode=_decode_line(cfg.decoder), startup_seconds=loop_start - start,
        loop_seconds=loop_seconds, labeling=labeling,
    )  # fmt: skip
    if not finished:  # stopped early: the partitions stay for --resume
        _say_stopped("stopped", parts_dir, len(cut), "run again with --resume to finish")
        summary.total_labeled = summary.labeled
        return summary
    log = _PartsLog(parts_dir)
    if merged:
        written = write_outputs(
            log, out, cfg.top_k, [e.name for e in entries], cfg.class_map, cfg.class_map_scores,
            best_class=cfg.min_score is not None,
        )  # fmt: skip
        summary.total_errors, summary.total_labeled = written["errors"], written["labeled"]
        summary.class_maps = written["class_maps"]
        summary.class_map_scenes = written["class_map_scenes"]
        write_finished(out, header, plan.listing.tiles())  # before the partitions go, for a later --resume
        shutil.rmtree(parts_dir)
        note = drop_other_progress(out, True, parts_dir / RUN_FILE)
        if note:
            print(note, file=sys.stderr)
    else:
        records = list(log.records())
        errors = [r for r in records if "skipped" in r and not r.get("nodata")]
        summary.total_labeled = sum("labels" in r for r in records)
        summary.total_errors = len(errors)
        # beside the partition folder, where the summary line points (as for a labels file)
        write_errors(out, errors)
    return summary


def build_index_ray(cfg, options: RayOptions):  # index.IndexConfig -> IndexSummary
    """rsz-infer index TILES --ray: build_index's job on a Ray cluster; the new rows are merged into the
    index folder at the end. A stopped job keeps its partitions (beside the index) for the next call."""
    from rsz_infer.locking import OutputLock

    with OutputLock(Path(cfg.out), "index call"):
        return _build_index_ray(cfg, options)


def _build_index_ray(cfg, options: RayOptions):  # index.IndexConfig -> IndexSummary
    import pyarrow.parquet as pq

    from rsz_infer import index as ix
    from rsz_infer.images import check_bands_reach, discover_tiles, no_tiles_found, short_of_bands
    from rsz_infer.pipeline import run_log_engine

    start = time.perf_counter()
    model, out = Path(cfg.model), Path(cfg.out)
    manifest, sha, old, tile_options, known = ix.open_index_job(cfg)
    # the actors resolve --precision auto each on its own device, so only an explicit one is recorded
    made_with = None if cfg.precision == "auto" else run_log_engine(cfg.precision, cfg.decoder)
    if made_with:
        ix.check_same_engine(out, old, made_with)
    listed = list(discover_tiles(cfg.inputs, tile_options))
    # the usage errors of the single-process index (images.list_tiles), before Ray starts or a folder is made
    if not listed:
        raise no_tiles_found(cfg.inputs)
    check_bands_reach([s for s in map(short_of_bands, listed) if s], len(listed))
    check = ix.AppendCheck(old, cfg.inputs, cfg.shard)
    for tile in listed:  # every shard's: a tile of another shard is not gone
        check.saw(tile)
    gone = check.gone()
    tiles = shard_tiles(listed, cfg.shard)
    todo_tiles = [t for t in tiles if check.embeds(t)]
    ray = connect(options)
    resources, device = _actor_resources(ray, options, cfg.device)
    parts_dir = out.with_name(f".{out.name}.ray-parts")
    header = {
        "model": sha,
        "tiles": [tile_options.tile_size, tile_options.overlap, list(tile_options.bands or [])],
    }
    cut = partitions(todo_tiles, options.partition_tiles)
    done = open_parts(parts_dir, _run_key(todo_tiles, header, options), resume=True)
    todo = [(p, part) for p, part in enumerate(cut) if p not in done][: options.max_partitions]
    actor = {
        "bundle": str(model),
        "engine_options": {
            "backend": cfg.backend,
            "device": device,
            "batch": cfg.batch,
            "precision": cfg.precision,
        },
        "parts_dir": str(parts_dir),
    }
    loop_start = time.perf_counter()
    size = manifest.preprocess.size
    try:
        totals = run_partitions(
            ray, todo, tile_options, size, EmbedActor, actor, resources, options, cfg.progress, cfg.decoder,
            manifest.preprocess.resize,
        )  # fmt: skip
    except KeyboardInterrupt:
        _say_stopped("interrupted", parts_dir, len(cut), "run the same command to finish")
        raise
    loop_seconds = time.perf_counter() - loop_start
    finished = len(done) + totals["partitions"] == len(cut)
    summary = ix.IndexSummary(
        totals["done"], len(tiles) - len(todo_tiles), totals["skipped"], totals["nodata"],
        f"ray: {options.actors} {cfg.backend} actor(s) on {device}",
        old.info.get("search", "exact") if old else "exact",
        decode=_decode_line(cfg.decoder), startup_seconds=loop_start - start,
        loop_seconds=loop_seconds, holds=len(known),
    )  # fmt: skip
    if not finished:
        _say_stopped("stopped", parts_dir, len(cut), "run the same command to finish")
        return summary
    rows, embeddings, scales, skipped = [], [], [], []
    for path in sorted(parts_dir.glob(PART_GLOB)):
        table = pq.read_table(path)
        shape = json.loads((table.schema.metadata or {}).get(b"scales_shape", b"null"))
        for record, emb, sc in zip(
            table.column("record").to_pylist(),
            table.column("embedding").to_pylist(),
            table.column("scales").to_pylist(),
        ):
            if emb is None:  # a skipped tile (counted by its partition); nodata windows are not errors
                bad = json.loads(record)
                if not bad.get("nodata"):
                    skipped.append(bad)
                continue
            rows.append(json.loads(record))
            embeddings.append(np.asarray(emb, np.float32)[None])
            if sc is not None:
                scales.append(np.asarray(sc, np.float32).reshape([1, *shape]))
    # every changed tile was reached: its row is replaced, or goes with the gone ones when it no longer embeds
    reembedded = {row["tile"] for row in rows} & check.changed
    drop = frozenset(gone | check.changed)
    summary.added = len(rows) - len(reembedded)
    summary.reembedded, summary.removed = len(reembedded), len(drop) - len(reembedded)
    summary.holds += len(rows) - len(drop)
    if rows or drop or old is None:
        summary.search = ix._write_index(
            out, manifest, sha, model, tile_options, old, rows, embeddings, scales, cfg.method, made_with,
            drop=drop,
        )  # fmt: skip
    ix.write_index_errors(out, skipped)
    summary.errors_file = ix.index_errors_path(out)
    shutil.rmtree(parts_dir)
    return summary
