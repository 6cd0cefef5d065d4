"""Past one process: `--shard I/N` for plain processes and array jobs, and the Ray Data path (`--ray`).

Sharding: a tile belongs to shard crc32(tile id) mod N, so N processes given the same inputs split them
without talking to each other, a tile keeps its shard when the folder grows (resume stays valid), and
the N outputs together hold every tile once.
"""

from __future__ import annotations

import zlib
from collections.abc import Iterable

from rsz_infer.errors import RszError
from rsz_infer.images import Tile

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
    return shard is None or zlib.crc32(tile_id.encode("utf-8")) % shard[1] == shard[0]


def shard_tiles(tiles: Iterable[Tile], shard: Shard | None) -> list[Tile]:
    """The tiles of this shard, in discovery order (all of them without a shard)."""
    return [t for t in tiles if in_shard(t.id, shard)]
