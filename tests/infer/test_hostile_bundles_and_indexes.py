"""Crafted bundles and index folders: nothing outside the folder is loaded, nothing unlisted or unhashed
is used, nothing is unpickled, remote paths are never opened; each case is one error line, exit 2, and no
output is written."""

from __future__ import annotations

import hashlib
import json
import os
import pickle
import re
import shutil
import socket
import subprocess
import sys

import numpy as np
import pytest

from rsz_infer.bundle import sha256_file
from rsz_infer.index import IndexConfig, build_index
from rsz_infer.trust import file_sha256

from .helpers import save, solid
from .test_label import run_cli


def error_lines(err: str) -> list[str]:
    """The `error:` lines of stderr (notes such as the device line may come before); no traceback."""
    assert "Traceback" not in err
    return [line for line in err.strip().splitlines() if line.startswith("error:")]


def _copy_bundle(bundles, tmp_path, kind="mcfa"):
    bundle = tmp_path / f"bundle_{kind}"
    shutil.copytree(bundles[kind], bundle)
    return bundle


def _edit_manifest(bundle, change):
    path = bundle / "manifest.json"
    manifest = json.loads(path.read_text())
    change(manifest)
    path.write_text(json.dumps(manifest))


def _label(bundle, class_file, tmp_path, capsys):
    tiles = tmp_path / "tiles"
    if not tiles.exists():
        save(tiles / "red.png", solid("red"))
    out = tmp_path / "labels.csv"
    code, _, err = run_cli(
        [tiles, "--classes", class_file, "--model", bundle, "--out", out, "--quiet"], capsys
    )
    return code, error_lines(err), out


def _outside_graph(tmp_path, bundle):
    """A valid ONNX graph outside the bundle, listed with its correct sha256 (an attacker can do that)."""
    outside = tmp_path / "elsewhere" / "evil.onnx"
    outside.parent.mkdir()
    shutil.copy(bundle / "image.onnx", outside)
    return outside


@pytest.mark.parametrize("how", ["absolute", "dotdot", "symlink", "unlisted"])
def test_manifest_graph_outside_the_bundle_or_unlisted_is_refused(how, bundles, class_file, tmp_path, capsys):
    bundle = _copy_bundle(bundles, tmp_path)
    outside = _outside_graph(tmp_path, bundle)
    name = {"absolute": str(outside), "dotdot": "../elsewhere/evil.onnx", "symlink": "link.onnx"}.get(
        how, "image_copy.onnx"
    )
    if how == "symlink":
        os.symlink(outside, bundle / name)
    if how == "unlisted":
        shutil.copy(bundle / "image.onnx", bundle / name)

    def change(m):
        m["graphs"]["image"]["onnx"] = name
        if how != "unlisted":
            m["files"][name] = sha256_file(outside)

    _edit_manifest(bundle, change)
    code, lines, out = _label(bundle, class_file, tmp_path, capsys)
    assert code == 2 and len(lines) == 1, lines
    expected = {
        "absolute": "points outside the bundle",
        "dotdot": "points outside the bundle",
        "symlink": "is a link that points outside the bundle",
        "unlisted": "image_copy.onnx is used by the bundle but not listed",
    }[how]
    assert lines[0].startswith("error: ") and "manifest.json" in lines[0] and expected in lines[0]
    assert not out.exists() and not out.with_name(out.name + ".part").exists()


@pytest.mark.parametrize(
    "change, expected",
    [
        (
            lambda m: m["preprocess"].update(std=[0.0, 0.0, 0.0]),
            "preprocess.std must be 3 numbers above zero",
        ),
        (
            lambda m: m["preprocess"].update(size=10**9),
            "preprocess.size must be a positive integer up to 4096",
        ),
        (lambda m: m.update(format_version="1"), "bundle format '1', this rsz reads 1"),
        (lambda m: m.update(format_version=7), "bundle format 7, this rsz reads 1"),
        (lambda m: m.update(logit_scale="ten"), "logit_scale must be a number above zero"),
        (lambda m: m.update(embedding_dim=[16]), "embedding_dim must be a positive integer"),
        (lambda m: m.update(seen_descriptions={"red": 3}), "seen_descriptions must map class names"),
        (lambda m: m.update(seen_descriptions=["red"]), "seen_descriptions must map class names"),
        (lambda m: m.update(hubness_penalty=-1), "hubness_penalty must be a number from 0 to 10"),
        (lambda m: m.update(hubness_penalty=1e39), "hubness_penalty must be a number from 0 to 10"),
        (lambda m: m.update(hubness_neighbours=0), "hubness_neighbours must be a positive integer"),
        (lambda m: m.update(trained_class_embeddings=[[0.5]]), "rows of embedding_dim numbers"),
        (
            lambda m: m.update(hubness_penalty=0.5, trained_class_embeddings=[]),
            "one trained_class_embeddings row",
        ),
        (lambda m: m.update(graphs=[]), "malformed manifest"),
        (lambda m: m.update(text_prompt="{0} of {name}"), "text_prompt"),
        (lambda m: m["graphs"]["image"]["inputs"][0].update(dtype="object"), "tensors need a name"),
        (lambda m: m.update(tokenizer="/etc/passwd"), "points outside the bundle"),
        (lambda m: m.update(model_kind="xyz"), "model_kind 'xyz' is none of dsva, mcfa, msa, clip"),
        (
            lambda m: m["preprocess"].update(resize="lanczos"),
            "preprocess.resize 'lanczos' is none of bilinear, bicubic",
        ),
        (lambda m: m["preprocess"].update(resize=["bicubic"]), "preprocess.resize ['bicubic'] is none of"),
    ],
)
def test_malformed_manifest_values_are_one_line(change, expected, bundles, class_file, tmp_path, capsys):
    bundle = _copy_bundle(bundles, tmp_path)
    _edit_manifest(bundle, change)
    code, lines, out = _label(bundle, class_file, tmp_path, capsys)
    assert code == 2 and len(lines) == 1 and expected in lines[0], lines
    assert "manifest.json" in lines[0]
    assert not out.exists()


@pytest.mark.parametrize("text", ['{"model_kind": "mcfa",', "[" * 100_000 + "]" * 100_000])
def test_manifest_that_is_not_json_is_one_line(text, bundles, class_file, tmp_path, capsys):
    bundle = _copy_bundle(bundles, tmp_path)
    (bundle / "manifest.json").write_text(text)  # the second: too deep for json's recursive parser
    code, lines, _ = _label(bundle, class_file, tmp_path, capsys)
    assert code == 2 and len(lines) == 1 and "malformed manifest" in lines[0]


@pytest.mark.parametrize("field", ["attribute_phrases", "attribute_names"])
def test_dsva_attributes_other_than_its_embedding_dim_are_one_line(
    field, bundles, class_file, tmp_path, capsys
):
    """Fewer phrases than embedding_dim broke the hubness correction's matmul; fewer names, --explain."""
    bundle = _copy_bundle(bundles, tmp_path, "dsva")
    _edit_manifest(bundle, lambda m: m.update({field: m[field][:2]}))
    save(tmp_path / "tiles" / "red.png", solid("red"))
    out = tmp_path / "labels.csv"
    args = [
        tmp_path / "tiles",
        "--classes",
        class_file,
        "--model",
        bundle,
        "--out",
        out,
        "--quiet",
        "--explain",
    ]
    code, _, err = run_cli(args, capsys)
    lines = error_lines(err)
    assert code == 2 and len(lines) == 1 and f"2 {field} but embedding_dim 3" in lines[0], lines
    assert not out.exists()


# ---------------------------------------------------------------- index folders


@pytest.fixture()
def index_dir(bundles, tmp_path):
    tiles = tmp_path / "tiles"
    for i, colour in enumerate(["red", "green", "blue"]):
        save(tiles / f"{i}_{colour}.png", solid(colour, 24, seed=i))
    idx = tmp_path / "idx"
    build_index(IndexConfig([str(tiles)], bundles["msa"], idx, progress=False))
    return idx


def _rows(idx):
    return [json.loads(line) for line in (idx / "tiles.jsonl").read_text().splitlines()]


def _write_rows(idx, rows):
    (idx / "tiles.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))


def _thumbnails(page):
    return len(re.findall(r'src="data:image/jpeg;base64,', page.read_text()))


def test_an_index_never_reads_a_device_or_fifo(index_dir, tmp_path, capsys):
    """A row naming a device (/dev/zero was hashed for ever by search --html) has no preview; an index file
    that is a FIFO is one error line (reading it blocked for ever)."""
    rows = _rows(index_dir)
    rows[0].update(path="/dev/null", sha256=hashlib.sha256(b"").hexdigest())  # a device "with that hash"
    _write_rows(index_dir, rows)
    assert file_sha256("/dev/null") is None
    page = tmp_path / "report.html"
    code, _, _ = run_cli(["search", index_dir, "--text", "red", "-k", "3", "--html", page], capsys)
    assert code in (0, None) and page.read_text().count("no preview") == 1

    os.remove(index_dir / "embeddings.npy")
    os.mkfifo(index_dir / "embeddings.npy")
    cli = [sys.executable, "-m", "rsz_infer.cli", "search", str(index_dir), "--text", "red"]
    done = subprocess.run(cli, capture_output=True, text=True, timeout=120)  # no writer: open() would block
    lines = error_lines(done.stderr)
    assert done.returncode == 2 and lines == [f"error: {index_dir / 'embeddings.npy'}: not a regular file"]


def test_a_search_gallery_inside_its_index_folder_is_refused_up_front(bundles, index_dir, tmp_path, capsys):
    """search --html idx/report.html wrote the gallery into the index folder, and the next `index --out idx`
    refused the folder ("holds files that are not an index's"): an index folder holds only its own files.
    Now the gallery is refused up front in one line (a linked path to it too), and the index stays usable."""
    (tmp_path / "link").symlink_to(index_dir)
    for page in (index_dir / "report.html", index_dir / "sub" / "report.html", tmp_path / "link" / "r.html"):
        code, out, err = run_cli(["search", index_dir, "--text", "red", "--html", page], capsys)
        want = (
            f"error: --html {page}: inside the index folder {index_dir}, which holds only the index's "
            "own files (the next `rsz-infer index --out` into it would refuse it); write it outside that "
            "folder"
        )
        assert code == 2 and out == "" and error_lines(err) == [want], err
    assert not (index_dir / "report.html").exists() and not (index_dir / "sub").exists()
    code, _, err = run_cli(
        ["index", tmp_path / "tiles", "--model", bundles["msa"], "--out", index_dir], capsys
    )
    assert code in (0, None), err


def test_gallery_never_embeds_a_file_the_index_did_not_make(index_dir, tmp_path, capsys):
    page = tmp_path / "ok.html"
    code, out, _ = run_cli(["search", index_dir, "--text", "red", "-k", "3", "--html", page], capsys)
    assert code in (0, None) and _thumbnails(page) == 3  # the genuine index shows every tile

    private = save(tmp_path / "home" / "private.png", solid((250, 250, 250), 24))
    rows = _rows(index_dir)
    for row in rows:  # every row renamed to look harmless, pointing at the private image
        row["path"] = str(private)
    _write_rows(index_dir, rows)
    page = tmp_path / "crafted.html"
    code, out, _ = run_cli(["search", index_dir, "--text", "red", "-k", "3", "--html", page], capsys)
    assert code in (0, None) and len(out.splitlines()) == 3
    assert _thumbnails(page) == 0 and page.read_text().count("no preview") == 3


def test_remote_gdal_paths_in_an_index_are_never_opened(index_dir, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("GDAL_HTTP_TIMEOUT", "2")  # a regression fails fast instead of waiting on the socket
    monkeypatch.setenv("GDAL_HTTP_MAX_RETRY", "0")
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(8)
    server.setblocking(False)
    port = server.getsockname()[1]
    rows = _rows(index_dir)
    rows[0]["path"] = f"/vsicurl/http://127.0.0.1:{port}/scene.tif"
    rows[0]["window"] = [0, 0, 16, 16]
    rows[1]["path"] = f"http://127.0.0.1:{port}/tile.png"
    _write_rows(index_dir, rows)
    page = tmp_path / "report.html"
    try:
        code, out, _ = run_cli(["search", index_dir, "--text", "red", "-k", "3", "--html", page], capsys)
        assert code in (0, None) and page.read_text().count("no preview") == 2
        with pytest.raises(BlockingIOError):
            server.accept()  # nobody connected
    finally:
        server.close()


@pytest.mark.parametrize(
    "damage, expected",
    [
        ("pickle", "embeddings.npy: not a plain numeric .npy file"),
        ("index_json", "index.json: not a readable index.json"),
        ("index_types", "index.json: bad index.json (tile_options must hold an integer tile_size"),
        ("tiles_row", "tiles.jsonl: line 2 is not a tile row"),
        ("index_deep", "index.json: not a readable index.json (maximum recursion depth"),
        ("tiles_deep", "tiles.jsonl: line 2 is not a tile row"),
        ("footprint_point", "tiles.jsonl: line 2 is not a tile row"),
        ("footprint_text", "tiles.jsonl: line 2 is not a tile row"),
        ("tile_size", "bad index.json (tile_options must hold an integer tile_size of at least 8 px"),
        ("overlap", "bad index.json (tile_options must hold an integer tile_size of at least 8 px"),
        ("engine", "index.json: bad index.json (engine must be null or an object of names"),
        ("format", "index.json: index format 2, this rsz reads 1"),
        ("count", "index.json: count 300 but the index holds 3 rows"),
        ("duplicate", "tiles.jsonl: line 3 repeats tile"),
        ("embeddings_3d", "embeddings.npy: expected a 2-D float array, got shape (3, 16, 1)"),
        ("embeddings_nan", "embeddings.npy: row 1 holds NaN or infinite values"),
        ("embeddings_inf", "embeddings.npy: row 2 holds NaN or infinite values"),
        ("scales_2d", "scales.npy: expected a 3-D float array, got shape (3, 16)"),
        ("scales_nan", "scales.npy: holds NaN or infinite values"),
    ],
)
def test_damaged_index_files_are_one_line(damage, expected, index_dir, tmp_path, capsys):
    marker = tmp_path / "code-ran"
    info = json.loads((index_dir / "index.json").read_text())
    rows = _rows(index_dir)
    embeddings = np.load(index_dir / "embeddings.npy")
    if damage == "pickle":
        np.save(index_dir / "embeddings.npy", np.array([_Payload(marker)], dtype=object), allow_pickle=True)
    elif damage == "index_json":
        (index_dir / "index.json").write_text("{not json")
    elif damage in ("index_types", "tile_size", "overlap", "engine", "format", "count"):
        if damage == "index_types":
            info["tile_options"] = {"tile_size": "256", "overlap": 0}
        elif damage == "tile_size":  # an append or a gallery would blame a --tile-size nobody typed
            info["tile_options"]["tile_size"] = 0
        elif damage == "overlap":
            info["tile_options"]["overlap"] = info["tile_options"]["tile_size"]
        elif damage == "engine":  # an append compared it as an object: AttributeError
            info["engine"] = "fp32"
        elif damage == "format":  # a future rsz's index
            info["format"] = 2
        else:
            info["count"] = 300
        (index_dir / "index.json").write_text(json.dumps(info))
    elif damage == "tiles_row":
        rows[1]["window"] = "0,0,16,16"
        _write_rows(index_dir, rows)
    elif damage == "index_deep":  # json's parser recurses: a RecursionError, not a JSONDecodeError
        (index_dir / "index.json").write_text("[" * 100_000 + "]" * 100_000)
    elif damage == "tiles_deep":
        lines = (index_dir / "tiles.jsonl").read_text().splitlines()
        lines[1] = "[" * 100_000 + "]" * 100_000
        (index_dir / "tiles.jsonl").write_text("\n".join(lines) + "\n")
    elif damage.startswith("footprint_"):  # the gallery and search output read footprints as polygons
        polygon = {"type": "Polygon", "coordinates": "x"}
        rows[1]["footprint"] = (
            {"type": "Point", "coordinates": [1, 2]} if damage == "footprint_point" else polygon
        )
        _write_rows(index_dir, rows)
    elif damage == "duplicate":  # the tester's case: the last row replaced by a copy of the first
        _write_rows(index_dir, rows[:-1] + rows[:1])
    elif damage == "embeddings_3d":
        np.save(index_dir / "embeddings.npy", embeddings[:, :, None])
    elif damage.startswith("embeddings_"):
        row = 1 if damage == "embeddings_nan" else 2
        embeddings[row, 3] = np.nan if damage == "embeddings_nan" else np.inf
        np.save(index_dir / "embeddings.npy", embeddings)
    elif damage == "scales_2d":
        np.save(index_dir / "scales.npy", np.zeros((3, 16), np.float32))
    else:  # NaN scales: only rerank reads them (the file is memory-mapped, checked where rows are read)
        scales = np.load(index_dir / "scales.npy")
        scales[:, 0, 0] = np.nan
        np.save(index_dir / "scales.npy", scales)
    code, out, err = run_cli(["search", index_dir, "--text", "red", "--rerank", "3"], capsys)
    lines = error_lines(err)
    assert code == 2 and len(lines) == 1 and expected in lines[0], lines
    assert out == "" and not marker.exists()
    if damage in ("tile_size", "overlap", "engine"):  # an append reads index.json the same way
        args = ["index", tmp_path / "tiles", "--model", info["model_dir"], "--out", index_dir, "--quiet"]
        code, _, err = run_cli(args, capsys)
        lines = error_lines(err)
        assert code == 2 and len(lines) == 1 and expected in lines[0], err


@pytest.mark.parametrize("damage", ["embeddings_3d", "embeddings_nan", "scales_nan"])
def test_merge_refuses_a_damaged_source_in_one_line(damage, bundles, tmp_path, capsys):
    """merge reads every row of every source: a 3-D or NaN array is one error line naming it, no output."""
    sources = []
    for i, colour in enumerate(["red", "green"]):
        tiles = tmp_path / f"tiles{i}"
        save(tiles / f"{colour}.png", solid(colour, 24, seed=i))
        build_index(IndexConfig([str(tiles)], bundles["msa"], tmp_path / f"part{i}", progress=False))
        sources.append(tmp_path / f"part{i}")
    bad = sources[1]
    if damage == "embeddings_3d":
        np.save(bad / "embeddings.npy", np.load(bad / "embeddings.npy")[:, :, None])
    else:
        name = "embeddings.npy" if damage == "embeddings_nan" else "scales.npy"
        array = np.load(bad / name)
        array.flat[0] = np.nan
        np.save(bad / name, array)
    code, _, err = run_cli(["merge", tmp_path / "merged", *sources], capsys)
    lines = error_lines(err)
    name = "scales.npy" if damage == "scales_nan" else "embeddings.npy"
    assert code == 2 and len(lines) == 1 and str(bad / name) in lines[0], lines
    assert not (tmp_path / "merged" / "index.json").exists()


class _Payload:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_text_search_on_a_dsva_index_is_one_line(bundles, tmp_path, capsys):
    tiles = tmp_path / "tiles"
    save(tiles / "red.png", solid("red", 24))
    idx = tmp_path / "idx"
    build_index(IndexConfig([str(tiles)], bundles["dsva"], idx, progress=False))
    code, out, err = run_cli(["search", idx, "--text", "red roofs"], capsys)
    lines = error_lines(err)
    assert code == 2 and len(lines) == 1 and "text search needs an MSA or CLIP index" in lines[0], lines


_ = pickle  # the payload above is what np.load(allow_pickle=True) would unpickle


def test_label_outputs_inside_an_index_folder_are_refused_up_front(
    bundles, class_file, index_dir, tmp_path, capsys
):
    """label --out idx/labels.csv (or --html, --class-map there) wrote into the index folder (the labels,
    their .run.json, the lock), and the next `index --out idx` refused the folder: now each is refused up
    front in the one wording search --html gets, nothing is written there, and the index stays usable."""
    tiles = tmp_path / "tiles"
    base = [tiles, "--classes", class_file, "--model", bundles["mcfa"], "--quiet"]
    before = sorted(p.name for p in index_dir.iterdir())
    cases = [
        ("--out", index_dir / "labels.csv", []),
        ("--out", index_dir / "sub" / "labels.jsonl", []),
        ("--html", index_dir / "report.html", ["--out", tmp_path / "labels.csv"]),
        ("--class-map", index_dir / "maps" / "map.tif", ["--out", tmp_path / "labels.csv"]),
        ("--out", index_dir / "labels.parquet", ["--ray"]),  # refused before Ray starts
    ]
    for option, path, more in cases:
        code, out, err = run_cli([*base, *more, option, path], capsys)
        want = (
            f"error: {option} {path}: inside the index folder {index_dir.resolve()}, which holds only the "
            "index's own files (the next `rsz-infer index --out` into it would refuse it); write it outside "
            "that folder"
        )
        assert code == 2 and out == "" and error_lines(err) == [want], err
    assert sorted(p.name for p in index_dir.iterdir()) == before and not (tmp_path / "labels.csv").exists()
    code, _, err = run_cli(["index", tiles, "--model", bundles["msa"], "--out", index_dir], capsys)
    assert code in (0, None), err
