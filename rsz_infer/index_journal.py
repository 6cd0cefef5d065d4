"""The tiles an `rsz-infer index` call has embedded but not yet written into its index folder.

An index folder is rewritten once, at the end of a call (index._write_index_folder swaps a whole new folder
in). Until then each batch is appended to a journal beside it, `.OUT.pending/` (flushed per batch, fsync'd
by outputs.DiskSync), so a call killed with no chance to save (kill -9, the OOM killer) loses at most the
batch in flight: the next `index` call on the same --out folds the journal into the index first
(index.open_index_job) and skips its tiles. A call that ends (also by Ctrl-C or SIGTERM) writes the index
and removes the journal.

    header.json      the index.json fields of the rows (model, tile options, bands, dim, engine) and the
                     shape of a row of scales (null without a rerank graph)
    embeddings.f32   float32 rows, little-endian; a batch's rows are written and flushed before its tiles
    scales.f32       float32 multi-scale rows, when the bundle has a rerank graph
    tiles.jsonl      index rows (index.index_row); the tiles of whole lines are the journal's rows

Nothing here is unpickled: JSON and raw float32, each checked as an index's own files are (rsz_infer.trust).
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import IO

import numpy as np

from rsz_infer.errors import RszError
from rsz_infer.outputs import DiskSync, atomic_write
from rsz_infer.trust import check_finite, check_regular_file, read_index_info, read_tile_rows

FLOAT = np.dtype("<f4")


def journal_folder(out: Path) -> Path:
    return out.with_name(f".{out.name}.pending")


@dataclass
class PendingRows:
    """What a stopped call left in its journal: whole rows only."""

    folder: Path
    info: dict  # header.json
    tiles: list[dict]
    embeddings: np.ndarray  # [N, dim]
    scales: np.ndarray | None  # [N, *scales_shape]


class IndexJournal:
    """Appends a call's batches to `.OUT.pending/`; made at the first batch with tiles."""

    def __init__(self, out: Path, header: dict) -> None:
        self.folder = journal_folder(out)
        self.header = header
        self._files: dict[str, IO] = {}
        self._sync = DiskSync()

    def append(self, tiles: list[dict], embeddings: np.ndarray, scales: np.ndarray | None) -> None:
        if not tiles:
            return
        try:
            if not self._files:
                self._open(None if scales is None else list(scales.shape[1:]))
            # the rows' floats first: a line in tiles.jsonl always has its embedding on disk
            self._write("embeddings.f32", np.ascontiguousarray(embeddings, FLOAT).tobytes())
            if scales is not None:
                self._write("scales.f32", np.ascontiguousarray(scales, FLOAT).tobytes())
            self._write(
                "tiles.jsonl", "".join(json.dumps(t) + "\n" for t in tiles).encode("utf-8", "surrogateescape")
            )
            self._sync.after_batch(self._files.values())
        except OSError as err:  # a full disk: the batches before stay in the journal for the next call
            raise RszError(f"{self.folder}: cannot write the index journal ({err.strerror or err})") from None

    def _open(self, scales_shape: list[int] | None) -> None:
        shutil.rmtree(self.folder, ignore_errors=True)  # folded in (or empty) by open_index_job already
        self.folder.mkdir(parents=True)
        self.header = {**self.header, "scales_shape": scales_shape}
        atomic_write(self.folder / "header.json", json.dumps(self.header, indent=2))
        names = ["embeddings.f32", "tiles.jsonl"] + (["scales.f32"] if self.header["scales_shape"] else [])
        self._files = {name: open(self.folder / name, "ab") for name in names}

    def _write(self, name: str, data: bytes) -> None:
        f = self._files[name]
        f.write(data)
        f.flush()  # in the OS now: a killed process keeps it (fsync: DiskSync, after the whole batch)

    def close(self) -> None:
        try:
            self._sync.now(self._files.values())
        except OSError:  # what was written stays for the next call; this call's own end reports problems
            pass
        for f in self._files.values():
            f.close()
        self._files = {}

    def remove(self) -> None:
        """The rows are in the index folder now."""
        self.close()
        remove_journal(self.folder)


def remove_journal(folder: Path) -> None:
    """header.json goes first, in one step: a kill during the rest leaves files no reader takes for a
    journal (read_journal, journal_left) and that the next journal's folder replaces."""
    (folder / "header.json").unlink(missing_ok=True)
    shutil.rmtree(folder, ignore_errors=True)


def journal_left(out: Path) -> Path | None:
    """The journal beside `out` when there is one (a call is writing it, or one was stopped), else None."""
    folder = journal_folder(out)
    return folder if (folder / "header.json").is_file() else None


def read_journal(out: Path) -> PendingRows | None:
    """The whole rows of the journal a stopped call left beside `out`, or None when there is none. A line
    cut by the kill (no newline yet) and floats of a batch whose tiles were not written are left out."""
    folder = journal_left(out)
    if folder is None:
        return None
    info = read_index_info(folder / "header.json")
    shape = info.get("scales_shape")
    if shape is not None and not (
        isinstance(shape, list) and shape and all(type(n) is int and n >= 1 for n in shape)
    ):
        raise RszError(f"{folder / 'header.json'}: scales_shape must be null or a list of sizes")
    tiles_path = folder / "tiles.jsonl"
    tiles = []
    if tiles_path.exists():  # not yet when killed before its first batch was written
        check_regular_file(tiles_path)
        data = tiles_path.read_bytes()
        whole = data[: data.rfind(b"\n") + 1]
        if len(whole) != len(data):
            with open(tiles_path, "r+b") as f:  # the caller holds the index's lock
                f.truncate(len(whole))
        tiles = read_tile_rows(tiles_path)
    embeddings = _rows(folder / "embeddings.f32", len(tiles), [info["dim"]])
    scales = _rows(folder / "scales.f32", len(tiles), shape) if shape else None
    return PendingRows(folder, info, tiles, embeddings, scales)


def _rows(path: Path, count: int, shape: list[int]) -> np.ndarray:
    size = int(np.prod(shape))
    if count == 0:
        return np.zeros((0, *shape), np.float32)
    check_regular_file(path)
    if not path.is_file():
        raise RszError(f"{path}: missing, for {count} tiles (a damaged journal; delete {path.parent})")
    flat = np.fromfile(path, dtype=FLOAT)
    if flat.size < count * size:
        raise RszError(
            f"{path}: {flat.size // size} rows for {count} tiles (a damaged journal; delete {path.parent})"
        )
    rows = flat[: count * size].reshape(count, *shape).astype(np.float32)
    check_finite(rows, path)
    return rows
