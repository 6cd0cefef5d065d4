"""Retrieval: index (appendable), text and image search, re-ranking with the rerank graph, HTML gallery."""

from __future__ import annotations

import dataclasses
import json
import os
import re
import zipfile
from pathlib import Path

import numpy as np
import pytest

from rsz_infer.backend import open_runner
from rsz_infer.bundle import load_manifest
from rsz_infer.class_embeddings import encode_texts, load_tokenizer
from rsz_infer.errors import RszError
from rsz_infer.index import Index, IndexConfig, build_ann, build_index, merge_indexes, nearest, search

from .helpers import bands_first, save, solid, write_geotiff, write_multi_page_tiff
from .test_label import run_cli


def test_index_search_rerank_and_gallery(bundles, tmp_path, capsys):
    bundle = bundles["msa"]
    tiles = tmp_path / "tiles"
    for i, colour in enumerate(["red", "green", "blue", "red"]):
        save(tiles / "a" / f"{i}_{colour}.png", solid(colour, 24, seed=i))
    idx = tmp_path / "idx"
    counts = build_index(IndexConfig([str(tiles / "a")], bundle, idx, progress=False))
    assert (counts.added, counts.known) == (4, 0)

    # a second call adds only what is new
    save(tiles / "b" / "4_green.png", solid("green", 24, seed=9))
    (tiles / "b" / "broken.png").write_bytes(b"")
    code, _, err = run_cli(["index", tiles, "--model", bundle, "--out", idx, "--quiet"], capsys)
    assert code == 3 and "1 tiles added, 4 already in, 1 skipped, 0 nodata" in err
    # the skipped tile and its reason are in OUT.errors.csv beside the folder, as the help says
    errors = tmp_path / "idx.errors.csv"
    assert f"(skipped tiles in {errors})" in err.splitlines()[-1]  # the path as given
    lines = errors.read_text().splitlines()
    assert lines == ["tile,reason", f"{tiles / 'b' / 'broken.png'},empty file (0 bytes)"]
    index = Index.load(idx)
    assert index.embeddings.shape == (5, 16) and index.scales.shape == (5, 2, 8)
    assert np.allclose(np.linalg.norm(index.embeddings, axis=1), 1.0, atol=1e-5)
    assert [t["tile"].split("/")[-1] for t in index.tiles] == [
        "0_red.png", "1_green.png", "2_blue.png", "3_red.png", "4_green.png",
    ]  # fmt: skip

    # the broken tile is tried again on the next call; a call that skips none removes the old list
    (tiles / "b" / "broken.png").unlink()
    code, _, err = run_cli(["index", tiles, "--model", bundle, "--out", idx, "--quiet"], capsys)
    assert code in (0, None) and not errors.exists() and "errors.csv" not in err

    hits = search(idx, text="fields of green crops", k=2)
    assert [h.tile["tile"].split("_")[-1] for h in hits] == ["green.png", "green.png"]
    assert hits[0].score >= hits[1].score and hits[0].score == hits[0].similarity

    hits = search(idx, image=tiles / "a" / "2_blue.png", k=1)
    assert hits[0].tile["tile"].endswith("2_blue.png") and hits[0].score == pytest.approx(1.0, abs=1e-5)

    # re-ranking scores the candidates with the rerank graph itself
    manifest = load_manifest(bundle)
    reranked = search(idx, text="a red roof", k=5, rerank=5)
    text = encode_texts(
        open_runner(bundle, manifest, "text", "ort", "cpu"), load_tokenizer(bundle, manifest), ["a red roof"]
    )
    order = [index.tiles.index(h.tile) for h in reranked]
    expected = open_runner(bundle, manifest, "rerank", "ort", "cpu").infer(
        {"scales": np.asarray(index.scales[order]), "tokens": np.repeat(text["tokens"], 5, 0),
         "attention_mask": np.repeat(text["attention_mask"], 5, 0)}
    )["score"]  # fmt: skip
    assert np.allclose([h.score for h in reranked], expected, atol=1e-5)
    assert list(expected) == sorted(expected, reverse=True)
    assert reranked[0].tile["tile"].endswith("red.png")
    with pytest.raises(RszError, match="use it with --text"):
        search(idx, image=tiles / "a" / "2_blue.png", rerank=3)

    # CLI: hits on stdout, gallery with inline thumbnails and labels from a labeling run
    labels = tmp_path / "labels.jsonl"
    first = index.tiles[0]["tile"]
    labels.write_text(json.dumps({"tile": first, "labels": ["red", "blue"], "scores": [0.9, 0.1]}) + "\n")
    page = tmp_path / "report.html"
    args = ["search", idx, "--text", "red", "-k", "3", "--html", page, "--labels", labels]
    code, out, _ = run_cli(args, capsys)
    assert code in (0, None)
    lines = out.splitlines()
    assert len(lines) == 3 and lines[0].startswith("1\t") and lines[0].endswith("red.png")
    html = page.read_text()
    assert html.startswith("<!DOCTYPE html>") and len(re.findall(r'src="data:image/jpeg;base64,', html)) == 3
    assert "red 0.90" in html


def test_nearest_is_exact():
    rng = np.random.default_rng(0)
    emb = rng.normal(size=(50, 8)).astype(np.float32)
    query = rng.normal(size=8).astype(np.float32)
    idx, scores = nearest(emb, query, 5)
    assert list(idx) == list(np.argsort(-(emb @ query))[:5]) and np.allclose(scores, (emb @ query)[idx])


def test_index_of_an_empty_folder_is_a_usage_error_not_an_empty_index(bundles, tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    idx = tmp_path / "idx"
    code, _, err = run_cli(["index", tmp_path / "empty", "--model", bundles["msa"], "--out", idx], capsys)
    assert code == 2 and err.strip() == f"error: {tmp_path / 'empty'}: no JPEG, PNG or TIFF files found"
    assert not (idx / "index.json").exists()


def test_search_of_an_index_without_tiles_says_there_are_no_hits(bundles, tmp_path, capsys):
    # every tile skipped: the index is written, empty; a search of it is a valid, empty answer (exit 0)
    (tmp_path / "tiles").mkdir()
    (tmp_path / "tiles" / "broken.png").write_bytes(b"")
    idx = tmp_path / "idx"
    code, _, _ = run_cli(["index", tmp_path / "tiles", "--model", bundles["msa"], "--out", idx], capsys)
    assert code == 2 and (idx / "index.json").is_file()
    code, out, err = run_cli(["search", idx, "--text", "a red roof"], capsys)
    assert code in (0, None) and out == ""
    assert err == f"rsz-infer search: no hits: the index {idx} holds no tiles\n"


def test_a_truncated_png_larger_than_a_tile_says_what_gdal_said(tmp_path):
    """Its windows are read by GDAL; rasterio's own "Read failed. See previous exception" names nothing."""
    from rsz_infer.images import TileError, TileOptions, decode_tile, discover_tiles

    save(tmp_path / "big.png", solid("red", 96))
    (tmp_path / "big.png").write_bytes((tmp_path / "big.png").read_bytes()[:300])
    options = TileOptions(tile_size=32)
    reasons = set()
    for tile in discover_tiles([tmp_path], options):
        with pytest.raises(TileError) as info:
            decode_tile(tile, options)
        reasons.add(str(info.value))
    assert reasons and not any("previous exception" in r for r in reasons), reasons
    assert all(r.startswith("cannot decode image (big.png") for r in reasons), reasons


def test_index_refuses_another_model(bundles, tmp_path):
    save(tmp_path / "t" / "red.png", solid("red", 16))
    build_index(IndexConfig([str(tmp_path / "t")], bundles["msa"], tmp_path / "idx", progress=False))
    with pytest.raises(RszError, match="another model"):
        build_index(IndexConfig([str(tmp_path / "t")], bundles["mcfa"], tmp_path / "idx", progress=False))
    with pytest.raises(RszError, match="not the model that built"):
        search(tmp_path / "idx", text="red", model=bundles["mcfa"])


def test_index_appends_and_merges_only_rows_embedded_alike(bundles, tmp_path):
    """pillow-draft decodes other pixels (as INT8 embeds otherwise than FP32): one index never mixes them."""
    save(tmp_path / "t" / "red.png", solid("red", 16))
    save(tmp_path / "u" / "blue.jpg", solid("blue", 256))
    index = tmp_path / "idx"
    build_index(IndexConfig([str(tmp_path / "t")], bundles["msa"], index, progress=False))
    assert Index.load(index).info["engine"] == {"precision": "fp32"}
    draft = IndexConfig([str(tmp_path / "u")], bundles["msa"], index, progress=False, decoder="pillow-draft")
    with pytest.raises(
        RszError,
        match="made with --precision fp32, this call embeds with --precision fp32 --decoder pillow-draft",
    ):
        build_index(draft)
    assert Index.load(index).info["count"] == 1  # nothing appended
    build_index(dataclasses.replace(draft, out=tmp_path / "idx2"))
    with pytest.raises(RszError, match="another model, tile options or precision"):
        merge_indexes(tmp_path / "merged", [index, tmp_path / "idx2"])
    build_index(IndexConfig([str(tmp_path / "u")], bundles["msa"], tmp_path / "idx3", progress=False))
    assert merge_indexes(tmp_path / "merged", [index, tmp_path / "idx3"]) == 2
    assert Index.load(tmp_path / "merged").info["engine"] == {"precision": "fp32"}  # kept for appends
    build_index(IndexConfig([str(tmp_path / "u")], bundles["msa"], index, progress=False))  # as made: appends
    assert Index.load(index).info["count"] == 2


def test_scene_windows_in_index_and_gallery(bundles, tmp_path, capsys):
    rgb = np.concatenate([solid("blue", 32), solid("red", 32)], axis=1)  # 32 x 64: two windows
    scene = write_geotiff(tmp_path / "scene.tif", bands_first(rgb))
    idx = tmp_path / "idx"
    code, _, _ = run_cli(
        ["index", scene, "--model", bundles["msa"], "--out", idx, "--tile-size", "32", "--quiet"], capsys
    )
    assert code == 0
    page = tmp_path / "g.html"
    code, out, _ = run_cli(["search", idx, "--text", "blue", "-k", "2", "--json", "--html", page], capsys)
    hits = [json.loads(line) for line in out.splitlines()]
    assert [h["window"] for h in hits] == [[0, 0, 32, 32], [32, 0, 32, 32]]
    assert hits[0]["footprint"]["type"] == "Polygon"
    assert len(re.findall(r'src="data:image/jpeg;base64,', page.read_text())) == 2


def test_pages_of_a_multi_page_tiff_in_index_and_gallery(bundles, tmp_path, capsys):
    """A further page (GTIFF_DIR:2:file) is checked by its file's sha256: the gallery shows every page."""
    stack = write_multi_page_tiff(tmp_path / "tiles" / "stack.tif", [solid("red", 32), solid("green", 32)])
    idx = tmp_path / "idx"
    code, _, _ = run_cli(
        ["index", tmp_path / "tiles", "--model", bundles["msa"], "--out", idx, "--quiet"], capsys
    )
    assert code == 0
    page = tmp_path / "g.html"
    code, out, _ = run_cli(["search", idx, "--text", "green", "-k", "2", "--json", "--html", page], capsys)
    assert [json.loads(line)["tile"] for line in out.splitlines()] == [f"GTIFF_DIR:2:{stack}", str(stack)]
    assert len(re.findall(r'src="data:image/jpeg;base64,', page.read_text())) == 2
    stack.write_bytes(stack.read_bytes() + b"changed")  # no longer the file the index embedded: no thumbnail
    code, out, _ = run_cli(["search", idx, "--text", "green", "-k", "2", "--html", page], capsys)
    assert len(re.findall(r'src="data:image/jpeg;base64,', page.read_text())) == 0


def test_search_by_a_page_of_a_multi_page_tiff(bundles, tmp_path, capsys):
    """--image GTIFF_DIR:2:file (a row's own name) is a query image, not 'no such file'."""
    stack = write_multi_page_tiff(tmp_path / "tiles" / "stack.tif", [solid("red", 32), solid("blue", 32)])
    save(tmp_path / "tiles" / "green.png", solid("green", 32))
    idx = tmp_path / "idx"
    code, _, _ = run_cli(
        ["index", tmp_path / "tiles", "--model", bundles["msa"], "--out", idx, "--quiet"], capsys
    )
    assert code == 0
    code, out, err = run_cli(["search", idx, "--image", f"GTIFF_DIR:2:{stack}", "-k", "1", "--json"], capsys)
    assert code == 0, err
    assert json.loads(out)["tile"] == f"GTIFF_DIR:2:{stack}"
    code, _, err = run_cli(["search", idx, "--image", f"GTIFF_DIR:2:{tmp_path}/none.tif"], capsys)
    assert code == 2 and f"--image GTIFF_DIR:2:{tmp_path}/none.tif: no such file" in err


def test_hnsw_graph_finds_what_exact_search_finds():
    rng = np.random.default_rng(1)
    emb = rng.normal(size=(5000, 32)).astype(np.float32)
    emb /= np.linalg.norm(emb, axis=1, keepdims=True)
    ann = build_ann(emb[:3000])
    ann = build_ann(emb, ann)  # appending adds only the new rows
    assert ann.ntotal == 5000
    recalls = []
    for q in emb[rng.choice(5000, 20, replace=False)] + 0.1 * rng.normal(size=(20, 32)).astype(np.float32):
        q /= np.linalg.norm(q)
        exact_idx, _ = nearest(emb, q, 10)
        idx, scores = nearest(emb, q, 10, ann)
        assert np.allclose(scores, emb[idx] @ q, atol=1e-5)  # FAISS scores are the cosine similarities
        assert list(scores) == sorted(scores, reverse=True)
        recalls.append(len(set(idx) & set(exact_idx)) / 10)
    assert np.mean(recalls) >= 0.95


def test_index_with_hnsw_search(bundles, tmp_path, capsys):
    bundle = bundles["msa"]
    tiles = tmp_path / "tiles"
    for i, colour in enumerate(["red", "green", "blue", "red"]):
        save(tiles / f"{i}_{colour}.png", solid(colour, 24, seed=i))
    exact, hnsw = tmp_path / "exact", tmp_path / "hnsw"
    assert build_index(IndexConfig([str(tiles)], bundle, exact, progress=False)).search == "exact"
    code, _, err = run_cli(
        ["index", tiles, "--model", bundle, "--out", hnsw, "--search-method", "hnsw", "--quiet"], capsys
    )
    assert code in (0, None) and "4 tiles added" in err and "hnsw search" in err
    assert (hnsw / "faiss.index").is_file() and Index.load(hnsw).load_ann().ntotal == 4
    for query in ["fields of green crops", "a red roof"]:
        a, b = search(exact, text=query, k=4), search(hnsw, text=query, k=4)
        assert [h.tile for h in a] == [h.tile for h in b]
        assert np.allclose([h.score for h in a], [h.score for h in b], atol=1e-5)

    # appending keeps the method and grows the graph; asking for exact search drops the graph
    save(tiles / "4_green.png", solid("green", 24, seed=9))
    assert build_index(IndexConfig([str(tiles)], bundle, hnsw, progress=False)).search == "hnsw"
    assert Index.load(hnsw).load_ann().ntotal == 5
    assert (
        build_index(IndexConfig([str(tiles)], bundle, hnsw, progress=False, method="exact")).search == "exact"
    )
    assert not (hnsw / "faiss.index").exists() and Index.load(hnsw).load_ann() is None
    with pytest.raises(RszError, match="--search-method fast: expected one of auto, exact, hnsw"):
        build_index(IndexConfig([str(tiles)], bundle, hnsw, progress=False, method="fast"))


@pytest.fixture(scope="module")
def colour_index(bundles, tmp_path_factory):
    """An index of a red, a green and a blue tile (not changed by the tests that use it)."""
    root = tmp_path_factory.mktemp("colour_index")
    for i, colour in enumerate(["red", "green", "blue"]):
        save(root / "tiles" / f"{i}_{colour}.png", solid(colour, 24, seed=i))
    build_index(IndexConfig([str(root / "tiles")], bundles["msa"], root / "idx", progress=False))
    return root / "idx", root / "tiles"


def test_a_negative_rerank_count_is_a_usage_error(colour_index, capsys):
    """--rerank -3 re-ranked the k candidates (`if rerank:`), silently; it names the value now."""
    idx, _ = colour_index
    code, out, err = run_cli(["search", idx, "--text", "a red roof", "--rerank", "-3"], capsys)
    assert code == 2 and out == "" and "Traceback" not in err
    assert "Error: Invalid value for '--rerank': -3 is not in the range x>=0." in err
    with pytest.raises(RszError, match=r"^--rerank -3: must be at least 0 \(0: no re-ranking\)$"):
        search(idx, text="a red roof", rerank=-3)


@pytest.mark.parametrize("k", ["0", "-1"])
def test_a_k_below_one_is_a_usage_error(colour_index, k, capsys):
    """-k 0 / -k -1: click's usage error naming the value, as --rerank gives; the API keeps its own check."""
    idx, _ = colour_index
    code, out, err = run_cli(["search", idx, "--text", "a red roof", "-k", k], capsys)
    assert code == 2 and out == "" and "Traceback" not in err
    assert f"Error: Invalid value for '-k': {k} is not in the range x>=1." in err
    with pytest.raises(RszError, match=rf"^-k {k}: must be at least 1$"):
        search(idx, text="a red roof", k=int(k))


def test_search_image_a_folder_is_one_line_and_a_gdal_path_is_read(colour_index, tmp_path, capsys):
    """--image FOLDER said 'no such file'; --image /vsizip/... (as `rsz-infer index` reads it) too."""
    idx, tiles = colour_index
    code, out, err = run_cli(["search", idx, "--image", tiles], capsys)
    assert code == 2 and out == ""
    assert err == f"error: --image {tiles}: is a folder, not an image (give one image file)\n"
    with zipfile.ZipFile(tmp_path / "query.zip", "w") as archive:
        archive.write(tiles / "2_blue.png", "blue.png")
    code, out, err = run_cli(
        ["search", idx, "--image", f"/vsizip/{tmp_path}/query.zip/blue.png", "-k", "1"], capsys
    )
    assert code in (0, None), err
    rank, score, tile = out.strip().split("\t")
    assert tile == str(tiles / "2_blue.png") and float(score) == pytest.approx(1.0, abs=1e-4)
    code, _, err = run_cli(["search", idx, "--image", f"/vsizip/{tmp_path}/query.zip/none.png"], capsys)
    assert code == 2 and len(err.splitlines()) == 1
    assert err.startswith(f"error: --image /vsizip/{tmp_path}/query.zip/none.png: cannot decode image (")


def test_a_query_longer_than_the_text_graph_reads_is_a_note(colour_index, capsys):
    """The tokenizer cuts a query at max_text_length tokens (64 here, 77 for CLIP) without a trace."""
    idx, _ = colour_index
    long = " ".join(["a red roof beside a green field"] * 20)
    code, out, err = run_cli(["search", idx, "--text", long, "-k", "1"], capsys)
    assert code in (0, None) and out.strip().endswith("0_red.png")
    note = "--text: the query is longer than the 64 tokens the model reads: the rest is ignored (shorten it)"
    assert err.splitlines().count(note) == 1, err
    code, _, err = run_cli(["search", idx, "--text", "a red roof", "-k", "1"], capsys)
    assert code in (0, None) and "longer than" not in err


def test_search_gallery_says_how_many_hits_have_no_preview(bundles, tmp_path, capsys):
    """A tile moved after indexing keeps its card ("no preview"); the page and the summary count them."""
    for i, colour in enumerate(["red", "green", "blue"]):
        save(tmp_path / "tiles" / f"{i}_{colour}.png", solid(colour, 24, seed=i))
    idx, page = tmp_path / "idx", tmp_path / "g.html"
    build_index(IndexConfig([str(tmp_path / "tiles")], bundles["msa"], idx, progress=False))
    code, _, err = run_cli(["search", idx, "--text", "red", "-k", "3", "--html", page], capsys)
    assert code in (0, None) and err.splitlines()[-1] == f"rsz-infer search: gallery of 3 tiles -> {page}"
    assert "without a preview" not in page.read_text()
    (tmp_path / "tiles" / "1_green.png").unlink()
    code, _, err = run_cli(["search", idx, "--text", "red", "-k", "3", "--html", page], capsys)
    why = "1 without a preview (the file is gone, changed or cannot be read)"
    assert (
        code in (0, None) and err.splitlines()[-1] == f"rsz-infer search: gallery of 3 tiles, {why} -> {page}"
    )
    html = page.read_text()
    assert (
        f'<p class="note">3 tiles, {why}</p>' in html and html.count('<div class="missing">no preview') == 1
    )
    assert len(re.findall(r'src="data:image/jpeg;base64,', html)) == 2


def test_an_index_of_relative_paths_shows_its_tiles_from_another_folder(
    bundles, tmp_path, monkeypatch, capsys
):
    """`rsz-infer index tiles/ --out idx/` in proj/, then a search with --html from proj's parent: the rows
    named tiles/0_red.png, which does not exist from there, so every card said "no preview (the file is
    gone)". A row's path is absolute now; its tile id keeps the input's spelling, so an append from proj/
    finds every tile already in, and the hits print the ids as indexed. A gallery still finds the files of a
    project folder moved whole, by the ids' spelling (each only with the recorded sha256)."""
    proj = tmp_path / "proj"
    for i, colour in enumerate(["red", "green", "blue"]):
        save(proj / "tiles" / f"{i}_{colour}.png", solid(colour, 24, seed=i))
    monkeypatch.chdir(proj)
    build_index(IndexConfig(["tiles/"], bundles["msa"], Path("idx"), progress=False))
    row = Index.load(Path("idx")).tiles[0]
    assert (row["tile"], row["path"]) == ("tiles/0_red.png", str(proj / "tiles" / "0_red.png"))
    counts = build_index(IndexConfig(["tiles"], bundles["msa"], Path("idx"), progress=False))
    assert (counts.added, counts.known) == (0, 3)
    monkeypatch.chdir(tmp_path)
    code, out, err = run_cli(["search", "proj/idx", "--text", "red", "-k", "3", "--html", "g.html"], capsys)
    assert code in (0, None) and err.splitlines()[-1] == "rsz-infer search: gallery of 3 tiles -> g.html"
    assert len(re.findall(r'src="data:image/jpeg;base64,', (tmp_path / "g.html").read_text())) == 3
    assert out.splitlines()[0].split("\t")[2] == "tiles/0_red.png"
    # the project folder moved whole: the recorded absolute path is gone, the id's spelling is found again
    (tmp_path / "proj").rename(tmp_path / "moved")
    monkeypatch.chdir(tmp_path / "moved")
    code, _, err = run_cli(["search", "idx", "--text", "red", "-k", "3", "--html", "g.html"], capsys)
    assert code in (0, None) and err.splitlines()[-1] == "rsz-infer search: gallery of 3 tiles -> g.html"


def test_append_embeds_changed_tiles_again_and_removes_gone_ones(bundles, tmp_path, capsys):
    """A rerun over a curated folder brings the index up to date: an edited tile gets a new embedding in
    place of its old row, a deleted one leaves the index; another folder's tiles in the index stay."""
    bundle = bundles["msa"]
    a, b = tmp_path / "a", tmp_path / "b"
    for i, colour in enumerate(["red", "green", "blue"]):
        save(a / f"{i}.png", solid(colour, 24, seed=i))
    save(b / "other.png", solid("green", 24, seed=7))
    idx = tmp_path / "idx"
    build_index(IndexConfig([str(b)], bundle, idx, progress=False))
    build_index(IndexConfig([str(a)], bundle, idx, progress=False))
    before = Index.load(idx)
    row = {t["tile"]: i for i, t in enumerate(before.tiles)}
    assert before.tiles[row[str(a / "0.png")]]["size"] == (a / "0.png").stat().st_size

    save(a / "0.png", solid("blue", 24, seed=3))  # edited: red -> blue
    (a / "1.png").unlink()  # deleted
    os.utime(a / "2.png", ns=(1, 1))  # touched only: same content, not embedded again
    code, _, err = run_cli(["index", a, "--model", bundle, "--out", idx, "--quiet"], capsys)
    assert code in (0, None), err
    assert "0 tiles added, 1 re-embedded (changed since indexed), 1 removed (gone), 1 already in" in err, err
    assert "index now holds 3 tiles" in err, err
    after = Index.load(idx)
    ids = [t["tile"] for t in after.tiles]
    assert sorted(ids) == sorted([str(b / "other.png"), str(a / "0.png"), str(a / "2.png")])
    new = after.embeddings[ids.index(str(a / "0.png"))]
    blue = after.embeddings[ids.index(str(a / "2.png"))]
    assert float(new @ blue) > float(new @ before.embeddings[row[str(a / "0.png")]])  # now a blue tile
    assert np.array_equal(blue, before.embeddings[row[str(a / "2.png")]])
    assert after.scales.shape[0] == 3
    hits = search(idx, image=a / "0.png", k=3)
    assert hits[0].tile["tile"] == str(a / "0.png") and hits[0].score == pytest.approx(1.0, abs=1e-5)
    assert all(h.tile["tile"] != str(a / "1.png") for h in hits)

    # a rerun with nothing changed embeds nothing and keeps every row
    code, _, err = run_cli(["index", a, "--model", bundle, "--out", idx, "--quiet"], capsys)
    assert "0 tiles added, 2 already in" in err and "re-embedded" not in err, err
    assert [t["tile"] for t in Index.load(idx).tiles] == ids


def test_a_stopped_call_that_embedded_a_changed_tile_again_replaces_its_row(bundles, tmp_path, capsys):
    """The journal of a call killed after it embedded an edited tile again: the next call folds that row
    in place of the old one (not skipped as 'already in'), and does not embed the tile a third time."""
    from rsz_infer.bundle import manifest_sha256
    from rsz_infer.images import TileOptions, discover_tiles
    from rsz_infer.index import index_row, journal_header
    from rsz_infer.index_journal import IndexJournal

    bundle = bundles["msa"]
    a = tmp_path / "a"
    for i, colour in enumerate(["red", "green"]):
        save(a / f"{i}.png", solid(colour, 24, seed=i))
    idx = tmp_path / "idx"
    build_index(IndexConfig([str(a)], bundle, idx, progress=False))
    old = Index.load(idx)
    save(a / "0.png", solid("blue", 24, seed=3))
    tile = next(t for t in discover_tiles([str(a)], TileOptions()) if t.id == str(a / "0.png"))
    marker = old.embeddings[1:2]  # any unit row: the journal's, as a killed call left it
    header = journal_header(load_manifest(bundle), manifest_sha256(bundle), bundle, TileOptions(),
                            old.info["engine"])  # fmt: skip
    journal = IndexJournal(idx, header)
    journal.append([index_row(tile)], marker, np.asarray(old.scales[1:2]))
    journal.close()  # killed: not removed

    code, _, err = run_cli(["index", a, "--model", bundle, "--out", idx, "--quiet"], capsys)
    assert "1 tiles a stopped index call embedded" in err and "0 tiles added, 2 already in" in err, err
    new = Index.load(idx)
    assert [t["tile"] for t in new.tiles] == [str(a / "1.png"), str(a / "0.png")]
    assert np.array_equal(new.embeddings[1], marker[0])


def test_an_index_closes_and_a_closed_one_says_so(bundles, tmp_path):
    bundle = bundles["msa"]
    save(tmp_path / "tiles" / "red.png", solid("red", 24))
    idx = tmp_path / "idx"
    build_index(IndexConfig([str(tmp_path / "tiles")], bundle, idx, progress=False))
    with Index.open(idx) as index:
        assert index.scales is not None and len(index.search(text="red", k=1)) == 1
    assert index.closed and index.scales is None  # the memory map of scales.npy is let go
    for use in (lambda: index.search(text="red"), index.load_ann, lambda: index.__enter__()):
        with pytest.raises(RszError, match=rf"^{re.escape(str(idx))}: this Index was closed; open it again"):
            use()
    index.close()  # twice: no error
    other = Index.open(idx)
    other.close()
    with pytest.raises(RszError, match="this Index was closed"):
        other.search(image=tmp_path / "tiles" / "red.png")
