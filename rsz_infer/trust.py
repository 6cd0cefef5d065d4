"""What rsz believes of a folder it was handed: an index folder is read as data, never as instructions.

An index folder may come from someone else (a shared drive, a mail). Its files are validated when read
(types, sizes, no pickles), and the tiles it names are only opened again (gallery thumbnails) when they
are local files whose sha256 is the one recorded when the index embedded them: a crafted tiles.jsonl
can neither make a gallery embed a private image under another name nor make GDAL fetch a URL.
"""

from __future__ import annotations

import functools
import json
import math
import os
import stat
from pathlib import Path

import numpy as np

from rsz_infer.bundle import sha256_file
from rsz_infer.errors import RszError, first_line
from rsz_infer.images import MIN_TILE_PX, RGB_STACK_PREFIX, tiff_page

# GDAL opens these as network or archive paths; an index row never makes rsz open one. Nor a STAC item's
# band assets read as one (RGB_STACK_PREFIX): opening one reads the JSON it names and the hrefs in it
REMOTE_PREFIXES = ("/vsi", "\\vsi", RGB_STACK_PREFIX)
INDEX_SEARCH_METHODS = ("exact", "hnsw")
INDEX_FORMAT = 1  # index.json "format" this rsz writes and reads; a newer one may mean other files or layouts
FINITE_CHECK_ROWS = 65_536  # rows per finiteness check: the temporary mask stays small for a huge array


def is_remote(path: str) -> bool:
    """A GDAL virtual file system path (/vsicurl/, /vsis3/, /vsizip/ ...) or a URL (http://, s3://)."""
    return path.startswith(REMOTE_PREFIXES) or "://" in path


@functools.lru_cache(maxsize=4096)
def _sha256_of(path: str, size: int, mtime_ns: int) -> str:
    return sha256_file(Path(path))  # size and mtime_ns only key the cache


def file_sha256(path: str) -> str | None:
    """sha256 of a local file (cached while size and mtime stay the same); None for remote or missing, and
    for what is no regular file (/dev/zero or a FIFO named by an index would be read for ever). A further
    page of a multi-page TIFF (GTIFF_DIR:2:scan.tif) is checked by its file's sha256: GDAL opens that file."""
    page = tiff_page(path)
    if page is not None:
        path = page[1]
    if is_remote(path):
        return None
    try:
        st = os.stat(path)
        return _sha256_of(path, st.st_size, st.st_mtime_ns) if stat.S_ISREG(st.st_mode) else None
    except OSError:
        return None


def file_identity(path: str) -> dict:
    """What an index row records of its file: sha256 (None for remote, missing or no regular file), and
    size and mtime_ns of a local file, which let the next append see an unchanged file without reading it."""
    identity: dict = {"sha256": file_sha256(path)}
    local = _local_name(path)
    if local is not None:
        try:
            st = os.stat(local)
        except OSError:
            return identity
        identity |= {"size": st.st_size, "mtime_ns": st.st_mtime_ns}
    return identity


def file_changed(row: dict) -> bool:
    """True when an index row's file is no longer the file it embedded: its size or mtime differ from the
    recorded ones (when recorded) and so does its sha256 (when recorded; a `touch` alone changes nothing).
    A remote file, or a row that records neither (older indexes), counts as unchanged: nothing to compare."""
    local = _local_name(row["path"])
    if local is None:
        return False
    try:
        st = os.stat(local)
    except OSError:
        return True  # listed, then gone: embedding it again skips it, and its row goes
    if row.get("size") == st.st_size and row.get("mtime_ns") == st.st_mtime_ns:
        return False
    if isinstance(row.get("sha256"), str):
        return file_sha256(row["path"]) != row["sha256"]
    return "size" in row or "mtime_ns" in row


def _local_name(path: str) -> str | None:
    """The local file an index row's path reads (a TIFF page's file), None for a remote one."""
    page = tiff_page(path)
    path = page[1] if page is not None else path
    return None if is_remote(path) else path


def check_regular_file(path: Path) -> None:
    """RszError unless `path` is a regular file: an index's own file that is a FIFO or a device would
    block or never end when read."""
    if path.exists() and not path.is_file():
        raise RszError(f"{path}: not a regular file")


def tile_is_the_embedded_one(row: dict) -> bool:
    """The row's file is local and still the file the index embedded (sha256 recorded at index time)."""
    recorded = row.get("sha256")
    return isinstance(recorded, str) and file_sha256(row["path"]) == recorded


def _is_int(value: object) -> bool:
    return type(value) is int  # not bool, not 1.0


def _is_finite_number(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _positive_number(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and 0 < value < float("inf")


def read_index_info(path: Path) -> dict:
    """index.json, validated: the values search and appends rely on, with their types."""
    check_regular_file(path)
    try:
        info = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, RecursionError) as err:
        raise RszError(f"{path}: not a readable index.json ({first_line(err, limit=200)})") from None
    options = info.get("tile_options") if isinstance(info, dict) else None
    bands = info.get("bands") if isinstance(info, dict) else None
    checks = [
        (isinstance(info, dict), "not a JSON object"),
        (
            # indexes have always written their format; none (a hand-made index.json) reads as the first
            isinstance(info, dict) and _is_int(info.get("format", INDEX_FORMAT)),
            "format must be an integer",
        ),
        (isinstance(info, dict) and isinstance(info.get("model"), str), "model must be a sha256 string"),
        (isinstance(info, dict) and isinstance(info.get("model_dir"), str), "model_dir must be a path"),
        (
            isinstance(options, dict)
            and set(options) <= {"tile_size", "overlap", "gsd"}
            and type(options.get("tile_size")) is int
            and type(options.get("overlap")) is int
            # the ranges rsz-infer accepts (TileOptions): an append or a gallery would blame --tile-size
            and options["tile_size"] >= MIN_TILE_PX
            and 0 <= options["overlap"] < options["tile_size"]
            and (options.get("gsd") is None or _positive_number(options["gsd"])),
            f"tile_options must hold an integer tile_size of at least {MIN_TILE_PX} px and an overlap "
            "from 0 to less than it (and a gsd in metres or null)",
        ),
        (
            bands is None or (isinstance(bands, list) and all(type(b) is int and b >= 1 for b in bands)),
            "bands must be null or a list of band numbers",
        ),
        (isinstance(info, dict) and type(info.get("dim")) is int and info["dim"] >= 1, "dim must be >= 1"),
        (
            isinstance(info, dict)
            and (info.get("count") is None or (_is_int(info["count"]) and info["count"] >= 0)),
            "count must be a number of rows",
        ),
        (
            isinstance(info, dict)
            and (
                info.get("engine") is None
                or (
                    isinstance(info["engine"], dict)
                    and all(isinstance(v, str) for v in info["engine"].values())
                )
            ),
            "engine must be null or an object of names (precision, decoder)",
        ),
        (
            isinstance(info, dict) and info.get("search", "exact") in INDEX_SEARCH_METHODS,
            f"search must be one of {', '.join(INDEX_SEARCH_METHODS)}",
        ),
    ]
    for ok, problem in checks:
        if not ok:
            raise RszError(f"{path}: bad index.json ({problem})")
    if info.get("format", INDEX_FORMAT) != INDEX_FORMAT:
        raise RszError(
            f"{path}: index format {info['format']}, this rsz reads {INDEX_FORMAT} (made by a newer rsz?)"
        )
    if is_remote(info["model_dir"]):
        raise RszError(f"{path}: model_dir {info['model_dir']!r} is remote; pass --model")
    return info


def load_array(path: Path, ndim: int, mmap: bool = False) -> np.ndarray:
    """A float .npy of `ndim` dimensions written by rsz (never unpickled: object arrays are refused)."""
    check_regular_file(path)
    try:
        array = np.load(path, mmap_mode="r" if mmap else None, allow_pickle=False)
    except (OSError, ValueError, EOFError) as err:
        raise RszError(f"{path}: not a plain numeric .npy file ({first_line(err, limit=200)})") from None
    if not isinstance(array, np.ndarray) or array.dtype.kind != "f":
        raise RszError(f"{path}: expected a float array of rows, got {getattr(array, 'dtype', type(array))}")
    if array.ndim != ndim:  # exactly: a 3-D array where rows of vectors belong breaks search and merge
        raise RszError(f"{path}: expected a {ndim}-D float array, got shape {array.shape}")
    return array


def check_finite(array: np.ndarray, path: Path) -> None:
    """RszError naming the file and the first bad row when `array` holds NaN or infinity (a damaged or
    crafted file: NaN scores sort anywhere, so search would answer silently wrong).

    Checked FINITE_CHECK_ROWS rows at a time, so a memory-mapped array is read in pieces and the mask
    np.isfinite makes never has the size of the whole array."""
    for start in range(0, array.shape[0], FINITE_CHECK_ROWS):
        chunk = np.asarray(array[start : start + FINITE_CHECK_ROWS])
        finite = np.isfinite(chunk).reshape(chunk.shape[0], -1).all(axis=1)
        if not finite.all():
            row = start + int(np.argmin(finite))
            raise RszError(f"{path}: row {row} holds NaN or infinite values (a damaged index; rebuild it)")


def _valid_footprint(footprint: object) -> bool:
    """None, or a GeoJSON Polygon (a MultiPolygon where cut at the antimeridian) as rsz writes them:
    rings of finite [lon, lat] pairs."""
    if footprint is None:
        return True
    if not isinstance(footprint, dict) or footprint.get("type") not in ("Polygon", "MultiPolygon"):
        return False
    multi = footprint["type"] == "MultiPolygon"
    coordinates = footprint.get("coordinates")
    polygons = coordinates if multi else [coordinates]
    return isinstance(coordinates, list) and len(polygons) > 0 and all(_valid_rings(p) for p in polygons)


def _valid_rings(rings: object) -> bool:
    return (
        isinstance(rings, list)
        and len(rings) > 0
        and all(isinstance(ring, list) and len(ring) >= 4 for ring in rings)
        and all(
            isinstance(p, list) and len(p) == 2 and all(_is_finite_number(v) for v in p)
            for ring in rings
            for p in ring
        )
    )


def _valid_row(row: object) -> bool:
    if not isinstance(row, dict):
        return False
    tile, path, window = row.get("tile"), row.get("path"), row.get("window")
    return (
        isinstance(tile, str)
        and isinstance(path, str)
        and "\0" not in path
        and path != ""
        and (
            window is None
            or (isinstance(window, list) and len(window) == 4 and all(type(v) is int for v in window))
        )
        and _valid_footprint(row.get("footprint"))
        and (row.get("sha256") is None or isinstance(row["sha256"], str))
        # written since appends re-embed changed files; older rows lack them
        and all(row.get(key) is None or _is_int(row[key]) for key in ("size", "mtime_ns"))
    )


def read_tile_rows(path: Path) -> list[dict]:
    """tiles.jsonl, validated row by row: tile id, path, window (4 ints or null), footprint, sha256; each
    tile id once (an index holds a tile once: appends and merges skip known ids)."""
    rows, seen = [], set()
    check_regular_file(path)
    try:
        with open(path, encoding="utf-8", errors="surrogateescape") as f:
            for number, line in enumerate(f, start=1):
                try:
                    row = json.loads(line)
                except (json.JSONDecodeError, RecursionError):  # RecursionError: nested too deep
                    row = None
                if not _valid_row(row):
                    raise RszError(f"{path}: line {number} is not a tile row (tile, path, window)")
                if row["tile"] in seen:
                    raise RszError(f"{path}: line {number} repeats tile {row['tile']!r}")
                seen.add(row["tile"])
                rows.append(row)
    except OSError as err:
        raise RszError(f"{path}: cannot read ({err.strerror})") from None
    return rows
