"""The README's quick start, literally: `rsz-train demo` in a fresh folder, then the headline command
`rsz-infer tiles/ --classes new.txt` with no --model (the demo makes its bundle models/default).

Acceptance of the infer issue: labeling through ONNX Runtime (FP16 graphs, a class file the model never
saw) gives the accuracy that training reported, within 0.5 points.
"""

import re
import subprocess
import sys
from pathlib import Path


def _demo(tools: Path, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [str(tools / "rsz-train"), "demo", "--workdir", "demo", "--per-class", "5", "--epochs", "1"],
        capture_output=True,
        text=True,
        timeout=600,
        cwd=cwd,  # the README runs it in the checkout; any folder works the same
    )


def test_demo_labels_unseen_classes_as_training_reported(tmp_path):
    tools = Path(sys.executable).parent
    result = _demo(tools, tmp_path)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    out = result.stdout
    labeled = re.search(r"Top-1 accuracy [\d.]+% \(mean per class ([\d.]+)%", out)
    trained = re.search(r"Training reported mean per-class accuracy ([\d.]+)%", out)
    assert labeled and trained, out
    assert abs(float(labeled.group(1)) - float(trained.group(1))) <= 0.5
    # every unseen class of the class file is listed, one it never predicted with 0 tiles
    listed = re.findall(r"^  (\S+) +(\d+) tiles$", out, flags=re.M)
    classes = [line.split(":")[0] for line in (tmp_path / "demo" / "new.txt").read_text().splitlines()[1:]]
    assert sorted(name for name, _ in listed) == sorted(classes)
    assert sum(int(n) for _, n in listed) == len(list((tmp_path / "demo" / "unseen_tiles").iterdir()))
    rows = (tmp_path / "demo" / "labels.csv").read_text().splitlines()
    tiles = list((tmp_path / "demo" / "unseen_tiles").iterdir())
    assert len(rows) == len(tiles) + 1  # header + every tile labeled
    assert (tmp_path / "demo" / "models" / "dsva" / "manifest.json").is_file()

    # issue 16: the headline command right after the demo, with rsz-infer's default --model
    assert "models/default -> demo/models/dsva" in out
    headline = subprocess.run(
        [str(tools / "rsz-infer"), "demo/unseen_tiles", "--classes", "demo/new.txt", "--quiet"],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=tmp_path,
    )
    assert headline.returncode == 0, headline.stderr[-2000:]
    assert f"{len(tiles)} tiles labeled, 0 skipped" in headline.stderr
    assert (tmp_path / "labels.csv").read_text() == (tmp_path / "demo" / "labels.csv").read_text()

    # the README's command again in the same folder (a user reruns it, or restarts it after Ctrl-C): it
    # continues the run there instead of stopping at "run folder is not empty", and reports the same
    again = _demo(tools, tmp_path)
    assert again.returncode == 0, again.stdout[-2000:] + again.stderr[-2000:]
    assert re.search(r"Top-1 accuracy [\d.]+% \(mean per class ([\d.]+)%", again.stdout).group(
        1
    ) == labeled.group(1)


def test_demo_workdir_that_is_a_file_is_one_line(tmp_path):
    (tmp_path / "wfile").write_text("not a folder")
    tools = Path(sys.executable).parent
    result = subprocess.run(
        [str(tools / "rsz-train"), "demo", "--workdir", "wfile"], capture_output=True, text=True, cwd=tmp_path
    )
    assert result.returncode == 2 and result.stderr.strip().splitlines() == [
        "error: --workdir wfile: is a file; the demo needs a folder (new or its own earlier one)"
    ], result.stderr
