"""The run log keeps no per-window state that grows with a huge sparse scene: a fresh run holds no tile ids,
--resume holds 8 bytes a finished tile, and nodata windows are passed on (counted) at the end, never held."""

from __future__ import annotations

import tracemalloc

from rsz_infer.outputs import RunLog, write_outputs

WINDOWS = 20_000  # a 36,000 x 36,000 px scene of 256 px windows; memory below is traced, not sampled


def _write_log(tmp_path):
    out = tmp_path / "labels.jsonl"
    log = RunLog(out, {"model": "m"}, resume=False)
    ids = [f"{tmp_path}/scene.tif@{c * 256},{r * 256},256,256" for r in range(100) for c in range(200)]
    labeled = {"tile": ids[0], "path": "scene.tif", "window": [0, 0, 256, 256], "labels": ["red"]}
    log.append([labeled | {"scores": [1.0], "similarities": [0.9], "rule": "rgb"}])
    for start in range(1, WINDOWS, 1000):
        log.append([{"tile": i, "skipped": "all nodata", "nodata": True} for i in ids[start : start + 1000]])
    assert len(log.done) == 0  # this run's tiles are never looked up again: not kept
    log.close()
    return out, log, ids


def test_nodata_windows_are_counted_not_held(tmp_path):
    out, log, _ = _write_log(tmp_path)
    tracemalloc.start()
    try:
        written = write_outputs(log, out, 1, ["red"], None)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert written == {
        "labeled": 1,
        "errors": 0,
        "nodata": WINDOWS - 1,
        "class_maps": [],
        "class_map_scenes": [],
    }
    assert peak < 1_500_000, f"{peak:,} bytes traced while reading the log: nodata windows were held"


def test_resume_keeps_finished_ids_compact(tmp_path):
    out, _, ids = _write_log(tmp_path)
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        resumed = RunLog(out, {"model": "m"}, resume=True)
        kept = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    resumed.close()
    assert len(resumed.done) == WINDOWS
    assert (
        all(i in resumed.done for i in ids[::997]) and f"{tmp_path}/scene.tif@1,0,256,256" not in resumed.done
    )
    assert kept < 20 * WINDOWS, f"{kept:,} bytes kept for {WINDOWS:,} finished ids"  # 8 bytes each + slack
