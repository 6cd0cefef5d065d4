"""What inference computes as embeddings, checked against an independent route through the same graphs:
DSVA class embeddings with the bundle's phrase ridge, the L2-normalised rows of a retrieval index, and the
note on descriptions longer than the text graph reads."""

from __future__ import annotations

import dataclasses
import shutil

import numpy as np
import pytest
from PIL import Image

from rsz_infer.backend import open_runner
from rsz_infer.bundle import MANIFEST, load_manifest
from rsz_infer.class_embeddings import class_embeddings, cut_texts_note
from rsz_infer.classfile import ClassEntry, read_class_file
from rsz_infer.errors import RszError
from rsz_infer.index import Index, IndexConfig, build_index, search
from rsz_infer.preprocess import to_model_input
from rsz_infer.runners.ort import OrtRunner
from rsz_infer.semantics import attribute_vectors
from rsz_infer.tokenizer import Tokenizer

from .helpers import read_jsonl, save, solid
from .test_label import run_cli

# Correlated phrases under the toy text graph (it embeds a sentence by its colour words): the first two
# share "red", so their cosine is 1/sqrt(2) and the ridge (G + 0.3 I)^-1 moves every attribute row.
PHRASES = ["red colour", "red and green colour", "blue colour"]
RIDGE = 0.3


@pytest.fixture(scope="module")
def ridge_bundle(bundles, tmp_path_factory):
    folder = tmp_path_factory.mktemp("ridge") / "dsva"
    shutil.copytree(bundles["dsva"], folder)
    manifest = load_manifest(folder)
    assert manifest.class_embedding == "attributes" and manifest.phrase_ridge == 0.0
    changed = dataclasses.replace(manifest, attribute_phrases=PHRASES, phrase_ridge=RIDGE)
    (folder / MANIFEST).write_text(changed.to_json(), encoding="utf-8")
    return folder


def _text_embeddings(bundle, manifest, texts: list[str]) -> np.ndarray:
    """The text graph run directly by ONNX Runtime on the bundle's tokenizer output."""
    feeds = Tokenizer(bundle / manifest.tokenizer, manifest.max_text_length).encode(texts)
    runner = OrtRunner(bundle / manifest.graphs["text"].onnx)
    return runner.infer({k: feeds[k] for k in ("input_ids", "attention_mask")})["embedding"]


def test_dsva_class_embeddings_use_the_bundle_phrase_ridge(ridge_bundle, tmp_path):
    manifest = load_manifest(ridge_bundle)
    assert manifest.phrase_ridge == RIDGE and manifest.attribute_phrases == PHRASES
    classes = tmp_path / "c.txt"
    classes.write_text("crimson: red roofs\nmeadow: green fields\nlake: blue water\nmixed: red and green\n")
    entries = read_class_file(classes)
    opener = lambda role: open_runner(ridge_bundle, manifest, role, "ort", "cpu")  # noqa: E731
    got = class_embeddings(ridge_bundle, manifest, entries, opener, use_cache=False)
    descriptions = _text_embeddings(ridge_bundle, manifest, [e.description for e in entries])
    phrases = _text_embeddings(ridge_bundle, manifest, PHRASES)
    gram = phrases @ phrases.T / np.outer(*(2 * [np.linalg.norm(phrases, axis=1)]))
    assert gram[0, 1] == pytest.approx(1 / np.sqrt(2), abs=1e-4)  # the phrases really are correlated
    expected = attribute_vectors(descriptions, phrases, RIDGE)
    plain = attribute_vectors(descriptions, phrases, 0.0)
    np.testing.assert_allclose(got, expected, atol=1e-6)
    assert np.abs(got - plain).max() > 0.05  # ... and the ridge changes what the classes get


def test_dsva_class_embeddings_read_clause_by_clause_when_the_bundle_says_so(ridge_bundle, tmp_path):
    folder = tmp_path / "clauses"
    shutil.copytree(ridge_bundle, folder)
    manifest = dataclasses.replace(load_manifest(folder), description_clauses=True)
    (folder / MANIFEST).write_text(manifest.to_json(), encoding="utf-8")
    classes = tmp_path / "c.txt"
    classes.write_text("crimson: red roofs, green lawns and blue pools\nlake: blue water\n")
    entries = read_class_file(classes)
    opener = lambda role: open_runner(folder, manifest, role, "ort", "cpu")  # noqa: E731
    got = class_embeddings(folder, manifest, entries, opener, use_cache=False)
    clauses = ["red roofs", "green lawns", "blue pools", "blue water"]
    clause_emb = _text_embeddings(folder, manifest, clauses)
    phrases = _text_embeddings(folder, manifest, PHRASES)
    expected = attribute_vectors(clause_emb, phrases, RIDGE, owners=np.array([0, 0, 0, 1]))
    np.testing.assert_allclose(got, expected, atol=1e-6)
    whole = _text_embeddings(folder, manifest, [e.description for e in entries])
    assert np.abs(got[0] - attribute_vectors(whole, phrases, RIDGE)[0]).max() > 0.05
    # a long list is read clause by clause: no clause is cut, so no note (the whole sentence would be)
    long = [ClassEntry("roofs", ", ".join(["a wide open area seen from above"] * 10 + ["red roofs"]))]
    assert cut_texts_note(folder, manifest, long) is None
    assert "have a description longer than" in cut_texts_note(ridge_bundle, load_manifest(ridge_bundle), long)
    bad = manifest.to_json().replace('"description_clauses": true', '"description_clauses": "yes"')
    (folder / MANIFEST).write_text(bad, encoding="utf-8")
    with pytest.raises(RszError, match="description_clauses must be true or false"):
        load_manifest(folder)


def _rgb(path) -> np.ndarray:
    with Image.open(path) as image:
        return np.asarray(image.convert("RGB"))


def test_index_rows_are_unit_length_image_embeddings(bundles, tmp_path):
    bundle = bundles["msa"]
    manifest = load_manifest(bundle)
    folder = tmp_path / "tiles"
    # the same hue at very different brightness: raw embedding norms differ by ~4x, directions do not
    colours = {
        "dark_red": (60, 8, 8),
        "red": (240, 30, 30),
        "green": "green",
        "blue": "blue",
        "grey": (90, 90, 90),
    }
    paths = {n: save(folder / f"{n}.png", solid(colour, 24, noise=2)) for n, colour in colours.items()}
    idx = tmp_path / "idx"
    first = ["dark_red", "red", "green"]
    build_index(IndexConfig([str(paths[n]) for n in first], bundle, idx, progress=False, method="exact"))
    build_index(IndexConfig([str(folder)], bundle, idx, progress=False, method="exact"))  # appends the rest
    index = Index.load(idx)
    names = [p.split("/")[-1].removesuffix(".png") for p in (t["tile"] for t in index.tiles)]
    assert sorted(names) == sorted(colours) and names[:3] == first

    image = OrtRunner(bundle / manifest.graphs["image"].onnx)
    inputs = np.stack([to_model_input(_rgb(paths[n]), manifest.preprocess) for n in names])
    raw = image.infer({"image": inputs})["embedding"].astype(np.float64)
    norms = np.linalg.norm(raw, axis=1)
    assert norms.max() / norms.min() > 3  # un-normalised rows would show it everywhere below
    assert index.embeddings.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(index.embeddings, axis=1), 1.0, atol=1e-6)
    np.testing.assert_allclose(index.embeddings, raw / norms[:, None], atol=1e-6)

    # search scores are cosines: the dark and the bright red tile score alike for "red", all within [-1, 1]
    query = _text_embeddings(bundle, manifest, ["red"])[0].astype(np.float64)
    cosines = raw @ query / (norms * np.linalg.norm(query))
    hits = search(idx, text="red", k=len(names))
    by_name = {names[index.tiles.index(h.tile)]: h.score for h in hits}
    for i, name in enumerate(names):
        assert by_name[name] == pytest.approx(cosines[i], abs=1e-5)
    assert by_name["dark_red"] == pytest.approx(by_name["red"], abs=0.05)
    assert {names[index.tiles.index(h.tile)] for h in hits[:2]} == {"dark_red", "red"}
    # an image query of a tile finds itself at cosine 1, dark or bright
    for name in ("dark_red", "red"):
        (hit,) = search(idx, image=paths[name], k=1)
        assert names[index.tiles.index(hit.tile)] == name and hit.score == pytest.approx(1.0, abs=1e-5)


def test_descriptions_cut_at_the_token_limit_are_named(bundles, tmp_path, capsys):
    # two classes alike for their first 64 tokens: the words that tell them apart are never read
    filler = " ".join(["a wide open area seen from above"] * 10)
    classes = tmp_path / "long.txt"
    classes.write_text(
        f"roofs: {filler} with red roofs\nwater: {filler} with blue water\ngreen: green fields\n"
    )
    save(tmp_path / "tiles" / "red.png", solid("red"))
    out = tmp_path / "labels.jsonl"
    args = [tmp_path / "tiles", "--classes", classes, "--model", bundles["dsva"], "--out", out, "--quiet"]
    code, _, err = run_cli(args, capsys)
    assert code == 0, err
    [row] = read_jsonl(out)
    scores = dict(zip(row["labels"], row["scores"]))
    assert scores["roofs"] == scores["water"]  # one embedding: why the user must hear of it
    assert "2 class(es) (roofs, water) have a description longer than the 64 tokens the model reads" in err
    classes.write_text("roofs: red roofs\nwater: blue water\n")
    code, _, err = run_cli(args, capsys)
    assert code == 0 and "tokens the model reads" not in err, err
