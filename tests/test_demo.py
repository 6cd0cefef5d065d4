"""The README's main job end to end, small: synth -> train -> export -> rsz-infer on unseen classes.

Acceptance of the infer issue: labeling through ONNX Runtime (FP16 graphs, a class file the model never
saw) gives the accuracy that training reported, within 0.5 points.
"""

import re
import subprocess
import sys
from pathlib import Path


def test_demo_labels_unseen_classes_as_training_reported(tmp_path):
    rsz_train = Path(sys.executable).parent / "rsz-train"
    result = subprocess.run(
        [str(rsz_train), "demo", "--workdir", str(tmp_path / "demo"), "--per-class", "12", "--epochs", "1"],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    out = result.stdout
    labeled = re.search(r"Top-1 accuracy [\d.]+% \(mean per class ([\d.]+)%", out)
    trained = re.search(r"Training reported mean per-class accuracy ([\d.]+)%", out)
    assert labeled and trained, out
    assert abs(float(labeled.group(1)) - float(trained.group(1))) <= 0.5
    rows = (tmp_path / "demo" / "labels.csv").read_text().splitlines()
    tiles = list((tmp_path / "demo" / "unseen_tiles").iterdir())
    assert len(rows) == len(tiles) + 1  # header + every tile labeled
    assert (tmp_path / "demo" / "models" / "dsva" / "manifest.json").is_file()
