"""Text and image retrieval over tiles: an index folder of image embeddings, exact or FAISS HNSW search,
optional re-ranking with MSA's cross-attention `rerank` graph.

An index folder holds:
    index.json       model (manifest sha256 and folder), tile options, count, embedding size, search method
    embeddings.npy   [N, D] float32, L2-normalised image embeddings
    tiles.jsonl      one line per row: tile id (the input's spelling), path (absolute), window, footprint
    scales.npy       [N, S, Dm] float32 multi-scale features, when the bundle has a rerank graph
    faiss.index      FAISS HNSW graph over the embeddings (inner product), when the search method is "hnsw"
A second `index` call with more tiles adds the new ones and skips those already in; it embeds again the
tiles whose file changed since (AppendCheck: size and mtime, else sha256) and removes the rows of tiles under
its inputs that are gone. The folder is rebuilt beside the old one and renamed over it, so a killed call
leaves the old index intact. Until then a call's batches go to a journal beside the folder
(rsz_infer.index_journal) that the next call folds in: a call killed before it could write the index keeps
what it embedded.
"""

from __future__ import annotations

import dataclasses
import glob
import json
import os
import re
import shutil
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from rsz_infer.api import Embedder
from rsz_infer.backend import open_runner
from rsz_infer.batching import (
    EmbeddedBatch,
    EngineOptions,
    engine_options,
    exit_code,
    is_whole_number,
    run_tiles,
    tile_record,
    warn,
)
from rsz_infer.bundle import DEFAULT_MODEL, Manifest, manifest_sha256, open_bundle
from rsz_infer.class_embeddings import encode_texts, load_tokenizer
from rsz_infer.cluster import in_shard
from rsz_infer.errors import RszError
from rsz_infer.images import (
    DEFAULT_MAX_PIXELS,
    NodataTile,
    Tile,
    TileError,
    TileOptions,
    decode_tile,
    discover_tiles,
    is_gdal_path,
    is_stac_input,
    list_tiles,
    local_file,
    no_tiles_found,
    tile_from_record,
)
from rsz_infer.index_journal import IndexJournal, PendingRows, journal_left, read_journal, remove_journal
from rsz_infer.locking import OutputLock, is_locked
from rsz_infer.outputs import atomic_write, render_errors
from rsz_infer.pipeline import gsd_note, resolve_gsd, run_log_engine
from rsz_infer.preprocess import to_model_input
from rsz_infer.scoring import l2_normalize
from rsz_infer.trust import (
    INDEX_FORMAT,
    check_finite,
    file_changed,
    file_identity,
    load_array,
    read_index_info,
    read_tile_rows,
)

# Below this many rows exact numpy search answers in milliseconds and needs nothing extra; "auto" switches
# to an approximate FAISS HNSW graph above it (when faiss is installed).
ANN_MIN_ROWS = 50_000
ANN_METHODS = ("auto", "exact", "hnsw")
HNSW_NEIGHBOURS = 32  # graph degree M: FAISS's usual default, recall > 0.95 at efSearch 64 on embeddings
FAISS_FILE = "faiss.index"
# what an index folder holds: an append or a merge replaces the whole folder, so one holding anything else
# (a folder of tiles, a file given as --out) is refused instead of being deleted with the old index
INDEX_FILES = frozenset({"index.json", "embeddings.npy", "tiles.jsonl", "scales.npy", FAISS_FILE})
RERANK_BATCH = 64


@dataclass
class Index:
    """A retrieval index folder in memory: `Index.open("idx/").search(text=..., image=..., k=...)`, or
    `with Index.open("idx/") as index:`; close() lets go of its arrays and its memory map of scales.npy."""

    folder: Path
    info: dict
    embeddings: np.ndarray
    tiles: list[dict]
    scales: np.ndarray | None
    closed: bool = field(default=False, compare=False)

    @classmethod
    def open(cls, folder: Path | str) -> Index:
        """The index that `rsz-infer index` (or build_index) wrote to `folder`."""
        return cls.load(folder)

    def close(self) -> None:
        """Drop the embeddings and the memory map of scales.npy (the map closes with its last reference: an
        array taken from it keeps it); searching a closed index raises RszError. Closing twice is fine."""
        self.embeddings = np.zeros((0, self.info["dim"]), np.float32)
        self.scales = None
        self.tiles = []
        self.closed = True

    def __enter__(self) -> Index:
        self._check_open()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _check_open(self) -> None:
        if self.closed:
            raise RszError(f"{self.folder}: this Index was closed; open it again (Index.open)")

    def search(
        self,
        text: str | None = None,
        image: str | Path | np.ndarray | None = None,
        k: int = 20,
        rerank: int = 0,
        model: Path | str | None = None,
        backend: str = "auto",
        device: str = "auto",
    ) -> list[Hit]:
        """Top-k tiles for a sentence or a query image (a file or an HxWx3 array), best first.

        rerank > 0 re-scores that many candidates with the bundle's rerank graph (MSA, text only); model:
        the bundle that built the index (default: the folder index.json names).
        """
        return search_index(self, text, image, k, rerank, Path(model) if model else None, backend, device)

    @classmethod
    def load(cls, folder: Path | str) -> Index:
        folder = Path(folder)
        _recover_swap(folder)
        info_path = folder / "index.json"
        if not info_path.is_file():
            raise RszError(f"{folder}: not an rsz index (no index.json); make one with rsz-infer index")
        info = read_index_info(info_path)
        embeddings = load_array(folder / "embeddings.npy", ndim=2)
        # every open: the embeddings are read into memory anyway, and every search and merge uses them all
        check_finite(embeddings, folder / "embeddings.npy")
        tiles = read_tile_rows(folder / "tiles.jsonl")
        scales_path = folder / "scales.npy"
        # [N, S, Dm], memory-mapped: checked for NaN only where rows are read (rerank, append, merge)
        scales = load_array(scales_path, ndim=3, mmap=True) if scales_path.is_file() else None
        if len(tiles) != embeddings.shape[0] or embeddings.shape[1] != info["dim"]:
            raise RszError(
                f"{folder}: tiles.jsonl, embeddings.npy and index.json disagree "
                f"({len(tiles)} rows, {embeddings.shape[0]}x{embeddings.shape[1]} embeddings, "
                f"dim {info['dim']})"
            )
        if info.get("count", len(tiles)) != len(tiles):
            raise RszError(f"{info_path}: count {info['count']} but the index holds {len(tiles)} rows")
        if scales is not None and scales.shape[0] != embeddings.shape[0]:
            raise RszError(f"{scales_path}: {scales.shape[0]} rows but the index has {embeddings.shape[0]}")
        return cls(folder, info, embeddings, tiles, scales)

    def load_ann(self):
        """The FAISS HNSW graph of an "hnsw" index, or None (exact search) when there is none or no faiss."""
        self._check_open()
        path = self.folder / FAISS_FILE
        faiss = _faiss_or_none()
        # without faiss, exact search gives the best possible answer, only slower
        if self.info.get("search") != "hnsw" or not path.is_file() or faiss is None:
            return None
        ann = faiss.read_index(str(path))
        if ann.ntotal != self.embeddings.shape[0]:
            raise RszError(f"{path}: holds {ann.ntotal} rows but the index {self.embeddings.shape[0]}")
        return ann


def _faiss_or_none():
    try:
        import faiss
    except ImportError:
        return None
    return faiss


def _faiss():
    faiss = _faiss_or_none()
    if faiss is None:
        raise RszError("--search-method hnsw: faiss is not installed (pip install 'rsz[retrieval]')")
    return faiss


def _search_method(requested: str, rows: int, previous: str | None) -> str:
    """ "exact" or "hnsw" for an index of `rows` rows; an existing index keeps its method under "auto"."""
    if requested != "auto":
        return requested
    wants_graph = previous == "hnsw" or rows >= ANN_MIN_ROWS
    return "hnsw" if wants_graph and _faiss_or_none() is not None else "exact"


def build_ann(embeddings: np.ndarray, old=None):
    """A FAISS HNSW graph (inner product = cosine on normalised rows); `old` already holds the first rows."""
    faiss = _faiss()
    ann = old
    if ann is None:
        ann = faiss.IndexHNSWFlat(embeddings.shape[1], HNSW_NEIGHBOURS, faiss.METRIC_INNER_PRODUCT)
    ann.add(np.ascontiguousarray(embeddings[ann.ntotal :], dtype=np.float32))
    return ann


@dataclass
class IndexConfig:
    inputs: list[str]
    model: Path = DEFAULT_MODEL
    out: Path = Path("idx")
    tiles: TileOptions | None = None  # None: TileOptions(), or the existing index's own options
    backend: str = "auto"
    device: str = "auto"
    batch: int = 32
    workers: int = 0  # decode threads; 0: one per core but one, at most 8
    progress: bool = True
    method: str = (
        "auto"  # "exact" (numpy), "hnsw" (FAISS graph, approximate), "auto" (hnsw from ANN_MIN_ROWS)
    )
    decoder: str = "auto"
    preprocess: str = "auto"
    gsd: str = "auto"  # auto | off | metres per pixel (pipeline.resolve_gsd); an existing index keeps its own
    precision: str = "auto"  # image graph variant (rsz_infer.backend)
    shard: tuple[int, int] | None = None  # (I, N): only the tiles of shard I of N (rsz_infer.cluster)
    # the tile options the caller set (the CLI: those on the command line), which an append must not
    # contradict; None: all of `tiles` when given, and `gsd` unless "auto"
    given: frozenset[str] | None = None

    @property
    def engine(self) -> EngineOptions:
        return engine_options(self)


TILE_OPTION_FLAGS = {"tile_size": "--tile-size", "overlap": "--overlap", "bands": "--bands", "gsd": "--gsd"}


def _check_same_tile_options(cfg: IndexConfig, out: Path, manifest: Manifest, kept: TileOptions) -> None:
    """An append keeps the index's tile options (one index, one kind of tile); a different --tile-size,
    --overlap, --bands or --gsd the caller set is refused in one line rather than silently ignored."""
    given = cfg.given
    if given is None:
        given = frozenset(["tile_size", "overlap", "bands"] if cfg.tiles else []) | (
            {"gsd"} if str(cfg.gsd).strip().lower() != "auto" else set()
        )

    def options(tiles: TileOptions) -> dict:  # bands as a tuple, None and [] alike (the default bands)
        return {"tile_size": tiles.tile_size, "overlap": tiles.overlap, "bands": tuple(tiles.bands or ())}

    asked = options(cfg.tiles) if cfg.tiles is not None else {}
    asked["gsd"] = resolve_gsd(cfg.gsd, manifest, kept).gsd
    recorded = options(kept) | {"gsd": kept.gsd}

    def show(name: str, value) -> str:
        if name == "bands":
            return ",".join(map(str, value)) or "(none)"
        return "off" if value is None else f"{value:g}"

    differ = [
        f"{TILE_OPTION_FLAGS[k]} {show(k, recorded[k])} (asked: {show(k, asked[k])})"
        for k in TILE_OPTION_FLAGS
        if k in given and k in asked and asked[k] != recorded[k]
    ]
    if differ:
        raise RszError(
            f"{out}: the index was built with {', '.join(differ)}; an append keeps the index's tile options "
            "(leave the option out, or use a new --out)"
        )


@dataclass
class IndexSummary:
    added: int  # tiles embedded in this call
    known: int  # tiles of this call's inputs already in the index (not embedded again)
    skipped: int  # bad tiles
    nodata: int  # empty scene windows
    backend: str
    search: str  # the index's search method after this call
    decode: str = "decode pillow, preprocess pillow"
    startup_seconds: float = 0.0
    loop_seconds: float = 0.0
    resize_note: str | None = None  # tiles resized more than 4x to the model's input (TileCounts)
    errors_file: Path | None = None  # where the skipped tiles are listed (write_index_errors), when written
    holds: int = 0  # tiles in the index after this call (earlier calls' inputs too)
    reembedded: int = 0  # tiles in the index whose file changed since: embedded again, their rows replaced
    removed: int = 0  # rows of tiles under this call's inputs that are gone (or no longer embed): removed

    @property
    def exit_code(self) -> int:
        return exit_code(self.added + self.reembedded + self.known, self.skipped, self.nodata)

    def line(self, out: Path) -> str:
        rate = (self.added + self.reembedded) / self.loop_seconds if self.loop_seconds > 0 else 0.0
        changes = (
            f", {self.reembedded} re-embedded (changed since indexed), {self.removed} removed (gone)"
            if self.reembedded or self.removed
            else ""
        )
        line = (
            f"rsz-infer index: {self.added} tiles added{changes}, {self.known} already in, "
            f"{self.skipped} skipped, "
            f"{self.nodata} nodata, index now holds {self.holds} tiles, backend {self.backend}, "
            f"{self.search} search, {self.decode}, "
            f"start-up {self.startup_seconds:.1f} s, {self.loop_seconds:.1f} s at {rate:.1f} tiles/s"
            + (f", {self.resize_note}" if self.resize_note else "")
            + f" -> {out}"
            + (f" (skipped tiles in {self.errors_file})" if self.skipped and self.errors_file else "")
        )
        if self.exit_code == 2:
            line += "\nerror: nothing was indexed: every tile was skipped"
        return line


def index_row(tile: Tile) -> dict:
    """A tile's row in tiles.jsonl (the single-process and the Ray path write the same rows)."""
    # sha256: what a gallery checks before it shows the file again (rsz_infer.trust); size and mtime_ns:
    # how the next append sees an unchanged file without reading it (AppendCheck)
    return tile_record(tile) | file_identity(tile.path) | {"path": _absolute(tile.path)}


def _absolute(path: str) -> str:
    """A local file's path made absolute (a TIFF page's file inside its name): a row's `path` is opened again
    by searches from any folder (gallery thumbnails, appends' change checks), while the tile id keeps the
    spelling of the input, which appends and labels match on. Joined, not normalised: `link/..` stays what
    the file system makes of it. GDAL virtual paths and URLs stay as given."""
    local = local_file(path)
    if local is None or os.path.isabs(local):
        return path
    return path[: len(path) - len(local)] + os.path.join(os.getcwd(), local)


class AppendCheck:
    """Which rows of the index an append over `inputs` keeps, embeds again or removes.

    Fed every tile the call lists (`saw`, all shards): a row whose tile is listed and whose file changed
    since it was embedded (trust.file_changed) is embedded again, in this call's shard; a row whose tile is
    not listed although its file lies under an input (a folder named, or a file named: its windows) is gone.
    Rows of other inputs (folder A when this call indexes folder B), remote files and STAC assets stay.
    """

    def __init__(self, old: Index | None, inputs: list[str], shard: tuple[int, int] | None) -> None:
        self.rows = {t["tile"]: t for t in old.tiles} if old else {}
        self.shard = shard
        self.listed: set[str] = set()  # ids of index rows this call's inputs list
        self.changed: set[str] = set()  # of those, in this shard: the file changed since
        self._folders, self._files = _input_roots(inputs)
        self._verdicts: dict[tuple, bool] = {}  # one stat (and hash) per file, not per window

    def saw(self, tile: Tile) -> None:
        row = self.rows.get(tile.id)
        if row is None or tile.id in self.listed:
            return
        self.listed.add(tile.id)
        if in_shard(tile.id, self.shard):
            key = (row["path"], row.get("sha256"), row.get("size"), row.get("mtime_ns"))
            if key not in self._verdicts:
                self._verdicts[key] = file_changed(row)
            if self._verdicts[key]:
                self.changed.add(tile.id)

    def embeds(self, tile: Tile) -> bool:
        """This call embeds the tile: in its shard, and new or changed."""
        return in_shard(tile.id, self.shard) and (tile.id not in self.rows or tile.id in self.changed)

    def gone(self) -> set[str]:
        """Rows under this call's inputs whose tile the listing no longer has (after every `saw`)."""
        return {
            tile
            for tile, row in self.rows.items()
            if tile not in self.listed and self._under_inputs(row["path"])
        }

    def _under_inputs(self, path: str) -> bool:
        local = local_file(path)
        if local is None:
            return False
        name = os.path.abspath(local)
        return name in self._files or any(name.startswith(folder) for folder in self._folders)


def _input_roots(inputs: list[str]) -> tuple[list[str], set[str]]:
    """(folders with a trailing separator, files) among the inputs, as absolute paths spelled as given (not
    resolved: tile paths are the inputs' spelling too); GDAL paths, URLs and STAC JSON name no local tree."""
    folders, files = [], set()
    for name in map(str, inputs):
        if is_gdal_path(name):
            continue
        if os.path.isdir(name):
            folders.append(os.path.join(os.path.abspath(name), ""))
        elif not is_stac_input(Path(name)):
            files.add(os.path.abspath(name))
    return folders, files


def open_index_job(cfg: IndexConfig) -> tuple[Manifest, str, Index | None, TileOptions, set[str]]:
    """What build_index and the Ray path (cluster.build_index_ray) do before embedding: check --search-method
    (faiss for hnsw), then the bundle and its sha256, the index already at cfg.out (None), the tile options
    (an existing index keeps its own) and the tiles it holds. --batch first: the Ray actors would find a bad
    one only after the partition folder was made."""
    if cfg.batch < 1:
        raise RszError(f"--batch {cfg.batch}: must be at least 1")
    if cfg.method not in ANN_METHODS:
        raise RszError(f"--search-method {cfg.method}: expected one of {', '.join(ANN_METHODS)}")
    if cfg.method == "hnsw":
        _faiss()  # fail before embedding anything
    model, out = Path(cfg.model), Path(cfg.out)
    manifest = open_bundle(model)
    sha = manifest_sha256(model)
    _recover_swap(out)
    check_index_out(out)
    old = Index.load(out) if (out / "index.json").is_file() else None
    if old is not None and old.info["model"] != sha:
        raise RszError(f"{out}: index was made with another model ({old.info['model_dir']}); use a new --out")
    pending = read_journal(out)
    if pending is not None:
        old = fold_in_journal(out, manifest, sha, model, old, pending)
    tile_options = cfg.tiles
    if old is not None:
        asset = cfg.tiles.asset if cfg.tiles else None  # STAC inputs of this call
        limit = cfg.tiles.max_pixels if cfg.tiles else DEFAULT_MAX_PIXELS  # this call's --max-pixels
        tile_options = TileOptions(
            **{**old.info["tile_options"], "bands": _bands(old.info), "asset": asset, "max_pixels": limit}
        )
        _check_same_tile_options(cfg, out, manifest, tile_options)
    if old is None:  # an existing index keeps its own GSD (in its tile_options)
        tile_options = resolve_gsd(cfg.gsd, manifest, tile_options or TileOptions())
    for note in gsd_note(tile_options, manifest):
        warn(note)
    known = {t["tile"] for t in old.tiles} if old else set()
    return manifest, sha, old, tile_options, known


def check_index_out(out: Path) -> None:
    """RszError unless `out` is missing, an empty folder or an index folder: writing the index swaps a new
    folder in and deletes the old one, with whatever else it held (a folder of tiles given as --out)."""
    if out.exists() and not out.is_dir():
        raise RszError(f"--out {out}: exists and is not a folder (an index is a folder); use a new --out")
    other = sorted(p.name for p in out.iterdir() if p.name not in INDEX_FILES) if out.is_dir() else []
    if other:
        more = f" and {len(other) - 1} more" if len(other) > 1 else ""
        raise RszError(
            f"--out {out}: holds files that are not an index's ({other[0]!r}{more}), which writing the index "
            "would delete; use a new or empty folder"
        )


def fold_in_journal(
    out: Path, manifest: Manifest, sha: str, model: Path, old: Index | None, pending: PendingRows
) -> Index | None:
    """Write the rows a stopped call left in its journal into the index at `out` (made if there is none),
    then remove the journal; returns the index now at `out`. Rows already in the index (a kill after the
    last fold's swap, before the journal went) are left out; a row of a tile the index holds otherwise is
    the tile embedded again (its file changed) and replaces the index's row."""
    info = pending.info
    if info["model"] != sha:
        raise RszError(
            f"{out}: {pending.folder} holds {len(pending.tiles)} tiles a stopped index call embedded with "
            f"another model ({info['model_dir']}); rerun that call, or delete {pending.folder}"
        )
    known = {t["tile"]: t for t in old.tiles} if old else {}
    keep = [i for i, t in enumerate(pending.tiles) if known.get(t["tile"]) != t]
    replaced = frozenset(pending.tiles[i]["tile"] for i in keep) & known.keys()
    if keep:
        if old is not None:
            check_same_engine(out, old, info.get("engine") or {})
            tile_options = TileOptions(**old.info["tile_options"], bands=_bands(old.info))
        else:
            tile_options = TileOptions(**info["tile_options"], bands=_bands(info))
        scales = [pending.scales[keep]] if pending.scales is not None else []
        method = old.info.get("search", "exact") if old else "auto"
        rows = [pending.tiles[i] for i in keep]
        _write_index(
            out, manifest, sha, model, tile_options, old, rows, [pending.embeddings[keep]], scales, method,
            info.get("engine"), drop=replaced,
        )  # fmt: skip
        warn(f"{len(rows)} tiles a stopped index call embedded (kept in {pending.folder}) are now in {out}")
    remove_journal(pending.folder)
    return Index.load(out) if keep else old


def _stopped_call(pending: Path) -> str:
    return f"a stopped index call left tiles in {pending} (run that index call again to add them)"


def journal_header(
    manifest: Manifest, sha: str, model: Path, tile_options: TileOptions, made_with: dict
) -> dict:
    """header.json of a call's journal: the index.json fields its rows belong to (IndexJournal adds the
    shape of a row of scales at the first batch)."""
    return {
        "model": sha,
        "model_dir": str(model.resolve()),
        "tile_options": _tile_options_record(tile_options),
        "bands": list(tile_options.bands) if tile_options.bands else None,
        "dim": manifest.embedding_dim,
        "engine": made_with,
    }


def build_index(cfg: IndexConfig) -> IndexSummary:
    """Embed the tiles of cfg.inputs not yet in the index at cfg.out (known tiles are skipped, changed ones
    embedded again, gone ones removed: AppendCheck).

    One call at a time writes an index folder (rsz_infer.locking): a second append fails at once.
    """
    with OutputLock(Path(cfg.out), "index call"):
        return _build_index(cfg)


def _build_index(cfg: IndexConfig) -> IndexSummary:
    start = time.perf_counter()
    model, out, method = Path(cfg.model), Path(cfg.out), cfg.method
    manifest, sha, old, tile_options, known = open_index_job(cfg)
    check = AppendCheck(old, cfg.inputs, cfg.shard)

    # listed twice (a count, then the run), never held: memory does not grow with a scene's declared size;
    # the first pass also finds the index's changed and gone tiles (held: at most the index's rows)
    def listed(tile: Tile) -> bool:
        check.saw(tile)
        return check.embeds(tile)

    listing = list_tiles(cfg.inputs, tile_options, keep=listed)
    if not listing.found:  # as rsz-infer label: an empty input is a usage error, not an empty index
        raise no_tiles_found(cfg.inputs)
    total = listing.count
    gone = check.gone()
    # this call's tiles the index holds and keeps (its other tiles are not this call's business)
    already_in = sum(in_shard(t, cfg.shard) for t in check.listed) - len(check.changed)
    todo = (t for t in discover_tiles(cfg.inputs, tile_options) if check.embeds(t))
    with_scales = "rerank" in manifest.graphs
    batches: list[tuple[list[dict], np.ndarray, np.ndarray | None]] = []  # (rows, embeddings, scales)
    skipped: list[dict] = []
    not_embedded: set[str] = set()  # changed tiles this call reached but could not embed: their rows go
    journal: IndexJournal | None = None  # made once the engine (its precision) is known

    def keep(batch: EmbeddedBatch) -> None:
        not_embedded.update(tile.id for tile, _ in batch.skipped if tile.id in check.changed)
        bad = [(tile, err) for tile, err in batch.skipped if not isinstance(err, NodataTile)]
        skipped.extend({"tile": tile.id, "skipped": str(err)} for tile, err in bad)  # OUT.errors.csv rows
        if not batch.tiles:
            return
        new = (
            [index_row(tile) for tile in batch.tiles],
            l2_normalize(batch.outputs["embedding"]).astype(np.float32),
            batch.outputs["scales"].astype(np.float32) if with_scales else None,
        )
        journal.append(*new)  # on disk before it counts as done
        batches.append(new)  # one step: a Ctrl-C never leaves rows without their embeddings

    with Embedder(model, manifest=manifest, tiles=tile_options, **dataclasses.asdict(cfg.engine)) as embedder:
        engine = embedder.engine
        made_with = run_log_engine(engine.runner.precision, engine.decoder.name)
        check_same_engine(out, old, made_with)
        for note in engine.notes:
            warn(note)
        journal = IndexJournal(out, journal_header(manifest, sha, model, tile_options, made_with))
        try:
            counts = run_tiles(engine, todo, tile_options, keep, cfg.progress, started=start, total=total)
        finally:
            journal.close()
    rows = [row for batch_rows, _, _ in batches for row in batch_rows]
    embeddings = [emb for _, emb, _ in batches]
    scales = [sc for _, _, sc in batches if sc is not None]
    # replaced rows, and those of tiles gone or changed into ones that no longer embed; an interrupted call
    # keeps the old rows of changed tiles it did not reach (the next call embeds them again)
    reembedded = {row["tile"] for row in rows} & check.changed
    drop = frozenset(gone | reembedded | not_embedded)
    # an interrupted call keeps what finished: the next `index` call skips those tiles
    if rows or drop or old is None or method not in ("auto", old.info.get("search", "exact")):
        search = _write_index(
            out, manifest, sha, model, tile_options, old, rows, embeddings, scales, method, made_with,
            drop=drop,
        )  # fmt: skip
    else:
        search = old.info.get("search", "exact")
    journal.remove()  # its rows are in the index now
    write_index_errors(out, skipped)
    if counts.interrupted:
        print(
            f"interrupted: {len(rows)} new tiles saved in {out}; run the same command to add the rest",
            file=sys.stderr,
        )
        raise KeyboardInterrupt
    backend = f"{engine.runner.name} {engine.runner.precision}"
    return IndexSummary(
        len(rows) - len(reembedded), already_in, counts.skipped, counts.nodata, backend, search,
        decode=engine.decode_line(), startup_seconds=counts.startup_seconds, loop_seconds=counts.loop_seconds,
        resize_note=counts.resize_note(), errors_file=index_errors_path(out),
        holds=len(known) - len(drop) + len(rows), reembedded=len(reembedded),
        removed=len(drop) - len(reembedded),
    )  # fmt: skip


def index_errors_path(out: Path) -> Path:
    """Where `rsz-infer index --out OUT` lists the tiles it skipped: OUT.errors.csv beside the folder (not
    inside it: the folder is rebuilt and swapped on each append, and holds only what the index reads)."""
    return out.with_name(out.name + ".errors.csv")


def write_index_errors(out: Path, skipped: list[dict]) -> None:
    """The skipped tiles of this call ({"tile", "skipped": reason}) as OUT.errors.csv, written atomically
    like label's errors.csv. A call that skipped none removes an earlier call's list: skipped tiles are never
    in the index, so every call tries them again and its own list is the whole, current one."""
    path = index_errors_path(out)
    if skipped:
        atomic_write(path, render_errors(skipped))
    else:
        path.unlink(missing_ok=True)


def check_same_engine(out: Path, old: Index | None, made_with: dict) -> None:
    """An index holds embeddings of one image graph precision (and decoder, for pillow-draft): appending
    INT8 rows to FP32 ones would rank tiles by two slightly different models. `made_with` is
    pipeline.run_log_engine's record; indexes written before it was kept are not checked."""
    if old is None or "engine" not in old.info or old.info["engine"] == made_with:
        return
    was, now = _engine_words(old.info["engine"]), _engine_words(made_with)
    raise RszError(f"{out}: index was made with {was}, this call embeds with {now}; use those or a new --out")


def _engine_words(made_with: dict) -> str:
    return f"--precision {made_with.get('precision')}" + (
        f" --decoder {made_with['decoder']}" if "decoder" in made_with else ""
    )


def merge_indexes(out: Path | str, sources: list[Path | str], method: str = "auto") -> int:
    """The indexes of `--shard I/N` runs (one bundle, one set of tile options) as one index at `out`; a tile
    in several keeps its first row. Returns the row count. The sources stay as they are."""
    out = Path(out)
    if not sources:
        raise RszError("merge: name the index folders to merge")
    if method not in ANN_METHODS:
        raise RszError(f"--search-method {method}: expected one of {', '.join(ANN_METHODS)}")
    for source in map(Path, sources):
        pending = journal_left(source)
        if pending is not None:  # its tiles are in no index yet: the merge would lack them
            running = "an index call is adding tiles to it right now"
            state = running if is_locked(source) else _stopped_call(pending)
            raise RszError(f"{source}: {state}; merge when it has finished")
    indexes: list[Index] = []
    try:
        for source in sources:
            indexes.append(Index.open(source))
        return _merge_indexes(out, indexes, method)
    finally:
        for index in indexes:
            index.close()


def _merge_indexes(out: Path, indexes: list[Index], method: str) -> int:
    first = indexes[0]
    for index in indexes[1:]:
        same = ("model", "tile_options", "bands", "engine")
        if any(index.info.get(key) != first.info.get(key) for key in same):
            raise RszError(
                f"{index.folder}: made with another model, tile options or precision than {first.folder}; "
                "only shards of one run merge"
            )
    with OutputLock(out, "index call"):
        if out.exists() and (not out.is_dir() or any(out.iterdir())):  # a file too: never swapped away
            raise RszError(f"{out}: exists; merge into a new folder")
        model = Path(first.info["model_dir"])
        manifest = open_bundle(model)
        if manifest_sha256(model) != first.info["model"]:
            raise RszError(f"{model}: not the bundle that built {first.folder} any more")
        tile_options = TileOptions(**first.info["tile_options"], bands=_bands(first.info))
        seen = {t["tile"] for t in first.tiles}
        rows, embeddings, scales = [], [], []
        for index in indexes[1:]:
            keep = [i for i, t in enumerate(index.tiles) if t["tile"] not in seen]
            seen.update(index.tiles[i]["tile"] for i in keep)
            rows += [index.tiles[i] for i in keep]
            embeddings.append(index.embeddings[keep])
            if index.scales is not None:
                check_finite(index.scales, index.folder / "scales.npy")  # the first's: in _write_index
                scales.append(np.asarray(index.scales)[keep])
        # the first index is the base, the others append to it: the same writer as `rsz-infer index`
        _write_index(
            out, manifest, first.info["model"], model, tile_options, first, rows, embeddings, scales, method,
            None,  # the sources' own record (they all have the same)
        )  # fmt: skip
        return len(first.tiles) + len(rows)


def _write_index(
    out, manifest, sha, model, tile_options, old, rows, embeddings, scales, method, made_with: dict | None,
    drop: frozenset[str] = frozenset(),
) -> str:  # fmt: skip
    """Write `old`'s rows but those whose tile is in `drop` (replaced or gone), then `rows`."""
    with_scales = "rerank" in manifest.graphs
    old_rows = old.tiles if old else []
    kept = None  # old's row numbers that stay, when some go
    if old is not None and any(t["tile"] in drop for t in old_rows):
        kept = [i for i, t in enumerate(old_rows) if t["tile"] not in drop]
        old_rows = [old_rows[i] for i in kept]
    emb_parts = ([old.embeddings if kept is None else old.embeddings[kept]] if old else []) + embeddings
    all_emb = np.concatenate(emb_parts) if emb_parts else np.zeros((0, manifest.embedding_dim), np.float32)
    all_scales = None
    if with_scales:
        old_scales = []
        if old is not None and old.scales is not None:
            check_finite(old.scales, old.folder / "scales.npy")  # read whole here anyway: copied over
            old_scales = [np.asarray(old.scales) if kept is None else np.asarray(old.scales[kept])]
        scale_parts = old_scales + scales
        all_scales = np.concatenate(scale_parts) if scale_parts else None
    info = {
        "format": INDEX_FORMAT,
        "model": sha,
        "model_dir": str(model.resolve()),
        "model_kind": manifest.model_kind,
        "tile_options": _tile_options_record(tile_options),
        "bands": list(tile_options.bands) if tile_options.bands else None,
        "count": int(all_emb.shape[0]),
        "dim": int(all_emb.shape[1]),
        "search": _search_method(method, int(all_emb.shape[0]), old.info.get("search") if old else None),
    }
    made_with = made_with or (old.info.get("engine") if old else None)
    if made_with:  # image graph precision (and pillow-draft): appends must match (check_same_engine)
        info["engine"] = made_with
    ann = None
    if info["search"] == "hnsw":
        # Appending adds the new rows to the existing graph instead of rebuilding it; a graph that loses
        # rows is built again (HNSW has no cheap removal)
        ann = build_ann(all_emb, old.load_ann() if old and kept is None else None)
    tiles = old_rows + rows
    _write_index_folder(out, info, all_emb.astype(np.float32), tiles, all_scales, ann)
    return info["search"]


def _tile_options_record(tile_options: TileOptions) -> dict:
    return {"tile_size": tile_options.tile_size, "overlap": tile_options.overlap, "gsd": tile_options.gsd}


def _bands(info: dict) -> tuple[int, ...] | None:
    return tuple(info["bands"]) if info.get("bands") else None


def _write_index_folder(
    out: Path, info: dict, emb: np.ndarray, tiles: list[dict], scales: np.ndarray | None, ann
) -> None:
    """Write the whole index into a sibling folder, then swap it in.

    The swap is one atomic exchange of the two folders (renameat2 RENAME_EXCHANGE), so a kill at any
    moment leaves the old index or the new one at `out`, never none. A failed write (a full disk) removes
    the sibling and names the file.
    """
    tmp = out.with_name(f".{out.name}.{os.getpid()}.tmp")
    _remove_stale_siblings(out)
    try:
        tmp.mkdir(parents=True)
        np.save(tmp / "embeddings.npy", emb)
        if scales is not None:
            np.save(tmp / "scales.npy", scales)
        if ann is not None:
            _faiss().write_index(ann, str(tmp / FAISS_FILE))
        with open(tmp / "tiles.jsonl", "w", encoding="utf-8") as f:
            f.writelines(json.dumps(t) + "\n" for t in tiles)
        (tmp / "index.json").write_text(json.dumps(info, indent=2), encoding="utf-8")
    except (OSError, RuntimeError) as err:  # faiss raises RuntimeError for its own write failures
        shutil.rmtree(tmp, ignore_errors=True)
        reason = getattr(err, "strerror", None) or str(err).splitlines()[0]
        raise RszError(f"{out}: cannot write the index ({reason}); the old index is unchanged") from None
    if out.exists() and exchange_folders(tmp, out):
        shutil.rmtree(tmp, ignore_errors=True)  # now holds the old index
        return
    old = out.with_name(f".{out.name}.{os.getpid()}.old")
    if out.exists():
        os.replace(out, old)  # no atomic exchange here: Index.load puts `old` back if a kill lands now
    os.replace(tmp, out)
    shutil.rmtree(old, ignore_errors=True)


def _remove_stale_siblings(out: Path) -> None:
    """What a killed index call of `out` left beside it: a half-written `.NAME.PID.tmp` (a kill while it
    wrote, as large as the index), and a `.NAME.PID.old` kept past the fallback swap while `out` exists (no
    longer needed by _recover_swap). The caller holds `out`'s OutputLock, so no other call is writing them."""
    stale = re.compile(rf"\.{re.escape(out.name)}\.\d+\.(tmp|old)")
    for path in out.parent.glob(f".{glob.escape(out.name)}.*"):
        if stale.fullmatch(path.name) and (path.name.endswith(".tmp") or out.exists()):
            shutil.rmtree(path, ignore_errors=True)


def exchange_folders(a: Path, b: Path) -> bool:
    """Swap two paths atomically (Linux renameat2 RENAME_EXCHANGE); False where the system cannot."""
    import ctypes

    try:
        libc = ctypes.CDLL(None, use_errno=True)
        renameat2 = libc.renameat2
    except (OSError, AttributeError):
        return False
    at_fdcwd, rename_exchange = -100, 2
    return renameat2(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), rename_exchange) == 0


def _recover_swap(folder: Path) -> None:
    """A kill between the two renames of the fallback swap left the old index beside `folder`: restore it."""
    if folder.exists():
        return
    left = sorted(folder.parent.glob(f".{folder.name}.*.old"))
    if left and (left[-1] / "index.json").is_file():
        os.replace(left[-1], folder)


# ---------------------------------------------------------------- search


@dataclass
class Hit:
    rank: int
    score: float  # cosine similarity (or the rerank score when re-ranked)
    tile: dict  # the index row: tile, path, window, footprint
    similarity: float  # cosine similarity of embeddings, before any re-ranking


def _model_of(index: Index, model: Path | None) -> tuple[Path, Manifest]:
    model = Path(model or index.info["model_dir"])
    manifest = open_bundle(model)
    if manifest_sha256(model) != index.info["model"]:
        raise RszError(f"{model}: not the model that built {index.folder}; search with the index's own model")
    return model, manifest


def nearest(embeddings: np.ndarray, query: np.ndarray, k: int, ann=None) -> tuple[np.ndarray, np.ndarray]:
    """Indices and cosine scores of the k rows most similar to the (normalised) query, best first.

    Exact unless `ann` (a FAISS HNSW graph over the same rows) is given.
    """
    k = min(k, embeddings.shape[0])
    if ann is not None:
        ann.hnsw.efSearch = max(64, 2 * k)  # candidates explored: recall grows with it, so does time
        scores, idx = ann.search(np.ascontiguousarray(query[None], dtype=np.float32), k)
        found = idx[0] >= 0  # FAISS pads with -1 when the graph yields fewer than k
        return idx[0][found], scores[0][found]
    scores = embeddings @ query
    idx = np.argpartition(-scores, k - 1)[:k] if k < len(scores) else np.arange(len(scores))
    idx = idx[np.argsort(-scores[idx], kind="stable")]
    return idx, scores[idx]


def search(
    index_dir: Path | str,
    text: str | None = None,
    image: Path | str | None = None,
    k: int = 20,
    rerank: int = 0,
    model: Path | None = None,
    backend: str = "auto",
    device: str = "auto",
) -> list[Hit]:
    """Top-k tiles for a sentence or a query image; rerank > 0 re-scores that many candidates (text only)."""
    with Index.open(index_dir) as index:
        return index.search(text, image, k, rerank, model, backend, device)


def search_index(
    index: Index,
    text: str | None,
    image: str | Path | np.ndarray | None,
    k: int,
    rerank: int,
    model: Path | None,
    backend: str,
    device: str,
) -> list[Hit]:
    index._check_open()  # a closed index holds no rows: it would answer "nothing found"
    if (text is None) == (image is None):
        raise RszError("search: give exactly one of --text or --image")
    for name, count in (("k", k), ("rerank", rerank)):  # k=2.0 was a TypeError deep inside numpy
        if not is_whole_number(count):  # True was k=1
            raise RszError(f"{name} {count!r}: expected a whole number")
    if text is not None and not isinstance(text, str):  # a list of sentences is one query at a time
        raise RszError(f"text: a {type(text).__name__}, expected one sentence (a str)")
    if k < 1:
        raise RszError(f"-k {k}: must be at least 1")
    if rerank < 0:  # `if rerank:` below would re-rank the k candidates of a negative count
        raise RszError(f"--rerank {rerank}: must be at least 0 (0: no re-ranking)")
    pending = journal_left(index.folder)
    if pending is not None and not is_locked(index.folder):  # a running append is no news
        warn(f"{index.folder}: {_stopped_call(pending)}; this search cannot find those tiles")
    if index.embeddings.shape[0] == 0:
        return []
    model, manifest = _model_of(index, model)
    text_out = None
    if text is not None:
        if not text.strip():
            raise RszError("--text: the query is empty")
        tokenizer = load_tokenizer(model, manifest)
        if tokenizer.cut([text])[0]:  # the tokenizer drops the end without a trace: the user hears it
            warn(
                f"--text: the query is longer than the {manifest.max_text_length} tokens the model reads: "
                "the rest is ignored (shorten it)"
            )
        runner = open_runner(model, manifest, "text", backend, device)
        try:
            text_out = encode_texts(runner, tokenizer, [text])
        finally:
            runner.close()
        query = text_out["embedding"][0]
    else:
        query = _embed_image(image, model, manifest, backend, device)
    query = l2_normalize(query.astype(np.float32))
    if query.shape[0] != index.embeddings.shape[1]:
        what = "--text" if text is not None else "--image"
        raise RszError(
            f"{what}: the {manifest.model_kind} model's query embeddings are {query.shape[0]}-d but the "
            f"index's tile embeddings {index.embeddings.shape[1]}-d (text search needs an MSA or CLIP index)"
        )
    idx, sims = nearest(index.embeddings, query, max(k, rerank), index.load_ann())
    scores = sims
    if rerank:
        if text_out is None:
            raise RszError("--rerank: re-ranking compares a sentence with tiles; use it with --text")
        if "rerank" not in manifest.graphs or index.scales is None:
            raise RszError(
                f"--rerank: the {manifest.model_kind} model has no rerank graph (only MSA bundles do)"
            )
        scores = _rerank_scores(
            model, manifest, index.scales, index.folder / "scales.npy", idx, text_out, backend, device
        )
        order = np.argsort(-scores, kind="stable")
        idx, sims, scores = idx[order], sims[order], scores[order]
    return [
        Hit(rank=r + 1, score=float(scores[r]), tile=index.tiles[int(idx[r])], similarity=float(sims[r]))
        for r in range(min(k, len(idx)))
    ]


def _embed_image(
    image: str | Path | np.ndarray, model: Path, manifest: Manifest, backend: str, device: str
) -> np.ndarray:
    if isinstance(image, np.ndarray):
        from rsz_infer.api import array_to_rgb

        try:
            rgb, _ = array_to_rgb(image, where="image")
        except TileError as err:  # too small or all NaN: one query image, so its error
            raise RszError(f"image: {err}") from None
    elif not isinstance(image, (str, os.PathLike)):  # a PIL image: never a TypeError from Path()
        raise RszError(f"image: a {type(image).__name__} is not an array or a path (np.asarray it)")
    else:
        # a GDAL path goes to GDAL as given, as the index's inputs do: a further page of a multi-page TIFF
        # (GTIFF_DIR:2:scan.tif), /vsizip/a.zip/t.tif, a URL; only a local file (or a page's) is checked here
        path = str(image) if is_gdal_path(image) else Path(image)
        local = local_file(path)
        if local is not None and os.path.isdir(local):
            raise RszError(f"--image {path}: is a folder, not an image (give one image file)")
        if local is not None and not os.path.isfile(local):
            raise RszError(f"--image {path}: no such file")
        try:
            rgb, _ = decode_tile(tile_from_record(str(path), None, TileOptions()), TileOptions())
        except TileError as err:
            raise RszError(f"--image {path}: {err}") from None
    runner = open_runner(model, manifest, "image", backend, device)
    try:
        x = to_model_input(rgb, manifest.preprocess)[None]
        x = np.repeat(x, runner.batch_range[0], axis=0)  # graphs with a fixed batch take copies
        return runner.infer({"image": x})["embedding"][0]
    finally:
        runner.close()


def _rerank_scores(model, manifest, scales, scales_path, candidates, text_out, backend, device) -> np.ndarray:
    runner = open_runner(model, manifest, "rerank", backend, device)
    out = []
    try:
        step = runner.batch_size(RERANK_BATCH)
        for start in range(0, len(candidates), step):
            chunk = candidates[start : start + step]
            n = len(chunk)
            rows = np.concatenate([chunk, np.repeat(chunk[-1:], max(0, runner.batch_range[0] - n))])
            candidate_scales = np.asarray(scales[rows], np.float32)
            if not np.isfinite(candidate_scales).all():  # only the candidates' rows are read from the file
                raise RszError(f"{scales_path}: holds NaN or infinite values (a damaged index; rebuild it)")
            feeds = {
                "scales": candidate_scales,
                "tokens": np.repeat(text_out["tokens"], len(rows), axis=0),
                "attention_mask": np.repeat(text_out["attention_mask"], len(rows), axis=0),
            }
            out.append(runner.infer(feeds)["score"].reshape(len(rows))[:n])
    finally:
        runner.close()
    return np.concatenate(out).astype(np.float32)
