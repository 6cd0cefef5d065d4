"""What the benchmarks could get wrong, against values known here: FLOPs against a hand count, percentiles
of known times, a rate against a known sleep. No speed goal is asserted (those live in benchmarks/)."""

from __future__ import annotations

import time

import numpy as np
import pytest
import torch
from torch import nn

from rsz_bench import latency
from rsz_bench.flops import onnx_flops, torch_flops


class _Small(nn.Module):
    """A convolution, a grouped strided convolution, a token MatMul and a Linear (Gemm) at 16 px."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.grouped = nn.Conv2d(8, 8, 3, stride=2, padding=1, groups=4)
        self.mix = nn.Parameter(torch.randn(8, 6))
        self.head = nn.Linear(8 * 8 * 6, 10)

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        x = self.grouped(torch.relu(self.conv(image)))  # [B, 8, 8, 8]
        tokens = x.flatten(2).transpose(1, 2)  # [B, 64, 8]
        return self.head((tokens @ self.mix).flatten(1))


# multiply-adds x 2, per image; biases, ReLU and reshapes are not counted
HAND_COUNT = (
    2 * (8 * 16 * 16) * (3 * 3 * 3)  # conv: every output value sums 3 channels x 3 x 3
    + 2 * (8 * 8 * 8) * (8 // 4 * 3 * 3)  # grouped conv: 2 input channels per group, 8 x 8 outputs
    + 2 * (64 * 6) * 8  # [64, 8] @ [8, 6]
    + 2 * 10 * 384  # Linear 384 -> 10
)


def test_flop_counts_match_a_hand_count(tmp_path):
    torch.manual_seed(0)
    module = _Small().eval()
    image = torch.randn(1, 3, 16, 16)
    assert HAND_COUNT == 142_848
    assert torch_flops(module, image) == HAND_COUNT
    path = tmp_path / "small.onnx"
    torch.onnx.export(
        module, (image,), str(path), input_names=["image"], output_names=["embedding"],
        dynamic_axes={"image": {0: "batch"}, "embedding": {0: "batch"}}, opset_version=17, dynamo=False,
    )  # fmt: skip
    assert onnx_flops(path) == HAND_COUNT  # per image: the dynamic batch is counted as 1


def test_percentiles_of_known_times():
    # 1, 2, ..., 100 ms in shuffled order; numpy's default (linear) percentiles: rank q/100 * 99
    seconds = list(np.random.default_rng(0).permutation(np.arange(1, 101) / 1000.0))
    got = latency.percentiles_ms(seconds)
    assert got["p50_ms"] == pytest.approx(50.5)
    assert got["p90_ms"] == pytest.approx(90.1)
    assert got["p99_ms"] == pytest.approx(99.01)
    assert got["mean_ms"] == pytest.approx(50.5)


SLEEP_S = 0.03
SLACK_S = 1.0  # a loaded machine oversleeps (never undersleeps); ms taken for s would be 1000x off


def test_time_host_times_each_call_after_the_warmup():
    calls = []

    def call() -> None:
        calls.append(time.perf_counter())
        time.sleep(SLEEP_S)

    times = latency.time_host(call, iters=3, warmup=2)
    assert len(calls) == 5 and len(times) == 3
    assert all(SLEEP_S <= t < SLEEP_S + SLACK_S for t in times)


class _Sleep(nn.Module):
    """An image "model" whose forward takes a known time, whatever the batch."""

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        time.sleep(SLEEP_S)
        return image.mean(dim=(2, 3))


def test_latency_rate_against_a_known_sleep(monkeypatch):
    flops = 2e9  # stated per image: achieved FLOP/s must follow from the rate
    source = latency.ModelSource("sleep", 8, torch_module=_Sleep(), flops_per_image=flops)
    monkeypatch.setattr(latency, "open_model", lambda *args, **kwargs: source)
    cfg = latency.LatencyConfig(backends=["torch"], batches=[1, 4], iters=3, warmup=1, device="cpu")
    result = latency.run_latency("sleep", cfg)
    rows = {row["batch"]: row for row in result["rows"]}
    for batch in (1, 4):
        row = rows[batch]
        assert row["status"] == "ok", row
        assert SLEEP_S * 1e3 <= row["p50_ms"] < (SLEEP_S + SLACK_S) * 1e3  # milliseconds, not seconds
        # one call takes SLEEP_S for the whole batch: batch / SLEEP_S images per second at most
        assert batch / (SLEEP_S + SLACK_S) < row["images_per_s"] <= batch / SLEEP_S
        assert row["achieved_tflops"] == pytest.approx(flops * row["images_per_s"] / 1e12)


def test_rounds_interleave_the_rows_and_pool_their_times():
    """--rounds N: each round times every row in turn (one warm-up call from the second round on), so load
    from other processes falls on all rows alike; each row gets all its timed calls."""
    calls: list[str] = []
    rows = [
        latency.TimedRow(call=lambda name=name: calls.append(name), timer=latency.time_host, info={})
        for name in "ab"
    ]
    latency.time_rows(rows, iters=5, warmup=2, rounds=2)
    assert calls == ["a"] * 5 + ["b"] * 5 + ["a"] * 3 + ["b"] * 3  # 2 warm-up + 3, then 1 warm-up + 2
    assert [len(r.times) for r in rows] == [5, 5]


def test_interleaved_latency_rows_against_a_known_sleep(monkeypatch):
    source = latency.ModelSource("sleep", 8, torch_module=_Sleep())
    monkeypatch.setattr(latency, "open_model", lambda *args, **kwargs: source)
    cfg = latency.LatencyConfig(backends=["torch"], batches=[1, 4], iters=4, warmup=1, device="cpu", rounds=2)
    rows = latency.run_latency("sleep", cfg)["rows"]
    assert [r["status"] for r in rows] == ["ok", "ok"]
    assert all(SLEEP_S * 1e3 <= r["p50_ms"] < (SLEEP_S + SLACK_S) * 1e3 for r in rows)


def test_e2e_encoder_stage_runs_the_rows_the_loop_runs(tmp_path):
    """The encoder-only figure is set against the batching loop, which runs only the real rows of a last,
    partial batch: padding it to --batch (5 tiles at batch 4: 8 rows) made the encoder look slower."""
    from PIL import Image

    from rsz_bench.e2e import E2EConfig, _stage_times
    from rsz_bench.reference import build_reference, export_reference_onnx
    from rsz_infer.images import TileOptions, discover_tiles
    from rsz_infer.preprocess import PreprocessSpec
    from rsz_infer.runners.ort import OrtRunner

    class RecordingOrtRunner(OrtRunner):  # the real runner, keeping the batch size of every call
        def _infer(self, feeds):
            self.rows.append(len(feeds["image"]))
            return super()._infer(feeds)

    for i in range(5):
        Image.fromarray(np.full((40, 40, 3), 40 * i, np.uint8)).save(tmp_path / f"t{i}.png")
    ref = build_reference("ref:vit_tiny", 32)
    runner = RecordingOrtRunner(export_reference_onnx(ref, tmp_path), device="cpu")
    runner.rows = []
    tiles = list(discover_tiles([str(tmp_path)], TileOptions()))
    info = {"scoring_rule": "cosine", "logit_scale": 16.0}
    stages, rgbs = _stage_times(
        tiles, TileOptions(), PreprocessSpec(size=32), runner, E2EConfig(batch=4), info, []
    )
    assert len(rgbs) == 5 and stages["engine"]["seconds"] > 0
    assert runner.rows[1:] == [4, 1]  # after the warm-up call: a full batch, then the one real row
