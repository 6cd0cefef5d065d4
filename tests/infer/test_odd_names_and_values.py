"""Odd names and values: non-UTF-8 file names in CSV and HTML, NaN pixels as nodata, spreadsheet formulas
neutralised, NUL bytes in class names refused, --bands beyond a raster's bands a skipped row (one line when
every input is so), one stderr line per skipped tile whatever its name."""

from __future__ import annotations

import os
import re
import subprocess
import sys

import numpy as np
import pytest

from rsz_infer.errors import RszError
from rsz_infer.images import TileOptions, decode_tile, discover_tiles

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


def test_declared_nodata_of_a_tile_file_is_nodata_as_in_a_scene(bundles, class_file, tmp_path, capsys):
    # tiles cut from a 16-bit scene with nodata 0 (gdal_retile's edge tiles): one partly nodata, one all
    data = bands_first(solid("red", 32)).astype(np.uint16) * 40 + 1000
    data[:, :, :12] = 0
    folder = tmp_path / "tiles"
    part = write_geotiff(folder / "part.tif", data, nodata=0)
    write_geotiff(folder / "blank.tif", np.zeros_like(data), nodata=0)
    valid_only = write_geotiff(tmp_path / "valid_only.tif", data[:, :, 12:].copy())

    def decoded(path, **kw):
        return [decode_tile(t, TileOptions(**kw))[0] for t in discover_tiles([path], TileOptions(**kw))]

    # the nodata pixels are black and do not pull the stretch down: the valid ones look as they do alone
    [rgb], [alone] = decoded(part), decoded(valid_only)
    assert (rgb[:, :12] == 0).all() and np.array_equal(rgb[:, 12:], alone)
    out = tmp_path / "labels.jsonl"
    args = [folder, "--classes", class_file, "--model", bundles["msa"], "--out", out, "--quiet"]
    code, _, err = run_cli(args, capsys)
    assert code == 0 and "1 tiles labeled" in err and "1 nodata" in err, err
    assert [r["tile"] for r in read_jsonl(out)] == [str(part)]
    # in a scene window too, declared nodata (here 65535) is black, never stretched to white
    scene = np.concatenate([data, data], axis=2)
    scene[scene == 0] = 65535
    windows = decoded(write_geotiff(tmp_path / "scene.tif", scene, nodata=65535), tile_size=32)
    assert len(windows) == 2 and all((w[:, :12] == 0).all() for w in windows)


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


@pytest.mark.parametrize(
    "name, text",
    [
        ("deep.geojson", "[" * 100_000 + "]" * 100_000),  # too deep for json's recursive parser
        ("deep.jsonl", "[" * 100_000 + "]" * 100_000 + "\n"),
        ("shape.geojson", '{"features": [{"properties": 5}]}'),
        ("list.jsonl", "[1, 2]\n"),
        ("labels.jsonl", '{"tile": "a", "labels": 5, "scores": []}\n'),
    ],
)
def test_a_labels_file_of_another_shape_is_one_line(name, text, tmp_path):
    """search --labels reads a file the user names (perhaps from elsewhere): never a traceback."""
    from rsz_infer.report import read_label_rows

    path = tmp_path / name
    path.write_text(text)
    with pytest.raises(RszError, match=f"{name}: not a readable rsz-infer labels file"):
        read_label_rows(path)


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
        and lines[0] == f"error: {scene}: the file has only 3 bands for --bands 5,4,3"
    )
    assert not out.exists()


def test_bands_over_jpeg_png_tiles_is_said_not_applied(bundles, class_file, tmp_path, capsys):
    """Small JPEG/PNG tiles are decoded as RGB by Pillow, whatever --bands says (3,2,1 gave the labels of no
    --bands, without a word): a note says so, naming one of them; a GeoTIFF tile gets no such note."""
    png = save(tmp_path / "t" / "a.png", solid("red", 24))
    tif = write_geotiff(tmp_path / "t" / "b.tif", bands_first(solid("red", 24)))
    options = ["--classes", class_file, "--model", bundles["msa"], "--bands", "3,2,1"]
    code, _, err = run_cli([png, *options, "--out", tmp_path / "a.csv"], capsys)
    assert code in (0, None)
    assert (
        f"--bands 3,2,1: not applied to 1 JPEG/PNG tiles within --tile-size, read as RGB (e.g. {png})" in err
    )
    code, _, err = run_cli([tif, *options, "--out", tmp_path / "b.csv"], capsys)
    assert code in (0, None) and "not applied" not in err


def test_index_ray_with_every_input_short_of_bands_or_none_is_the_usage_error(bundles, tmp_path, capsys):
    """`index --ray` started Ray, embedded nothing and wrote an empty index (exit 2 "nothing was indexed", or
    exit 0 for an empty folder) where the single-process index and `label --ray` give one line naming the
    file and its band count (or the empty input), before anything is made."""
    pytest.importorskip("ray")
    scene = write_geotiff(tmp_path / "rgb.tif", bands_first(solid("red", 64)))
    (tmp_path / "empty").mkdir()
    base = ["index", "--model", bundles["msa"], "--tile-size", 32, "--quiet"]
    cases = [
        ([scene, "--bands", "5,4,3"], f"error: {scene}: the file has only 3 bands for --bands 5,4,3"),
        ([tmp_path / "empty"], f"error: {tmp_path / 'empty'}: no JPEG, PNG or TIFF files found"),
    ]
    for args, line in cases:
        for ray in ([], ["--ray"]):
            out = tmp_path / f"idx{len(ray)}"
            code, _, err = run_cli([*base, *args, "--out", out, *ray], capsys)
            assert (code, error_lines(err)) == (2, [line]), (ray, err)
            assert not out.exists()
    # the Python API keeps its skipped record, which names the file and the band count as well
    from rsz_infer import Embedder, Labeler, RszError, TileOptions

    tiles = TileOptions(tile_size=32, bands=(5, 4, 3))
    with Labeler(bundles["msa"], ["red", "blue"], tiles=tiles) as labeler:
        (record,) = labeler.label(scene)
    reason = "the file has only 3 bands for --bands 5,4,3"
    assert (record["tile"], record["skipped"]) == (str(scene), reason)
    with Embedder(bundles["msa"], tiles=tiles) as embedder, pytest.raises(RszError) as error:
        embedder.embed(scene)
    assert str(error.value) == f"{scene}: {reason}"


def test_bands_beyond_one_of_several_inputs_skip_that_raster_only(bundles, class_file, tmp_path, capsys):
    """--bands 4,3,2 over a 4-band scene and a 3-band STAC asset (a scene) and a small 3-band GeoTIFF: the
    3-band scene stopped the whole run; now each 3-band raster is a skipped row naming its band count."""
    import csv
    import json

    four = np.concatenate([bands_first(solid("red", 64)), np.full((1, 64, 64), 90, np.uint8)])
    scene = write_geotiff(tmp_path / "four.tif", four)
    write_geotiff(tmp_path / "three.tif", bands_first(solid("green", 64)))
    small = write_geotiff(tmp_path / "small.tif", bands_first(solid("blue", 24)))
    item = {
        "type": "Feature", "stac_version": "1.0.0", "id": "t", "bbox": [15, 45, 15.01, 45.01],
        "geometry": {"type": "Point", "coordinates": [15, 45]}, "links": [],
        "properties": {"datetime": "2024-06-01T10:00:00Z"},
        "assets": {"visual": {"href": "three.tif", "type": "image/tiff"}},
    }  # fmt: skip
    (tmp_path / "item.json").write_text(json.dumps(item))
    out = tmp_path / "labels.csv"
    inputs = [scene, tmp_path / "item.json", small]
    args = [*inputs, "--classes", class_file, "--model", bundles["msa"], "--out", out, "--tile-size", 32]
    code, _, err = run_cli(args + ["--bands", "4,3,2", "--quiet"], capsys)
    assert code == 3, err
    with open(out, newline="") as f:
        assert [r["tile"].split("@")[0] for r in csv.DictReader(f)] == [str(scene)] * 4
    with open(f"{out}.errors.csv", newline="") as f:
        reasons = {r["tile"]: r["reason"] for r in csv.DictReader(f)}
    assert reasons == {
        str((tmp_path / "three.tif").resolve()): "the file has only 3 bands for --bands 4,3,2",
        str(small): "the file has only 3 bands for --bands 4,3,2",
    }


def _cli(args: list) -> tuple[int, str]:
    """rsz-infer in a process of its own: its real stderr shows odd bytes as escapes (pytest's capture
    would raise on them)."""
    proc = subprocess.run([sys.executable, "-m", "rsz_infer.cli", *map(str, args)], capture_output=True)
    return proc.returncode, proc.stderr.decode("utf-8", "replace")


def _odd(folder, name: bytes):
    """A path in `folder` whose name holds bytes that are not UTF-8 (a str with surrogate escapes)."""
    return type(folder)(os.fsdecode(os.fsencode(str(folder)) + b"/" + name))


def test_non_utf8_names_gdal_would_read_are_skipped_rows_not_dropped(bundles, class_file, tmp_path):
    folder = tmp_path / "tiles"
    save(folder / "ok_blue.png", solid("blue", 24))
    save(_odd(folder, b"small_r\xe9d.png"), solid("red", 24))  # Pillow reads it: labeled as before
    save(_odd(folder, b"big_r\xe9d.png"), solid("red", 64))  # larger than --tile-size: GDAL's
    scene = write_geotiff(tmp_path / "scene.tif", bands_first(solid("green", 64)))
    os.rename(scene, _odd(folder, b"sc\xe8ne.tif"))  # GDAL cannot write such a name: renamed into place
    _odd(folder, b"notes\xff.dat").write_bytes(b"not imagery")  # no raster suffix: ignored in a folder
    named = _odd(tmp_path, b"named\xff.tif")  # named by the user directly: a skipped row too
    write_geotiff(tmp_path / "named.tif", bands_first(solid("red", 24)))
    os.rename(tmp_path / "named.tif", named)
    out = tmp_path / "labels.csv"
    args = [folder, named, "--classes", class_file, "--model", bundles["msa"], "--out", out, "--quiet"]
    code, err = _cli(args + ["--tile-size", 32])
    assert code == 3 and "Traceback" not in err, err
    data = out.read_bytes()
    assert b"ok_blue.png" in data and b"small_r\xe9d.png" in data and b"big_r\xe9d" not in data
    reasons = (tmp_path / "labels.csv.errors.csv").read_bytes().decode("utf-8", "surrogateescape")
    rows = reasons.splitlines()[1:]
    assert len(rows) == 3, rows  # big_red.png, scene.tif, named.tif; never notes.dat
    reason = "file name is not valid UTF-8, which GDAL cannot open (rename the file)"
    for name in ("big_r\udce9d.png", "sc\udce8ne.tif", "named\udcff.tif"):
        assert len([row for row in rows if f"/{name}," in row and reason in row]) == 1, (name, rows)
    assert "2 tiles labeled, 3 skipped" in err


def test_non_utf8_names_in_parquet_geopackage_flatgeobuf(bundles, class_file, tmp_path):
    import pyarrow.parquet as pq
    import pyogrio.raw

    folder = tmp_path / "tiles"
    save(folder / "plain_blue.png", solid("blue"))
    save(_odd(folder, b"caf\xe9_red.png"), solid("red"))
    for suffix in (".parquet", ".gpkg", ".fgb"):
        out = _odd(tmp_path, b"labels\xff" + suffix.encode())  # the output's own name is not UTF-8 either
        args = [folder, "--classes", class_file, "--model", bundles["msa"], "--out", out, "--quiet"]
        code, err = _cli(args)
        assert code == 0 and "Traceback" not in err, (suffix, err)
        readable = tmp_path / f"copy{suffix}"  # GDAL and Arrow cannot open the name itself either
        os.replace(out, readable)
        if suffix == ".parquet":
            tiles = pq.read_table(readable).column("tile").to_pylist()
        else:
            _, _, _, field_data = pyogrio.raw.read(readable, columns=["tile"])
            tiles = list(field_data[0])
        assert sorted(t.rsplit("/", 1)[1] for t in tiles) == ["caf\\xe9_red.png", "plain_blue.png"]
    kept = sorted(
        p.name for p in tmp_path.iterdir() if not p.name.endswith(".run.json")
    )  # what each was made with
    assert kept == ["copy.fgb", "copy.gpkg", "copy.parquet", "tiles"]
    # a folder whose own name is not UTF-8: GDAL and Arrow cannot write there; refused before any work
    odd_folder = _odd(tmp_path, b"d\xfe")
    odd_folder.mkdir()
    code, err = _cli([folder, *args[1:-3], "--out", odd_folder / "labels.gpkg", "--quiet"])
    lines = error_lines(err)
    assert (
        code == 2
        and len(lines) == 1
        and "--out" in lines[0]
        and "folder's name is not valid UTF-8" in lines[0]
    )
    assert list(odd_folder.iterdir()) == []


def test_a_skipped_tile_is_one_line_whatever_its_name(bundles, class_file, tmp_path):
    folder = tmp_path / "tiles"
    save(folder / "ok_blue.png", solid("blue", 24))
    (folder / "broken\nline.png").write_bytes(b"\x89PNG not really")  # a newline in the name
    _odd(folder, b"broken\xff.png").write_bytes(b"\x89PNG not really")  # a byte that is not UTF-8
    args = [
        folder,
        "--classes",
        class_file,
        "--model",
        bundles["msa"],
        "--out",
        tmp_path / "l.csv",
        "--quiet",
    ]
    code, err = _cli(args)
    assert code == 3, err
    skipped = [line for line in err.splitlines() if line.startswith("skipped ")]
    # each line is a whole message: the device note, the two skipped tiles, the summary
    assert len(skipped) == 2 and all(
        line.startswith(("auto:", "skipped ", "rsz-infer:")) for line in err.splitlines()
    )
    assert any(line.startswith(f"skipped {folder}/broken\\nline.png: ") for line in skipped), skipped
    assert any(line.startswith(f"skipped {folder}/broken\\xff.png: ") for line in skipped), skipped


def test_shards_split_tiles_whose_names_are_not_utf8(bundles, class_file, tmp_path, capsys):
    """--shard I/N hashes a tile id's own bytes: a name that is not UTF-8 lands in one shard (it was a
    UnicodeEncodeError traceback), and the shards together label every tile once."""
    folder = tmp_path / "tiles"
    for i in range(4):
        save(folder / f"t{i}_red.png", solid("red", 24, seed=i))
    save(_odd(folder, b"caf\xe9_blue.png"), solid("blue", 24))
    rows = []
    for shard in ("0/2", "1/2"):
        out = tmp_path / f"shard{shard[0]}.csv"
        args = [folder, "--classes", class_file, "--model", bundles["msa"], "--out", out, "--shard", shard]
        code, _, err = run_cli([*args, "--quiet"], capsys)
        assert code in (0, None), err
        rows += [line.split(b",")[0] for line in out.read_bytes().splitlines()[1:]]
    assert sorted(rows) == sorted(os.fsencode(str(p)) for p in folder.iterdir())


def test_label_table_of_tiles_whose_names_are_not_utf8(bundles, class_file, tmp_path):
    """records_table (Labeler.label_table, and each --ray partition's Parquet file) writes a name that is not
    UTF-8 as backslash escapes, as GeoParquet does (it was pyarrow's UnicodeEncodeError); the `record`
    column keeps the name itself, so merged outputs keep its bytes."""
    from rsz_infer import Labeler
    from rsz_infer.api import table_records

    folder = tmp_path / "tiles"
    save(folder / "ok_red.png", solid("red", 24))
    odd = _odd(folder, b"caf\xe9_blue.png")
    save(odd, solid("blue", 24))
    _odd(folder, b"broken\xff.png").write_bytes(b"\x89PNG not really")  # a skipped row of such a name
    with Labeler(bundles["msa"], class_file) as labeler:
        table = labeler.label_table([folder])
    tiles = table.column("tile").to_pylist()
    names = ["broken\\xff.png", "caf\\xe9_blue.png", "ok_red.png"]
    assert sorted(tiles) == [f"{folder}/{name}" for name in names]
    assert table.column("skipped").to_pylist().count(None) == 2
    assert str(odd) in [r["tile"] for r in table_records(table)]


def test_ray_partitions_key_tiles_whose_names_are_not_utf8(tmp_path):
    """The --ray partition folder's run.json keys the job by the sha256 of its tile ids: a name that is not
    UTF-8 hashes as its bytes (it was a UnicodeEncodeError before the first partition), and a resumed job
    with the same tiles is taken."""
    from rsz_infer.cluster import RayOptions, _run_key, open_parts

    folder = tmp_path / "tiles"
    save(folder / "ok_red.png", solid("red", 24))
    save(_odd(folder, b"caf\xe9_blue.png"), solid("blue", 24))
    tiles = list(discover_tiles([folder], TileOptions()))
    key = _run_key(tiles, {"model": "m"}, RayOptions())
    parts = tmp_path / "out.csv.parts"
    assert open_parts(parts, key, resume=False) == set()
    assert open_parts(parts, _run_key(tiles, {"model": "m"}, RayOptions()), resume=True) == set()
