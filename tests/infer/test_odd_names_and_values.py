"""Odd names and values: non-UTF-8 file names in CSV and HTML, NaN pixels as nodata, spreadsheet formulas
neutralised, NUL bytes in class names refused, --bands beyond a scene's bands as one line."""

from __future__ import annotations

import os
import re
import subprocess
import sys

import numpy as np
import pytest

from rsz_infer.errors import RszError

from .helpers import bands_first, read_jsonl, save, solid, write_geotiff
from .test_hostile_bundles_and_indexes import error_lines
from .test_label import run_cli


def test_non_utf8_file_names_in_csv_html_and_search(bundles, class_file, tmp_path, capsys):
    folder = tmp_path / "tiles"
    save(folder / "plain_blue.png", solid("blue"))
    odd = os.fsdecode(os.fsencode(str(folder)) + b"/caf\xe9_red.png")  # Latin-1 bytes: not UTF-8
    save(type(folder)(odd), solid("red"))
    out, page = tmp_path / "labels.csv", tmp_path / "gallery.html"
    args = [
        folder,
        "--classes",
        class_file,
        "--model",
        bundles["msa"],
        "--out",
        out,
        "--html",
        page,
        "--quiet",
    ]
    code, _, err = run_cli(args, capsys)
    assert code == 0, err
    data = out.read_bytes()
    assert b"caf\xe9_red.png" in data  # the name's own bytes: the path in the CSV opens the file
    html = page.read_bytes().decode("utf-8")  # valid UTF-8, the odd byte shown as U+FFFD
    assert "caf\ufffd_red.png" in html and len(re.findall(r'src="data:image/jpeg;base64,', html)) == 2
    idx = tmp_path / "idx"
    code, _, _ = run_cli(["index", folder, "--model", bundles["msa"], "--out", idx, "--quiet"], capsys)
    assert code in (0, None)
    page2 = tmp_path / "search.html"
    search = [
        sys.executable,
        "-m",
        "rsz_infer.cli",
        "search",
        idx,
        "--text",
        "red",
        "-k",
        "2",
        "--html",
        page2,
    ]
    proc = subprocess.run([str(a) for a in search], capture_output=True)
    assert proc.returncode == 0 and b"Traceback" not in proc.stderr, proc.stderr
    assert len(proc.stdout.splitlines()) == 2 and b"caf\xe9_red.png" in proc.stdout  # its own bytes
    assert len(re.findall(r'src="data:image/jpeg;base64,', page2.read_text(encoding="utf-8"))) == 2


def test_nan_pixels_of_float_rasters_are_nodata(bundles, class_file, tmp_path, capsys):
    red = bands_first(solid("red", 64)).astype(np.float32)
    red[:, :32, :32] = np.nan  # one window entirely NaN, no nodata declared
    red[:, 40:44, 40:44] = np.nan  # a few NaN pixels in a valid window
    scene = write_geotiff(tmp_path / "float_scene.tif", red)
    out = tmp_path / "labels.jsonl"
    args = [scene, "--classes", class_file, "--model", bundles["msa"], "--out", out, "--quiet"]
    code, _, err = run_cli(args + ["--tile-size", 32], capsys)
    assert code == 0, err
    rows = read_jsonl(out)
    assert sorted(r["window"][:2] for r in rows) == [[0, 32], [32, 0], [32, 32]]
    assert all(r["labels"][0] == "red" for r in rows)
    assert "1 nodata" in err
    # a raster of only NaN is nodata too, not a tile labeled from zeros
    blank = write_geotiff(tmp_path / "blank.tif", np.full((3, 32, 32), np.nan, np.float32))
    code, _, err = run_cli([blank, *args[1:], "--tile-size", 32], capsys)
    assert code == 2 and "0 tiles labeled" in err and "1 nodata" in err


def test_csv_cells_that_would_be_formulas_are_neutralised(bundles, tmp_path, capsys):
    classes = tmp_path / "classes.txt"
    classes.write_text("=red: red roofs\n@green: green fields\n-blue: blue water\n", encoding="utf-8")
    folder = tmp_path / "tiles"
    for colour in ("red", "green", "blue"):
        save(folder / f"{colour}.png", solid(colour))
    out = tmp_path / "labels.csv"
    args = [folder, "--classes", classes, "--model", bundles["msa"], "--out", out, "--quiet", "--top-k", 1]
    code, _, err = run_cli(args, capsys)
    assert code == 0, err
    text = out.read_text()
    for name in ("=red", "@green", "-blue"):
        assert f",'{name}," in text and f",{name}," not in text
    assert not re.search(r"(^|,)[=+@-]", text.split("\n", 1)[1].replace(",-0.", ",0."))  # no raw formula cell
    # rsz reads its own cells back as they were (the gallery's --labels captions)
    from rsz_infer.report import read_label_rows

    assert sorted(r["labels"][0] for r in read_label_rows(out)) == ["-blue", "=red", "@green"]
    # a row cut short (or one cell too many) is a one-line error naming the file and the line
    lines = text.splitlines()
    for broken in (lines[1].rsplit(",", 2)[0], lines[1] + ",extra"):
        out.write_text("\n".join([lines[0], lines[2], broken]) + "\n")
        with pytest.raises(
            RszError, match=r"labels.csv: not a readable rsz-infer labels file \(line 3: not as many cells"
        ):
            read_label_rows(out)


def test_nul_in_class_names_is_refused(bundles, tmp_path, capsys):
    classes = tmp_path / "classes.txt"
    classes.write_bytes(b"red: red roofs\nbl\x00ue: blue water\n")
    save(tmp_path / "t" / "red.png", solid("red"))
    out = tmp_path / "labels.csv"
    code, _, err = run_cli(
        [tmp_path / "t", "--classes", classes, "--model", bundles["msa"], "--out", out], capsys
    )
    lines = error_lines(err)
    assert code == 2 and len(lines) == 1 and "classes.txt:2: a NUL or control character" in lines[0]
    assert not out.exists()


def test_bands_beyond_a_scene_are_one_line(bundles, class_file, tmp_path, capsys):
    scene = write_geotiff(tmp_path / "rgb.tif", bands_first(solid("red", 64)))
    out = tmp_path / "labels.csv"
    args = [scene, "--classes", class_file, "--model", bundles["msa"], "--out", out, "--tile-size", 32]
    code, _, err = run_cli(args + ["--bands", "5,4,3"], capsys)
    lines = error_lines(err)
    assert (
        code == 2
        and len(lines) == 1
        and lines[0] == f"error: {scene}: --bands 5,4,3: the file has only 3 bands"
    )
    assert not out.exists()
