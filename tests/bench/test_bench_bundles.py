"""rsz-bench latency on the tests' tiny real bundles (tests/infer/helpers.py): where PyTorch cannot be
imported (an edge device with the inference side only), in a subprocess as tests/infer/test_torch_free.py
does it."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from ..infer.helpers import export_graphs, write_bundle

ROOT = Path(__file__).resolve().parents[2]
LATENCY_ARGS = ["--iters", "2", "--warmup", "1", "--batch", "1"]

WITHOUT_TORCH = """
import sys
sys.modules['torch'] = None  # `import torch` now raises ImportError
from rsz_bench.cli import main
try:
    main(sys.argv[1:])
except SystemExit:
    assert sys.modules['torch'] is None, 'something imported torch'
    raise
"""


@pytest.fixture(scope="module")
def bundle(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("bench-bundles")
    return write_bundle(root / "a" / "model", "mcfa", export_graphs(root))


def _without_torch(*args, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-c", WITHOUT_TORCH, *map(str, args)], capture_output=True, text=True, cwd=cwd
    )


def test_latency_without_torch_reports_the_torch_rows_as_skipped(bundle, tmp_path):
    """The torch rows say they need PyTorch, the ort rows are measured (they were an error naming
    ModuleNotFoundError; --run, for the torch rows only, stopped the whole run)."""
    run = tmp_path / "runs" / "x"  # never read without torch
    args = ["latency", "--model", bundle, "--backend", "ort,torch,torch-compile", "--run", run]
    proc = _without_torch(*args, *LATENCY_ARGS, "--out", tmp_path / "res", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    result = json.loads((tmp_path / "res" / "latency_model.json").read_text())
    rows = {r["backend"]: r for r in result["rows"]}
    assert sorted(rows) == ["ort", "torch", "torch-compile"]
    assert rows["ort"]["status"] == "ok" and rows["ort"]["p50_ms"] > 0
    for backend in ("torch", "torch-compile"):
        assert rows[backend]["status"] == "skipped (needs PyTorch)", rows[backend]
    md = (tmp_path / "res" / "latency_model.md").read_text()
    assert md.count("| skipped (needs PyTorch) |") == 2
