"""Cost of one batch in the index journal: an fsync per batch vs DiskSync (flush per batch, fsync at most
every outputs.SYNC_SECONDS), rounds of the two interleaved in one process on the file system of --out.

A plain script (no torch, no bundle): IndexJournal.append of `--batch` index rows with `--dim` float32
embeddings, timed with time.perf_counter. What the file system does with fsync is the whole difference:
run it on the disk the index will live on (a local SSD, NFS, Lustre).
    python benchmarks/journal_sync.py --out results/journal
"""

from __future__ import annotations

import argparse
import shutil
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # this checkout first

import rsz_infer.outputs as outputs  # noqa: E402
from rsz_bench.report import markdown_table, new_result, write_result  # noqa: E402
from rsz_infer.index_journal import IndexJournal  # noqa: E402

POLICIES = {"fsync per batch": 0.0, "DiskSync": outputs.SYNC_SECONDS}


def append_times(folder: Path, seconds: float, batch: int, dim: int, appends: int) -> list[float]:
    """ms of each of `appends` appends to a fresh journal in `folder` with fsync every `seconds`."""
    rows = [{"tile": f"scene.tif@{i},0,224,224", "path": "scene.tif", "window": [i, 0, 224, 224],
             "footprint": None, "source_crs": None} for i in range(batch)]  # fmt: skip
    embeddings = np.random.default_rng(0).random((batch, dim), dtype=np.float32)
    header = {"model": "0" * 64, "model_dir": str(folder), "bands": None, "dim": dim, "engine": {},
              "tile_options": {"tile_size": 224, "overlap": 0, "gsd": None}}  # fmt: skip
    outputs.SYNC_SECONDS = seconds
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    journal = IndexJournal(folder / "idx", header)
    journal.append(rows, embeddings, None)  # the files are made by the first batch: not timed
    times = []
    for _ in range(appends):
        start = time.perf_counter()
        journal.append(rows, embeddings, None)
        times.append((time.perf_counter() - start) * 1e3)
    journal.remove()
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=32, help="tiles per batch")
    parser.add_argument("--dim", type=int, default=512, help="embedding size")
    parser.add_argument("--rounds", type=int, default=6, help="interleaved rounds of each policy")
    parser.add_argument("--appends", type=int, default=50, help="timed appends per round")
    parser.add_argument("--out", type=Path, default=Path("results/journal"))
    args = parser.parse_args()
    times: dict[str, list[float]] = {name: [] for name in POLICIES}
    scratch = args.out / "journal_scratch"
    for _ in range(args.rounds):
        for name, seconds in POLICIES.items():
            times[name] += append_times(scratch, seconds, args.batch, args.dim, args.appends)
    shutil.rmtree(scratch, ignore_errors=True)
    rows = [
        {"policy": name, "median_ms": round(float(np.median(t)), 3),
         "p90_ms": round(float(np.percentile(t, 90)), 3), "max_ms": round(max(t), 3), "appends": len(t)}
        for name, t in times.items()
    ]  # fmt: skip
    result = new_result("journal", f"Index journal: ms per {args.batch}-tile batch", rows=rows, dim=args.dim)
    columns = [("policy", "policy"), ("median_ms", "median ms"), ("p90_ms", "p90 ms"), ("max_ms", "max ms"),
               ("appends", "appends")]  # fmt: skip
    _, md_path = write_result(result, markdown_table(rows, columns), args.out, "journal")
    print(md_path.read_text(), end="")


if __name__ == "__main__":
    main()
