"""Throughput against batch size, one line per backend and precision (matplotlib, Agg: no display)."""

from __future__ import annotations

import io
import json
from pathlib import Path

from rsz_infer.errors import RszError
from rsz_infer.outputs import atomic_write_bytes


def plot_throughput(results_json: Path, out_png: Path) -> Path:
    """Draw images/s vs batch size from a `rsz-bench latency` JSON file into out_png (written atomically)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    try:
        result = json.loads(Path(results_json).read_text(encoding="utf-8"))
        kind = result.get("kind")
        rows = [r for r in result["rows"] if r.get("status") == "ok"]
    except (OSError, json.JSONDecodeError, KeyError, TypeError, AttributeError) as err:
        raise RszError(f"{results_json}: not a rsz-bench latency result ({err})") from None
    if kind != "latency":  # accuracy and e2e rows have no batch sizes to draw
        raise RszError(f"{results_json}: a rsz-bench {kind} result; plot draws latency results")
    if not rows:
        raise RszError(f"{results_json}: no measured rows to plot")
    series: dict[str, list[tuple[int, float]]] = {}
    for r in rows:
        series.setdefault(f"{r['backend']} {r['precision']} ({r['device']})", []).append(
            (r["batch"], r["images_per_s"])
        )
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for label, points in sorted(series.items()):
        points.sort()
        ax.plot([b for b, _ in points], [v for _, v in points], marker="o", label=label)
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    ax.set_xlabel("batch size")
    ax.set_ylabel("images / s (p50)")
    machine = result.get("machine", {})
    ax.set_title(f"{result.get('model', '')} on {machine.get('gpu') or machine.get('cpu', '')}", fontsize=9)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    png = io.BytesIO()
    fig.savefig(png, format="png", dpi=120)
    plt.close(fig)
    out_png = Path(out_png)
    out_png.parent.mkdir(parents=True, exist_ok=True)
    # as the JSON and markdown results: a temporary file per process beside it, renamed over it, and no
    # temporary left when that fails (an --out that is a folder, a full disk)
    atomic_write_bytes(out_png, png.getvalue())
    return out_png
