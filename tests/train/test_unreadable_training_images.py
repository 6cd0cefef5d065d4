"""A corrupt or truncated file in a class-folder data set is left out of training and reported; it does
not stop the run, unless a class would be left with no readable image. And a split with one val class says
that validation cannot choose an epoch."""

from __future__ import annotations

import json
from pathlib import Path

from click.testing import CliRunner
from PIL import Image

from rsz_train.cli import main
from rsz_train.data.formats import load_benchmark

TINY_YAML = "train:\n  image_size: 32\n  epochs: 1\n  batch_size: 32\n  warmup_epochs: 1\n"


def _class_folders(tiny_benchmark: Path, root: Path, classes: int = 8) -> list[str]:
    """ROOT/<class>/*.jpg from the tiny benchmark, and a seen/unseen class-list split beside it."""
    bench = load_benchmark(tiny_benchmark)
    names = bench.class_names[:classes]
    for path, label in zip(bench.image_paths, bench.labels):
        if bench.class_names[label] in names:
            target = root / "data" / bench.class_names[label] / (Path(path).stem + ".jpg")
            target.parent.mkdir(parents=True, exist_ok=True)
            Image.open(bench.root / path).convert("RGB").save(target)
    (root / "split").mkdir()
    (root / "split" / "seen.txt").write_text("\n".join(names[:6]) + "\n")
    (root / "split" / "unseen.txt").write_text("\n".join(names[6:]) + "\n")
    (root / "tiny.yaml").write_text(TINY_YAML)
    return names


def _train(tiny_benchmark: Path, root: Path):
    args = ["dsva", "--data", str(root / "data"), "--split-file", str(root / "split"),
            "--attributes", str(tiny_benchmark / "attributes.txt"), "--config", str(root / "tiny.yaml"),
            "--out", str(root / "run"), "--device", "cpu"]  # fmt: skip
    return CliRunner().invoke(main, args)


def test_unreadable_images_are_left_out_and_reported(tiny_benchmark, tmp_path):
    names = _class_folders(tiny_benchmark, tmp_path)
    seen_image = sorted((tmp_path / "data" / names[0]).iterdir())[0]
    seen_image.write_bytes(b"")  # a 0-byte download
    unseen_image = sorted((tmp_path / "data" / names[7]).iterdir())[1]
    unseen_image.write_bytes(unseen_image.read_bytes()[:200])  # truncated
    result = _train(tiny_benchmark, tmp_path)
    assert result.exit_code == 0, result.output
    assert "note: 2 unreadable image(s) left out" in result.output
    assert "has 1 val class: ZSL over one class is 1.0 at every epoch" in result.output  # (6 seen classes)
    report = json.loads((tmp_path / "run" / "report.json").read_text())
    left_out = {str(Path(p)) for p in report["unreadable_images"]}
    assert left_out == {f"{names[0]}/{seen_image.name}", f"{names[7]}/{unseen_image.name}"}
    assert all("cannot read image" in why for why in report["unreadable_images"].values())
    assert "zsl" in report["test"]


def test_a_class_with_no_readable_image_is_a_one_line_error(tiny_benchmark, tmp_path):
    names = _class_folders(tiny_benchmark, tmp_path)
    for image in (tmp_path / "data" / names[6]).iterdir():
        image.write_bytes(b"not an image")
    result = _train(tiny_benchmark, tmp_path)
    assert result.exit_code == 2
    [line] = result.output.strip().splitlines()
    assert f"no readable test_unseen image of {names[6]!r}" in line and "cannot read image" in line
    assert not (tmp_path / "run" / "report.json").exists()


def test_a_multi_page_tiff_is_no_training_image(tmp_path):
    """A training image is one file: a multi-page TIFF is left out with its reason, not read as its first page
    alone (rsz-infer labels every page); a one-page TIFF is read."""
    from rsz_train.data.batches import load_readable_images

    pages = [Image.new("RGB", (24, 24), colour) for colour in ("red", "green")]
    pages[0].save(tmp_path / "stack.tif", save_all=True, append_images=pages[1:])
    pages[1].save(tmp_path / "one.tif")
    kept, images, unreadable = load_readable_images(tmp_path, ["stack.tif", "one.tif"], 16)
    assert kept == ["one.tif"] and images.shape == (1, 16, 16, 3)
    assert "a multi-page TIFF (2 pages): read as one image per file here" in unreadable["stack.tif"]
