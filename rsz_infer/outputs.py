"""Label outputs: a crash-safe run log, then CSV / JSONL / GeoJSON / GeoParquet / GeoPackage / FlatGeobuf
(+ errors.csv, class-map COG).

While a run goes, every finished tile (labeled or skipped) is one JSON line appended to `<out>.part` and
flushed per batch (fsync'd every SYNC_SECONDS, see DiskSync), so a killed run loses at most the batch in
flight and `--resume` knows exactly what is done. At the end (or on Ctrl-C) the requested format is
rendered from the log into a temporary file and renamed over the output: the output file is always
complete and valid. The log is removed once the run has finished every tile.
"""

from __future__ import annotations

import csv
import io
import json
import os
import shutil
import time
import warnings
from array import array
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import IO

import numpy as np

from rsz_infer.errors import RszError
from rsz_infer.images import utf8_escaped, utf8_name

FORMATS = (".csv", ".jsonl", ".geojson", ".parquet", ".gpkg", ".fgb")
OGR_DRIVERS = {".gpkg": "GPKG", ".fgb": "FlatGeobuf"}
# Outputs written by GDAL or Arrow, which take paths as UTF-8 only (a non-UTF-8 folder name cannot be passed)
GDAL_ARROW_SUFFIXES = (".parquet", ".gpkg", ".fgb", ".tif", ".tiff")


def output_format(out: Path) -> str:
    suffix = out.suffix.lower()
    if suffix == ".json":
        suffix = ".geojson" if out.name.lower().endswith(".geo.json") else suffix
    if not suffix:  # a folder name, or a name without its format: say what --out takes
        raise RszError(f"--out {out}: needs a file name ending in one of {', '.join(FORMATS)}")
    if suffix not in FORMATS:
        raise RszError(f"--out {out}: unknown format {suffix!r}; use {', '.join(FORMATS)}")
    return suffix


def check_output_path(path: Path, option: str, suffixes: tuple[str, ...]) -> None:
    """An output the run will write at the end: right suffix, not a folder, in a folder it can create or
    write. Checked before any work, so a bad option never costs a finished run."""
    if path.suffix.lower() not in suffixes:
        raise RszError(f"{option} {path}: expected a {' or '.join(suffixes)} file")
    if path.is_dir():
        raise RszError(f"{option} {path}: is a folder, expected a file")
    check_outside_index(path, option)  # its sidecars (.errors.csv, .run.json, .part, lock) go beside it
    folder = path.parent
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent
    if not folder.is_dir() or not os.access(folder, os.W_OK):
        raise RszError(f"{option} {path}: cannot write there ({folder} is not a writable folder)")
    if path.suffix.lower() in GDAL_ARROW_SUFFIXES and not utf8_name(str(path.parent)):
        # the file's own name may be anything (it is written under an ASCII temporary name, then renamed)
        raise RszError(
            f"{option} {path}: the folder's name is not valid UTF-8, which GDAL and Arrow cannot write to "
            "(rename the folder or write elsewhere)"
        )


def _index_folder_around(path: Path) -> Path | None:
    """The retrieval index folder `path` is or lies in (rsz_infer.index writes these three files always)."""
    for folder in (path, *path.parents):
        if all((folder / name).is_file() for name in ("index.json", "embeddings.npy", "tiles.jsonl")):
            return folder
    return None


def check_outside_index(path: Path, option: str, index_dir: Path | None = None) -> None:
    """RszError when an output would land inside a retrieval index folder (search --html idx/report.html,
    label --out idx/labels.csv, export --out idx/bundle): an index folder holds only its own files
    (index.check_index_out), as the whole folder is swapped for the new one on every write, so the next
    `index --out` into it would refuse the folder for that file. `index_dir`: the index the command reads
    (search), else whichever index folder holds `path`."""
    where = Path(path).resolve()
    if index_dir is None:
        found = _index_folder_around(where)
        if found is None:
            return
        index_dir = found
    elif not where.is_relative_to(Path(index_dir).resolve()):
        return
    raise RszError(
        f"{option} {path}: inside the index folder {index_dir}, which holds only the index's own files "
        "(the next `rsz-infer index --out` into it would refuse it); write it outside that folder"
    )


def check_out_dir(out_dir: Path, option: Path | None = None) -> None:
    """--out must be a folder, or a path where one can be made, outside a retrieval index folder: found
    before a benchmark or an export runs, never after it, when its work would be lost. `option`: the --out
    given, when out_dir is its folder (plot's PNG, an export's bundle)."""
    shown = out_dir if option is None else option
    check_outside_index(Path(shown), "--out")
    for folder in (out_dir, *out_dir.absolute().parents):
        if os.path.lexists(folder):  # a dangling link too: mkdir cannot go through it
            if not folder.is_dir():
                raise RszError(f"--out {shown}: {folder} is a file, not a folder")
            if not os.access(folder, os.W_OK | os.X_OK):
                raise RszError(f"--out {shown}: {folder} is not writable")
            return


def part_path(out: Path) -> Path:
    return out.with_name(out.name + ".part")


def finished_path(out: Path) -> Path:
    """`<out>.run.json`: what a finished output was made with (its run log's header and its tile list),
    kept once the run log is removed so that a later --resume can refuse other inputs or settings."""
    return out.with_name(out.name + ".run.json")


def write_finished(out: Path, header: dict, tiles: dict) -> None:
    atomic_write(finished_path(out), json.dumps({"run": header, **tiles}))


def check_finished(out: Path, header: dict, tiles: dict) -> None:
    """--resume on a finished output: refused in one line unless it was made with this run's header and
    these tiles (then there is nothing left to do). Its run log is gone, so other inputs cannot be added
    to it: a rerun without --resume labels them all."""
    kept_path = finished_path(out)
    try:
        kept = json.loads(kept_path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise RszError(
            f"{out}: already complete, with no {kept_path.name} saying what it was made with; "
            "rerun without --resume to start over"
        ) from None
    except (OSError, ValueError) as err:
        raise RszError(f"{kept_path}: not readable ({err}); rerun without --resume to start over") from None
    old = kept.get("run") if isinstance(kept, dict) else None
    if isinstance(old, dict) and made_with_ray(old) != made_with_ray(header):
        way = "with" if made_with_ray(old) else "without"
        raise RszError(
            f"{out}: already complete, made {way} --ray; --resume it {way} --ray, or rerun without --resume "
            "to start over"
        )
    if old != header:
        raise RszError(
            f"{out}: already complete, {_what_differs(old, header)}; rerun without --resume to start over"
        )
    if {k: kept.get(k) for k in tiles} != tiles:
        raise RszError(
            f"{out}: already complete, but its inputs now hold other tiles (files added or removed since); "
            "rerun without --resume to label them all"
        )


def made_with_ray(header: dict) -> bool:
    """Whether a run log header is a --ray job's (rsz_infer.cluster): its header names no inputs (a partition
    folder's run.json keeps the tile list), the single-process one always does. Told by the header's shape,
    so outputs written before this check was added are told apart too."""
    return "inputs" not in header


def ray_resume_problem(out: Path, ray: bool, parts_run: Path) -> str | None:
    """--resume of `out` with (`ray`) or without --ray when what is left to resume is the other path's: an
    interrupted single-process run's `<out>.part` log, or a stopped --ray job's partition folder (`parts_run`
    is its run.json: cluster.parts_folder, cluster.RUN_FILE). Each path reads only its own progress, so it
    would start over beside the other's (a finished output's run.json is check_finished's to compare)."""
    log, parts = part_path(out), parts_run.parent
    if ray and log.is_file() and not parts.exists():
        return (
            f"{out}: an interrupted run made without --ray ({log.name} keeps its progress); --resume it "
            f"without --ray, or delete {log.name} to start over with --ray"
        )
    if not ray and parts_run.is_file() and not log.exists():
        return (
            f"{out}: a stopped run made with --ray ({parts.name}/ keeps its partitions); --resume it with "
            f"--ray, or delete {parts.name}/ to start over without --ray"
        )
    return None


def drop_other_progress(out: Path, ray: bool, parts_run: Path) -> str | None:
    """Once `out` is written by a run with (`ray`) or without --ray: remove what a stopped run of the other
    path left for the same --out (`<out>.part`, or the partition folder holding `parts_run`, as in
    ray_resume_problem), which nothing else would ever remove and only a --resume of that path would read,
    to overwrite this output with the older run's. Called after this run's output is finished, never
    before: a kill in between keeps one of the two. Returns the note saying what went, or None."""
    log, parts = part_path(out), parts_run.parent
    if ray and log.is_file():
        log.unlink()
        gone = f"{log.name}, the progress of an interrupted run made without --ray"
    elif not ray and parts_run.is_file():
        shutil.rmtree(parts)
        gone = f"{parts.name}/, the partitions of a stopped run made with --ray"
    else:
        return None
    return f"{out}: removed {gone}, which this run replaces"


def errors_path(out: Path) -> Path:
    """`<out>.errors.csv`: after the whole name, so labels.csv and labels.geojson in one folder keep their own
    lists (a clean run of one removes its list, never the other's)."""
    return out.with_name(out.name + ".errors.csv")


def atomic_write(path: Path, text: str) -> None:
    """Write a temporary file beside the target, fsync, rename: readers see the old or the new file.

    Text is written as UTF-8; a file name that is not UTF-8 (surrogate escapes) keeps its original bytes.
    """
    atomic_write_bytes(path, text.encode("utf-8", "surrogateescape"))


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """atomic_write for bytes. A failed write (a full disk) leaves no temporary file and names the target."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as err:
        tmp.unlink(missing_ok=True)
        raise RszError(f"{path}: cannot write it ({err.strerror or err}); nothing was replaced") from None
    except BaseException:  # Ctrl-C or SIGTERM (sigterm_as_ctrl_c) mid-write: no temporary file left either
        tmp.unlink(missing_ok=True)
        raise


def _what_differs(old: dict | None, new: dict) -> str:
    """Which settings of the logged run differ from this one, named for the error line."""
    if not isinstance(old, dict):
        return "not an rsz run log (no header line)"
    names = {
        "model": "model bundle",
        "classes": "class file",
        "inputs": "inputs",
        "tiles": "tile options",
        "shard": "--shard",
    }
    differ = [k for k in sorted(set(old) | set(new)) if old.get(k) != new.get(k)]
    if differ == ["inputs"]:
        return f"started with other inputs ({_short(old.get('inputs'))}, now {_short(new.get('inputs'))})"
    return (
        "made with another model, class file or settings (differs: "
        + ", ".join(names.get(k, k) for k in differ)
        + ")"
    )


def _short(inputs: object) -> str:
    items = [str(i) for i in inputs] if isinstance(inputs, list) else [str(inputs)]
    return " ".join(items[:3]) + (f" and {len(items) - 3} more" if len(items) > 3 else "")


class TileIds:
    """A set of tile ids kept as sorted 64-bit hashes: 8 bytes a tile instead of a Python string in a set
    (a huge scene has 600,000 windows). A collision (about 1 in 10^8 for a million ids) would skip a tile."""

    def __init__(self, hashes: Iterable[int] = ()) -> None:
        self._hashes = np.unique(np.fromiter(hashes, np.int64))

    @staticmethod
    def key(tile_id: str) -> int:
        return hash(tile_id)  # 64-bit SipHash, salted per process: the ids are looked up in this process

    def __len__(self) -> int:
        return len(self._hashes)

    def __contains__(self, tile_id: str) -> bool:
        if not len(self._hashes):
            return False
        key = self.key(tile_id)
        at = int(np.searchsorted(self._hashes, key))
        return at < len(self._hashes) and int(self._hashes[at]) == key


SYNC_SECONDS = 2.0


class DiskSync:
    """When append-only logs (the run log, the index journal) fsync: at most every SYNC_SECONDS, and at
    close. Every batch is flushed to the OS at once, and what was flushed outlives a killed process (kill
    -9, the OOM killer); fsync only guards against a power cut or a crash of the machine, which may cost
    the last seconds. An fsync per batch blocks the engine loop: 5-50 ms on NFS or Lustre."""

    def __init__(self) -> None:
        self.last = time.monotonic()

    def after_batch(self, files: Iterable[IO]) -> None:
        if time.monotonic() - self.last >= SYNC_SECONDS:
            self.now(files)

    def now(self, files: Iterable[IO]) -> None:
        for f in files:
            os.fsync(f.fileno())
        self.last = time.monotonic()


def _log_line(record: dict) -> str:
    """One line of a run log (the header and each finished tile alike)."""
    return json.dumps(record, separators=(",", ":")) + "\n"


class RunLog:
    """Append-only log of finished tiles, one JSON object per line; the first line describes the run.

    `done` holds the tiles an earlier run finished (--resume skips them); tiles of this run are not added
    (discovery yields each tile once), so a fresh run holds no ids at all.
    """

    def __init__(self, out: Path, header: dict, resume: bool) -> None:
        self.out = out
        self.path = part_path(out)
        self.done = TileIds()
        self._sync = DiskSync()
        try:
            self._open(header, resume)
        except OSError as err:
            raise RszError(f"{self.path}: cannot write the run log ({err.strerror})") from None

    def _open(self, header: dict, resume: bool) -> None:
        out = self.out
        if resume and self.path.is_file():
            self._reopen(header)
        else:
            if resume and out.exists():
                raise RszError(f"{out}: already complete (no {self.path.name} to resume); delete it to rerun")
            self.path.parent.mkdir(parents=True, exist_ok=True)
            # the header line first, whole (written beside and renamed), then the output this run replaces
            # no longer says what it was made with until this one finishes: a kill at any moment leaves
            # the old run's .run.json or a log that --resume continues (never an empty or headless log,
            # nor an output with neither, which --resume refused)
            atomic_write(self.path, _log_line({"run": header}))
            finished_path(out).unlink(missing_ok=True)
            self._file = open(self.path, "a", encoding="utf-8")

    def _reopen(self, header: dict) -> None:
        complete_bytes = 0
        first = None
        done = array("q")  # hashes of finished ids, 8 bytes each while reading (no string kept)
        with open(self.path, "rb") as f:
            for raw in f:
                # A torn last line (power cut, kill mid-write) or one filled with NULs (a file system that
                # extended the file before the data landed) ends the log: it and anything after is dropped.
                if not raw.endswith(b"\n"):
                    break
                try:
                    record = json.loads(raw)
                except ValueError:  # JSONDecodeError, or bytes that are not UTF-8
                    break
                if not isinstance(record, dict) or (first is not None and "tile" not in record):
                    break
                complete_bytes += len(raw)
                if first is None:
                    first = record.get("run")
                else:
                    done.append(TileIds.key(record["tile"]))
        if first != header:
            raise RszError(
                f"{self.path}: {_what_differs(first, header)}; resume with those or delete it to start over"
            )
        self.done = TileIds(done)
        self._file = open(self.path, "r+", encoding="utf-8")
        self._file.truncate(complete_bytes)
        self._file.seek(complete_bytes)

    def append(self, records: list[dict]) -> None:
        self._write(records)

    def _write(self, records: list[dict]) -> None:
        try:
            self._file.write("".join(map(_log_line, records)))
            self._file.flush()
            self._sync.after_batch([self._file])
        except OSError as err:  # a full disk: what finished before stays in the log for --resume
            raise RszError(f"{self.path}: cannot write the run log ({err.strerror or err})") from None

    def close(self) -> None:
        try:
            self._sync.now([self._file])
        except OSError:  # the outputs are rendered from what was written; the close reports nothing new
            pass
        self._file.close()

    def records(self) -> Iterator[dict]:
        """Every tile record once (the last one wins), in the order they finished; nodata windows as stubs
        passed on while reading, never held (they are only counted: a sparse scene has 100,000s of them,
        and each tile is logged once: --resume skips what is done)."""
        latest: dict[str, dict] = {}
        with open(self.path, encoding="utf-8") as f:
            for line in f:
                record = json.loads(line)
                if record.get("nodata") and "tile" in record:
                    yield {"tile": record["tile"], "nodata": True, "skipped": record.get("skipped")}
                elif "tile" in record:
                    latest.pop(record["tile"], None)
                    latest[record["tile"]] = record
        yield from latest.values()


# ---------------------------------------------------------------- rendering

# GeoJSON coordinates: 7 decimals (about 1 cm), as RFC 7946 section 11.2 recommends
COORDINATE_DECIMALS = 7
VECTOR_LAYER = "labels"
GEO_INSTALL_HINT = "pip install 'rsz[geo]'"


def _window_text(record: dict) -> str:
    return ",".join(map(str, record["window"])) if record.get("window") else ""


def table_columns(records: list[dict], top_k: int, best_class: bool = False) -> dict[str, list]:
    """The columns every tabular output shares (CSV, GeoParquet, GeoPackage, FlatGeobuf, GeoJSON
    properties): tile, path, window, label_i / score_i / similarity_i for the top k, rule, source_crs.

    score_i is the softmax probability over the given classes; similarity_i the raw similarity (cosine for
    most bundles); --min-score thresholds similarity_1. `best_class` (with --min-score): a column of the
    top-scored class, also where label_1 is unknown because it fell short (the record's best_class)."""
    columns: dict[str, list] = {"tile": [], "path": [], "window": []}
    for i in range(1, top_k + 1):
        columns[f"label_{i}"], columns[f"score_{i}"], columns[f"similarity_{i}"] = [], [], []
    if best_class:
        columns["best_class"] = [r.get("best_class", r["labels"][0]) for r in records]
    columns["rule"], columns["source_crs"] = [], []
    for r in records:
        columns["tile"].append(r["tile"])
        columns["path"].append(r["path"])
        columns["window"].append(_window_text(r))
        for i in range(top_k):
            has = i < len(r["labels"])
            columns[f"label_{i + 1}"].append(r["labels"][i] if has else None)
            columns[f"score_{i + 1}"].append(float(r["scores"][i]) if has else None)
            sims = r.get("similarities", [])  # absent in logs of older runs
            columns[f"similarity_{i + 1}"].append(float(sims[i]) if has and i < len(sims) else None)
        columns["rule"].append(r["rule"])
        columns["source_crs"].append(r.get("source_crs"))
    explained = max((len(r.get("attributes") or []) for r in records), default=0)
    for i in range(explained):  # --explain: the top attributes (DSVA)
        columns[f"attribute_{i + 1}"] = [_attribute(r, i, 0) for r in records]
        columns[f"attribute_score_{i + 1}"] = [_attribute(r, i, 1) for r in records]
    return columns


def _attribute(record: dict, i: int, field: int):
    attributes = record.get("attributes") or []
    return attributes[i][field] if i < len(attributes) else None


def _numeric(column: str) -> bool:
    return column.startswith(("score_", "similarity_", "attribute_score_"))


def _pixel_polygon(window: list[int]) -> dict:
    """A window in the coordinates GDAL-based viewers give a raster without georeference: x = column,
    y = -row (QGIS draws such a raster with the geotransform (0, 1, 0, 0, 0, -1), north up, top edge at
    y = 0), so the rectangles overlay the scene and its class map. Rows as y (y down) drew them mirrored
    above it. The ring runs counterclockwise, as RFC 7946 and the footprints' rings do."""
    col, row, width, height = window
    top, bottom = -row, -(row + height)
    ring = [[col, bottom], [col + width, bottom], [col + width, top], [col, top], [col, bottom]]
    return {"type": "Polygon", "coordinates": [ring]}


def geometries(records: list[dict]) -> tuple[list[dict | None], str | None]:
    """Each record's geometry and their CRS: EPSG:4326 footprints ("OGC:CRS84", lon/lat) when any tile is
    georeferenced; else windows as polygons in pixel coordinates (x = column, y = -row) with no CRS."""
    if any(r.get("footprint") for r in records):
        return [r.get("footprint") for r in records], "OGC:CRS84"
    return [_pixel_polygon(r["window"]) if r.get("window") else None for r in records], None


def render_csv(records: list[dict], top_k: int, best_class: bool = False) -> str:
    """The shared columns plus `wkt`: the EPSG:4326 footprint as WKT (empty without a CRS)."""
    import shapely

    columns = table_columns(records, top_k, best_class)
    footprints = [shapely.geometry.shape(r["footprint"]) if r.get("footprint") else None for r in records]
    wkt = [
        shapely.to_wkt(g, rounding_precision=COORDINATE_DECIMALS) if g is not None else "" for g in footprints
    ]
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow([*columns, "wkt"])
    for i in range(len(records)):
        row = [columns[name][i] for name in columns]
        row = ["" if v is None else f"{v:.6f}" if isinstance(v, float) else csv_text(v) for v in row]
        writer.writerow([*row, wkt[i]])
    return buf.getvalue()


FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")


def csv_text(value: object) -> object:
    """A text cell a spreadsheet would run as a formula (=, +, -, @ first) gets a leading apostrophe
    (OWASP's CSV-injection rule); numbers are written by the caller and stay numbers."""
    if isinstance(value, str) and value.startswith(FORMULA_STARTS):
        return "'" + value
    return value


def csv_text_read(text: str) -> str:
    """csv_text undone, for rsz reading its own CSV files back (only "'" + a formula start is one of its
    cells: a name that really starts with "'=" reads back without its apostrophe)."""
    return text[1:] if text.startswith("'") and text[1:].startswith(FORMULA_STARTS) else text


def _public(record: dict) -> dict:
    keys = ("tile", "path", "window", "labels", "scores", "similarities", "best_class", "rule", "footprint")
    keys += ("source_crs", "attributes")
    return {k: record[k] for k in keys if record.get(k) is not None}


def render_jsonl(records: list[dict]) -> str:
    return "".join(json.dumps(_public(r)) + "\n" for r in records)


def polygons(geometry: dict) -> list[list]:
    """The polygons (each a list of rings) of a GeoJSON Polygon or MultiPolygon (a footprint cut at the
    antimeridian)."""
    return geometry["coordinates"] if geometry["type"] == "MultiPolygon" else [geometry["coordinates"]]


def _rounded(geometry: dict | None) -> dict | None:
    if geometry is None:
        return None
    rounded = [
        [
            [[round(x, COORDINATE_DECIMALS), round(y, COORDINATE_DECIMALS)] for x, y in ring]
            for ring in polygon
        ]
        for polygon in polygons(geometry)
    ]
    return {
        "type": geometry["type"],
        "coordinates": rounded if geometry["type"] == "MultiPolygon" else rounded[0],
    }


def render_geojson(records: list[dict], top_k: int, best_class: bool = False) -> str:
    """RFC 7946: EPSG:4326 lon/lat at 7 decimals; tiles without a CRS have a null geometry."""
    columns = table_columns(records, top_k, best_class)
    features = []
    for i, r in enumerate(records):
        props = {name: values[i] for name, values in columns.items()}
        features.append({"type": "Feature", "geometry": _rounded(r.get("footprint")), "properties": props})
    return json.dumps({"type": "FeatureCollection", "features": features})


def _wkb(shapes: list[dict | None]) -> list[bytes | None]:
    import shapely

    return [shapely.to_wkb(shapely.geometry.shape(g)) if g else None for g in shapes]


def _arrow_text(value: object) -> object:
    """A text cell for Arrow and OGR, which take UTF-8 only: bytes of a file name that are not UTF-8
    (surrogate escapes) become backslash escapes ("y\\xff.png"); CSV/JSONL keep the bytes themselves."""
    return utf8_escaped(value) if isinstance(value, str) else value


def write_geoparquet(records: list[dict], top_k: int, path: Path, best_class: bool = False) -> None:
    """GeoParquet 1.1: WKB `geometry`, its CRS as PROJJSON, a `bbox` covering column (pyarrow)."""
    try:
        import pyarrow as pa
        import pyarrow.parquet as pq
    except ImportError:
        raise RszError(f"--out {path}: GeoParquet needs pyarrow ({GEO_INSTALL_HINT})") from None
    from rasterio.crs import CRS

    columns = table_columns(records, top_k, best_class)
    shapes, crs = geometries(records)
    boxes = [_bbox(g) for g in shapes]
    table = pa.table(
        {
            **{
                name: pa.array(values, pa.float64())
                if _numeric(name)
                else pa.array([_arrow_text(v) for v in values], pa.string())
                for name, values in columns.items()
            },
            "geometry": pa.array(_wkb(shapes), pa.binary()),
            "bbox": pa.array(
                [dict(zip(("xmin", "ymin", "xmax", "ymax"), b)) if b else None for b in boxes],
                pa.struct([(k, pa.float64()) for k in ("xmin", "ymin", "xmax", "ymax")]),
            ),
        }
    )
    known = [b for b in boxes if b]
    column = {
        "encoding": "WKB",
        "geometry_types": _geometry_types(shapes),
        # null: the CRS is unknown (pixel coordinates); left out it would mean OGC:CRS84
        "crs": CRS.from_string(crs).to_dict(projjson=True) if crs else None,
        "covering": {"bbox": {k: ["bbox", k] for k in ("xmin", "ymin", "xmax", "ymax")}},
    }
    if known:
        column["bbox"] = [
            min(b[0] for b in known),
            min(b[1] for b in known),
            max(b[2] for b in known),
            max(b[3] for b in known),
        ]
    geo = {"version": "1.1.0", "primary_column": "geometry", "columns": {"geometry": column}}
    table = table.replace_schema_metadata({b"geo": json.dumps(geo).encode()})
    _atomic_file(path, lambda tmp: pq.write_table(table, tmp))


def _bbox(geometry: dict | None) -> tuple[float, float, float, float] | None:
    if not geometry:
        return None
    points = [p for polygon in polygons(geometry) for ring in polygon for p in ring]
    xs, ys = [p[0] for p in points], [p[1] for p in points]
    return min(xs), min(ys), max(xs), max(ys)


def _geometry_types(shapes: list[dict | None]) -> list[str]:
    return sorted({g["type"] for g in shapes if g} or {"Polygon"})


def write_ogr(records: list[dict], top_k: int, path: Path, driver: str, best_class: bool = False) -> None:
    """GeoPackage or FlatGeobuf through pyogrio (GDAL's OGR): EPSG:4326, or no CRS for pixel polygons."""
    try:
        import pyogrio.raw
    except ImportError:
        raise RszError(f"--out {path}: {driver} needs pyogrio ({GEO_INSTALL_HINT})") from None

    columns = table_columns(records, top_k, best_class)
    shapes, crs = geometries(records)
    fields, data = [], []
    for name, values in columns.items():
        fields.append(name)
        if _numeric(name):
            data.append(np.array([np.nan if v is None else v for v in values], np.float64))
        else:
            data.append(np.array([_arrow_text(v) for v in values], dtype=object))
    geometry = np.array(_wkb(shapes), dtype=object)
    # FlatGeobuf's spatial index cannot hold a tile without a geometry (a plain PNG tile has none)
    no_index = driver == "FlatGeobuf" and any(g is None for g in shapes)
    layer_options = {"SPATIAL_INDEX": "NO"} if no_index else None
    # one geometry type per layer: footprints cut at the antimeridian make it MultiPolygon for all
    multi = "MultiPolygon" in _geometry_types(shapes)

    def write(tmp: Path) -> None:
        with warnings.catch_warnings():
            # pixel polygons have no CRS on purpose: pyogrio's "'crs' was not provided" is no news here
            warnings.filterwarnings("ignore", "'crs' was not provided", UserWarning)
            pyogrio.raw.write(
                str(tmp), geometry, data, fields, layer=VECTOR_LAYER, driver=driver,
                geometry_type="MultiPolygon" if multi else "Polygon", promote_to_multi=multi,
                crs="EPSG:4326" if crs else None, encoding="UTF-8", layer_options=layer_options,
            )  # fmt: skip

    _atomic_file(path, write)


def _atomic_file(path: Path, write) -> None:
    """write(tmp) a file of the same suffix beside `path` (drivers go by suffix), then rename it over.

    The temporary name is ASCII: GDAL and Arrow take UTF-8 paths only, and os.replace gives the file its
    real name, whatever its bytes (check_output_path has refused a folder whose own name is not UTF-8)."""
    suffix = path.suffix if path.suffix.isascii() else ""
    tmp = path.with_name(f".rsz-out.{os.getpid()}.tmp{suffix}")
    tmp.unlink(missing_ok=True)
    try:
        write(tmp)
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def render_errors(records: list[dict]) -> str:
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(["tile", "reason"])
    for r in records:
        writer.writerow([csv_text(r["tile"]), csv_text(r["skipped"])])
    return buf.getvalue()


def write_errors(out: Path, errors: list[dict]) -> None:
    """The skipped tiles ({"tile", "skipped"}) of the output `out` as `<out>.errors.csv` (errors_path),
    atomically; none removes an earlier run's list. Every labeling path writes it here (--ray too)."""
    if errors:
        atomic_write(errors_path(out), render_errors(errors))
    else:
        errors_path(out).unlink(missing_ok=True)  # from an earlier run of the same output


def write_outputs(
    log: RunLog,
    out: Path,
    top_k: int,
    class_names: list[str],
    class_map: Path | None,
    class_map_scores: bool = False,
    best_class: bool = False,
) -> dict:
    """Render the requested output (and errors.csv, class maps) from the log; returns counts and the
    class maps written (`class_maps`, each with its `.png` quicklook beside it). `best_class` (--min-score):
    table outputs get a best_class column (table_columns)."""
    labeled, errors, nodata = [], [], 0
    for r in log.records():
        if "labels" in r:
            labeled.append(r)
        elif r.get("nodata"):
            nodata += 1
        else:
            errors.append(r)
    fmt = output_format(out)
    if class_names:  # no label columns beyond the classes there are (--top-k 100 with 6 classes: 6)
        top_k = min(top_k, len(class_names))
    if fmt == ".csv":
        atomic_write(out, render_csv(labeled, top_k, best_class))
    elif fmt == ".jsonl":
        atomic_write(out, render_jsonl(labeled))
    elif fmt == ".geojson":
        atomic_write(out, render_geojson(labeled, top_k, best_class))
    elif fmt == ".parquet":
        write_geoparquet(labeled, top_k, out, best_class)
    else:
        write_ogr(labeled, top_k, out, OGR_DRIVERS[fmt], best_class)
    write_errors(out, errors)
    maps = []
    if class_map is not None:
        from rsz_infer.classmap import write_class_maps

        # missing folders are made as --out's are (check_output_path found a writable one above them)
        try:
            class_map.parent.mkdir(parents=True, exist_ok=True)
        except OSError as err:
            raise RszError(
                f"--class-map {class_map}: cannot make its folder ({err.strerror or err})"
            ) from None
        maps = write_class_maps(labeled, class_map, class_names, class_map_scores)
    return {
        "labeled": len(labeled), "errors": len(errors), "nodata": nodata,
        "class_maps": [path for _, path in maps], "class_map_scenes": [scene for scene, _ in maps],
    }  # fmt: skip
