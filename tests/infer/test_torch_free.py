"""rsz_infer runs where PyTorch cannot be imported: `--help` and a whole labeling run, in a subprocess."""

from __future__ import annotations

import subprocess
import sys

from .helpers import save, solid

BLOCK_TORCH = "import sys; sys.modules['torch'] = None\n"  # `import torch` now raises ImportError

LABEL_RUN = """
import sys
import rsz_infer, rsz_infer.cli, rsz_infer.index, rsz_infer.report, rsz_infer.backend
try:
    rsz_infer.cli.main(sys.argv[1:])
except SystemExit as exit:
    assert sys.modules['torch'] is None, 'something imported torch'
    raise
"""


def _run(code: str, *args) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-c", BLOCK_TORCH + code, *map(str, args)],
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_help_without_torch():
    proc = _run("from rsz_infer.cli import main; main(['--help'])")
    assert proc.returncode == 0, proc.stderr
    assert "--classes" in proc.stdout and "rsz-infer index" in proc.stdout and "Exit codes" in proc.stdout


def test_labeling_without_torch(bundles, class_file, tmp_path):
    save(tmp_path / "tiles" / "red.png", solid("red"))
    out = tmp_path / "labels.csv"
    args = [tmp_path / "tiles", "--classes", class_file, "--model", bundles["msa"], "--out", out, "--quiet"]
    proc = _run(LABEL_RUN, *args)
    assert proc.returncode == 0, proc.stderr
    assert "1 tiles labeled" in proc.stderr and ",red," in out.read_text()
