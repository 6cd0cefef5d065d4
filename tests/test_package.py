"""The package: a LICENSE matching pyproject, py.typed, one version string, --version and -h on every
command, and rsz-train / rsz-export / rsz-bench without their extras say what to install in one line."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import tomllib
from click.testing import CliRunner

import rsz_infer

ROOT = Path(__file__).resolve().parents[1]


def test_license_py_typed_and_one_version():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())
    assert project["project"]["license"] == "MIT" and project["project"]["license-files"] == ["LICENSE"]
    assert (ROOT / "LICENSE").read_text().startswith("MIT License")
    assert "version" not in project["project"] and project["project"]["dynamic"] == ["version"]
    assert project["tool"]["setuptools"]["dynamic"]["version"] == {"attr": "rsz_infer.__version__"}
    assert (ROOT / "rsz_infer" / "py.typed").is_file()
    assert "py.typed" in project["tool"]["setuptools"]["package-data"]["*"]


def _commands():
    from rsz_bench.cli import main as bench
    from rsz_export.cli import main as export
    from rsz_infer.cli import cli as infer
    from rsz_train.cli import main as train

    return {"rsz-infer": infer, "rsz-train": train, "rsz-export": export, "rsz-bench": bench}


@pytest.mark.parametrize("name", ["rsz-infer", "rsz-train", "rsz-export", "rsz-bench"])
def test_version_and_h_on_every_command(name):
    group = _commands()[name]
    runner = CliRunner()
    result = runner.invoke(group, ["--version"], prog_name=name)
    assert result.exit_code == 0 and result.output.strip() == f"{name}, version {rsz_infer.__version__}"
    result = runner.invoke(group, ["-h"], prog_name=name)
    assert result.exit_code == 0 and result.output.startswith("Usage:")
    for sub in sorted(group.commands):
        result = runner.invoke(group, [sub, "-h"], prog_name=name)
        assert result.exit_code == 0 and "Usage:" in result.output, (name, sub, result.output)


@pytest.mark.parametrize(
    "name, module",
    [("rsz-infer", "rsz_infer.cli"), ("rsz-train", "rsz_train.cli"), ("rsz-export", "rsz_export.cli"),
     ("rsz-bench", "rsz_bench.cli")],
)  # fmt: skip
def test_python_m_runs_every_command(name, module, tmp_path):
    """`python -m MODULE` (no console script on the PATH, torchrun -m) is the command itself; rsz_export.cli
    had no __main__ block, so it imported and did nothing."""
    proc = subprocess.run(
        [sys.executable, "-m", module, "--version"], capture_output=True, text=True, cwd=tmp_path
    )
    assert proc.returncode == 0 and proc.stdout.strip() == f"{name}, version {rsz_infer.__version__}", proc


def test_console_scripts_point_at_torch_free_entries():
    scripts = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    assert scripts["rsz-train"] == "rsz_infer.entry:train_main"
    assert scripts["rsz-export"] == "rsz_infer.entry:export_main"
    assert scripts["rsz-bench"] == "rsz_infer.entry:bench_main"


WITHOUT_TORCH = (
    "import sys\n"
    "sys.modules['torch'] = None  # as on an install without the train extra: `import torch` fails\n"
    "from rsz_infer import entry\n"
    "sys.argv = sys.argv[1:]\n"
    "getattr(entry, sys.argv[0].replace('rsz-', '') + '_main')()\n"
)


@pytest.mark.parametrize(
    "argv, extra",
    [
        (["rsz-train", "dsva", "--data", "nowhere", "--out", "runs/x"], "train"),
        (["rsz-export", "--model", "dsva", "--run", "runs/x", "--out", "models/x"], "export"),
    ],
)
def test_without_the_train_extra_says_what_to_install(argv, extra, tmp_path):
    proc = subprocess.run(
        [sys.executable, "-c", WITHOUT_TORCH, *argv], capture_output=True, text=True, cwd=tmp_path
    )
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr
    assert proc.stderr.strip().splitlines() == [
        f"error: {argv[0]} needs the {extra} extra (torch is not installed): pip install 'rsz[{extra}]'"
    ]


WITHOUT = (
    "import sys\n"
    "sys.modules[sys.argv[1]] = None  # as on an install without the extra that brings it\n"
    "from rsz_infer import entry\n"
    "sys.argv = sys.argv[2:]\n"
    "getattr(entry, sys.argv[0].replace('rsz-', '') + '_main')()\n"
)


@pytest.mark.parametrize(
    "missing, argv, extra",
    [
        ("torch", "rsz-bench accuracy --model m --run r --data d --split s".split(), "train"),
        ("torch", "rsz-bench latency --model ref:vit_b32 --batch 1".split(), "train"),
        ("matplotlib", "rsz-bench plot latency.json --out plot.png".split(), "bench"),
    ],
)
def test_rsz_bench_without_its_extra_says_what_to_install(missing, argv, extra, tmp_path):
    proc = subprocess.run(
        [sys.executable, "-c", WITHOUT, missing, *argv], capture_output=True, text=True, cwd=tmp_path
    )
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr
    assert proc.stderr.strip().splitlines() == [
        f"error: rsz-bench needs the {extra} extra ({missing} is not installed): pip install 'rsz[{extra}]'"
    ]


WAY_IN = (
    "import runpy, sys\n"
    "sys.modules['matplotlib'] = None  # as without the bench extra\n"
    "way, sys.argv = sys.argv[1], sys.argv[1:]\n"
    "if way.endswith('.py'):\n"
    "    runpy.run_path(way, run_name='__main__')\n"
    "else:\n"
    "    runpy.run_module(way, run_name='__main__', alter_sys=True)\n"
)


@pytest.mark.parametrize(
    "way", ["rsz_bench", "rsz_bench.cli", "rsz_bench.edge_bench", str(ROOT / "benchmarks" / "edge_bench.py")]
)
def test_every_way_into_rsz_bench_is_its_console_script(way, tmp_path):
    """python -m rsz_bench (there was no __main__), -m rsz_bench.cli, -m rsz_bench.edge_bench and
    benchmarks/edge_bench.py run rsz_infer.entry.bench_main: a missing extra is its one line, not a
    traceback."""
    argv = [way, "plot", "latency.json", "--out", "plot.png"]
    proc = subprocess.run([sys.executable, "-c", WAY_IN, *argv], capture_output=True, text=True, cwd=tmp_path)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr
    assert proc.stderr.strip().splitlines() == [
        "error: rsz-bench needs the bench extra (matplotlib is not installed): pip install 'rsz[bench]'"
    ]
