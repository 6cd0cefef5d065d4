"""benchmarks/clip_speed.py's own parts: its calibration tiles and its interleaved timing (the ViT-B-32 run
itself takes minutes and lives in benchmarks/RESULTS.md)."""

from __future__ import annotations

import numpy as np
from PIL import Image

from rsz_bench.clip_speed import interleaved_median_ms, write_calibration_tiles


def test_calibration_tiles_are_distinct_pngs_at_the_model_size(tmp_path):
    folder = write_calibration_tiles(tmp_path / "tiles", 4, 48)
    files = sorted(folder.glob("*.png"))
    assert len(files) == 4
    pixels = [np.asarray(Image.open(f)) for f in files]
    assert all(p.shape == (48, 48, 3) and p.dtype == np.uint8 for p in pixels)
    assert len({p.tobytes() for p in pixels}) == 4  # different scenes, not one tile copied
    assert all(p.std() > 5 for p in pixels)  # drawn scenes, not flat colour


def test_timing_interleaves_contenders_round_by_round():
    calls = []
    ms = interleaved_median_ms({"a": lambda: calls.append("a"), "b": lambda: calls.append("b")}, reps=3)
    assert calls == ["a", "b"] * 4  # one warm-up call each, then every round runs both in turn
    assert set(ms) == {"a", "b"} and all(v >= 0 for v in ms.values())
