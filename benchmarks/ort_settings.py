"""Which ONNX Runtime session settings are fastest on this CPU: one factor at a time from rsz's defaults.

Factors: graph optimisation level (basic / extended / all), intra-op threads (1, 2, ONNX Runtime's default)
and their spinning, the CPU memory arena (on / off), and the graph itself as exported or after
onnxruntime.quantization's `quant_pre_process` (symbolic shape inference + basic optimisation written to
the file). Every setting is
timed in interleaved rounds (a round times each setting once), so load from other processes on a shared
machine spreads over all of them instead of favouring whichever ran in a quiet moment; the figure is the
median of the per-round medians. Outputs are checked equal to the default session's (max |diff|).
"""

from __future__ import annotations

import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from rsz_bench.checks import at_least
from rsz_infer.errors import RszError


@dataclass(frozen=True)
class Setting:
    name: str
    level: str = "all"  # basic | extended | all
    threads: int = 0  # 0: ONNX Runtime's default (all cores)
    arena: bool = True
    preprocessed: bool = False
    spinning: bool = False  # intra-op threads spin while waiting (ONNX Runtime's default; rsz turns it off)


SETTINGS = (
    Setting("default (rsz: all, threads=cores, no spinning, arena on, as exported)"),
    Setting("level basic", level="basic"),
    Setting("level extended", level="extended"),
    Setting("threads 1", threads=1),
    Setting("threads 2", threads=2),
    Setting("spinning on (ONNX Runtime's default)", spinning=True),
    Setting("arena off", arena=False),
    Setting("quant_pre_process graph", preprocessed=True),
)


def _session(path: Path, setting: Setting):  # noqa: ANN202 - an InferenceSession
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.graph_optimization_level = {
        "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
        "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
        "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
    }[setting.level]
    if setting.threads:
        opts.intra_op_num_threads = setting.threads
    opts.enable_cpu_mem_arena = setting.arena
    opts.add_session_config_entry("session.intra_op.allow_spinning", "1" if setting.spinning else "0")
    return ort.InferenceSession(str(path), sess_options=opts, providers=["CPUExecutionProvider"])


def run_ort_settings(spec: str, batch: int = 8, rounds: int = 5, iters: int = 3) -> dict:
    """Time every Setting on the image graph of `spec` (ref:NAME or a bundle; its FP32 graph)."""
    from rsz_bench.latency import open_model
    from rsz_export.int8 import preprocess

    for value, option in ((batch, "--batch"), (rounds, "--rounds"), (iters, "--iters")):
        at_least(value, 1, option)
    with tempfile.TemporaryDirectory(prefix="rsz-ort-settings-") as tmp:
        src = open_model(spec, tmp=Path(tmp))
        fp32 = src.onnx_for("fp32")
        if fp32 is None:
            raise RszError(f"{spec}: no FP32 image graph")
        pre = preprocess(fp32, Path(tmp) / "pre.onnx")
        x = np.random.default_rng(0).standard_normal((batch, 3, src.image_size, src.image_size))
        feeds = {"image": x.astype(np.float32)}
        sessions = {s: _session(pre if s.preprocessed else fp32, s) for s in SETTINGS}
        reference = sessions[SETTINGS[0]].run(None, feeds)[0]
        diffs = {}
        for setting, session in sessions.items():  # warm-up, and the outputs must not change
            diffs[setting] = float(np.abs(session.run(None, feeds)[0] - reference).max())
        per_round: dict[Setting, list[float]] = {s: [] for s in SETTINGS}
        for _ in range(rounds):
            for setting, session in sessions.items():
                times = []
                for _ in range(iters):
                    started = time.perf_counter()
                    session.run(None, feeds)
                    times.append(time.perf_counter() - started)
                per_round[setting].append(float(np.median(times)))
    base = float(np.median(per_round[SETTINGS[0]]))
    rows = []
    for setting in SETTINGS:
        ms = float(np.median(per_round[setting])) * 1e3
        rows.append(
            {
                "setting": setting.name,
                "ms_per_batch": ms,
                "images_per_s": batch / (ms / 1e3),
                "vs_default": base * 1e3 / ms,
                "max_abs_diff": diffs[setting],
            }
        )
    return {"model": spec, "batch": batch, "rounds": rounds, "iters": iters, "rows": rows}


COLUMNS = [
    ("setting", "setting"),
    ("ms_per_batch", "ms/batch"),
    ("images_per_s", "images/s"),
    ("vs_default", "speed vs default"),
    ("max_abs_diff", "max |Δ| vs default"),
]


def ort_settings_markdown(result: dict) -> str:
    from rsz_bench.report import markdown_table

    head = (
        f"ONNX Runtime session settings on `{result['model']}` (FP32 image graph), batch {result['batch']}, "
        f"median of {result['rounds']} interleaved rounds of {result['iters']} runs each."
    )
    return head + "\n\n" + markdown_table(result["rows"], COLUMNS) + "\n"
