"""rsz-bench latency on the tests' tiny real bundles (tests/infer/helpers.py): two bundles of one name, and
where PyTorch cannot be imported (an edge device with the inference side only; in a subprocess, as
tests/infer/test_torch_free.py does it)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from rsz_bench.cli import main

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
def bundles(tmp_path_factory) -> list[Path]:
    """a/model and b/model: two bundles of one folder name."""
    root = tmp_path_factory.mktemp("bench-bundles")
    graphs = export_graphs(root)
    return [write_bundle(root / parent / "model", "mcfa", graphs) for parent in ("a", "b")]


@pytest.fixture(scope="module")
def bundle(bundles) -> Path:
    return bundles[0]


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


def test_two_models_of_one_name_keep_their_own_results(bundles, tmp_path):
    """a/model and b/model were both written to latency_model.json, the second over the first."""
    args = ["latency", "--backend", "ort", *LATENCY_ARGS, "--out", str(tmp_path)]
    for bundle in (*bundles, bundles[0]):  # the same model twice is two results too
        args += ["--model", str(bundle)]
    result = CliRunner().invoke(main, args, catch_exceptions=False)
    assert result.exit_code == 0, result.output
    stems = ["latency_a_model", "latency_b_model", "latency_a_model_2"]
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        f"{s}.{e}" for s in stems for e in ("json", "md")
    )
    for stem, bundle in zip(stems, (*bundles, bundles[0])):
        assert json.loads((tmp_path / f"{stem}.json").read_text())["model"] == str(bundle)


def test_a_result_of_another_model_of_one_name_is_never_overwritten(bundles, tmp_path):
    """rsz-bench latency --model a/model, then --model b/model into the same --out: b's figures replaced
    a's latency_model.json silently. Now refused before b is measured; a/model again refreshes its own."""
    out = tmp_path / "res"
    a, b = (str(p) for p in bundles)
    latency = ["latency", "--backend", "ort", *LATENCY_ARGS, "--out", str(out), "--model"]
    result = CliRunner().invoke(main, [*latency, a], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    first = (out / "latency_model.json").read_text()
    assert json.loads(first)["model_path"] == str(bundles[0].resolve())
    # e2e (and accuracy, ort-settings) check their own file the same way: here a's e2e result
    (out / "e2e_model.json").write_text(first.replace('"kind": "latency"', '"kind": "e2e"'))
    for args in ([*latency, b], ["e2e", str(tmp_path), "--out", str(out), "--model", b]):
        result = CliRunner().invoke(main, args)
        assert result.exit_code == 2, result.output
        assert result.output == (
            f"error: --out {out}: {out / (args[0] + '_model.json')} holds the {args[0]} result of another "
            f"model ({bundles[0].resolve()}); pass another --out, or remove that file to replace it\n"
        )
    assert (out / "latency_model.json").read_text() == first
    result = CliRunner().invoke(main, [*latency, a], catch_exceptions=False)  # a re-run refreshes it
    assert result.exit_code == 0 and f"wrote {out / 'latency_model.json'}" in result.output, result.output


FROM_A_CHECKOUT = """
import runpy, sys
# an edge device: rsz not installed (benchmarks/ is not importable as rsz_bench), no PyTorch
sys.modules['rsz_bench'] = sys.modules['rsz_export'] = sys.modules['torch'] = None
sys.argv = sys.argv[1:]
try:
    runpy.run_path(sys.argv[0], run_name='__main__')
finally:
    print('rsz_bench:', sys.modules['rsz_bench'].__file__, file=sys.stderr)
"""


def test_edge_bench_runs_from_a_checkout_where_rsz_is_not_installed(bundle, tmp_path):
    """benchmarks/edge_bench.py, the way in of an edge device, stopped at `from rsz_bench.cli import main`
    (No module named 'rsz_bench'): the checkout's benchmarks/ folder is rsz_bench there."""
    script = ROOT / "benchmarks" / "edge_bench.py"
    args = [
        script,
        "latency",
        "--model",
        bundle,
        "--backend",
        "ort",
        *LATENCY_ARGS,
        "--out",
        tmp_path / "res",
    ]
    proc = subprocess.run(
        [sys.executable, "-c", FROM_A_CHECKOUT, *map(str, args)], capture_output=True, text=True, cwd=tmp_path
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr.strip().splitlines()[-1] == f"rsz_bench: {ROOT / 'benchmarks' / '__init__.py'}"
    rows = json.loads((tmp_path / "res" / "latency_model.json").read_text())["rows"]
    assert [(r["backend"], r["status"]) for r in rows] == [("ort", "ok")]
