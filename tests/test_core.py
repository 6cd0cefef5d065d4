"""The torch-free core shared by every part: preprocessing, scoring, manifest, one-line errors."""

import json
import subprocess
import sys

import numpy as np
import pytest

from rsz_infer.bundle import GraphSpec, Manifest, TensorSpec, load_manifest, sha256_file
from rsz_infer.errors import RszError
from rsz_infer.preprocess import PreprocessSpec, normalize, to_model_input
from rsz_infer.scoring import calibrated_stacking, class_logits, softmax, top_k


def test_normalize_matches_float_arithmetic():
    spec = PreprocessSpec(size=16)
    rgb = np.random.default_rng(0).integers(0, 256, (16, 16, 3), dtype=np.uint8)
    expected = (rgb.astype(np.float32) / 255 - np.float32(spec.mean)) / np.float32(spec.std)
    np.testing.assert_allclose(normalize(rgb, spec), expected.transpose(2, 0, 1), atol=1e-6)


def test_to_model_input_resizes_to_square():
    rgb = np.zeros((30, 50, 3), np.uint8)
    assert to_model_input(rgb, PreprocessSpec(size=24)).shape == (3, 24, 24)


def test_class_logits_rules():
    img = np.array([[3.0, 0.0], [0.0, 1.0]])
    cls = np.array([[1.0, 0.0], [0.0, 2.0]])
    np.testing.assert_allclose(class_logits(img, cls, "cosine", 10.0), [[10, 0], [0, 10]])
    np.testing.assert_allclose(class_logits(img, cls, "dot", 1.0), [[3, 0], [0, 2]])
    with pytest.raises(ValueError):
        class_logits(img, cls, "euclid", 1.0)


def test_calibrated_stacking_moves_only_seen_classes():
    logits = np.array([[2.0, 1.5, 0.0]])
    out = calibrated_stacking(logits, np.array([True, False, False]), 1.0)
    np.testing.assert_allclose(out, [[1.0, 1.5, 0.0]])
    idx, val = top_k(softmax(out), 2)
    assert idx.tolist() == [[1, 0]] and val[0, 0] > val[0, 1]


def _manifest(tmp_path):
    # a real (one-node) ONNX graph: loading a bundle parses each graph for external-data files
    from onnx import TensorProto, helper, save

    io = [helper.make_tensor_value_info(n, TensorProto.FLOAT, [1, 3]) for n in ("image", "embedding")]
    graph = helper.make_graph([helper.make_node("Identity", ["image"], ["embedding"])], "g", io[:1], io[1:])
    save(helper.make_model(graph), str(tmp_path / "image.onnx"))
    graph = GraphSpec(
        "image.onnx",
        "fp32",
        [TensorSpec("image", ["batch", 3, 8, 8], "float32")],
        [TensorSpec("embedding", ["batch", 4], "float32")],
    )
    m = Manifest(
        "dsva",
        "0.1.0",
        PreprocessSpec(size=8),
        {"image": graph},
        "attributes",
        "dot",
        1.0,
        4,
        ["forest"],
        0.5,
        files={"image.onnx": sha256_file(tmp_path / "image.onnx")},
    )
    (tmp_path / "manifest.json").write_text(m.to_json())
    return m


def test_manifest_round_trip_and_hash_check(tmp_path):
    m = _manifest(tmp_path)
    assert load_manifest(tmp_path) == m
    (tmp_path / "image.onnx").write_bytes(b"tampered")
    with pytest.raises(RszError, match="sha256"):
        load_manifest(tmp_path)


def test_malformed_manifest_is_one_line(tmp_path):
    (tmp_path / "manifest.json").write_text(json.dumps({"model_kind": "dsva"}))
    with pytest.raises(RszError, match="malformed manifest"):
        load_manifest(tmp_path)


def test_cli_errors_are_one_line(tmp_path):
    code = (
        "from rsz_infer.errors import RszError, one_line_errors\n"
        "@one_line_errors\n"
        "def main():\n"
        "    raise RszError('tiles/x.png: not an image')\n"
        "main()\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 2
    assert result.stderr.strip() == "error: tiles/x.png: not an image"
