"""ONNX external data: a graph's weights in another file are used only when that file is inside the bundle and
listed with its sha256 (rsz reads the locations from the graph itself, without the `onnx` package)."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper
from onnx.external_data_helper import _get_all_tensors, set_external_data, uses_external_data

from rsz_infer.bundle import sha256_file
from rsz_infer.onnx_external import external_data_locations

from .test_hostile_bundles_and_indexes import _copy_bundle, _edit_manifest, _label


def _externalise_text_graph(bundle, location: str = "text.bin", listed: bool = True):
    """Save the bundle's text graph (its token table is an initializer) with its tensors in `location`."""
    model = onnx.load(str(bundle / "text.onnx"))
    onnx.save_model(
        model, str(bundle / "text.onnx"), save_as_external_data=True, location="text.bin", size_threshold=0
    )
    if location != "text.bin":  # a crafted graph: the same tensors, named by another path
        model = onnx.load(str(bundle / "text.onnx"), load_external_data=False)
        for tensor in _get_all_tensors(model):
            for entry in tensor.external_data:
                if entry.key == "location":
                    entry.value = location
        onnx.save_model(model, str(bundle / "text.onnx"))

    def change(m):
        m["files"]["text.onnx"] = sha256_file(bundle / "text.onnx")
        if listed:
            m["files"]["text.bin"] = sha256_file(bundle / "text.bin")

    _edit_manifest(bundle, change)


def test_listed_external_data_is_loaded(bundles, class_file, tmp_path, capsys):
    bundle = _copy_bundle(bundles, tmp_path)
    _externalise_text_graph(bundle)
    assert external_data_locations(bundle / "text.onnx") == ["text.bin"]
    code, lines, out = _label(bundle, class_file, tmp_path, capsys)
    assert code == 0 and not lines
    assert "red" in out.read_text().splitlines()[1]  # the text graph ran on the external token table
    # the listed file is hash-checked like the graph: changed weights are refused
    (bundle / "text.bin").write_bytes(b"\0" * (bundle / "text.bin").stat().st_size)
    code, lines, _ = _label(bundle, class_file, tmp_path / "again", capsys)
    assert code == 2 and len(lines) == 1 and "text.bin: sha256 does not match" in lines[0], lines


@pytest.mark.parametrize(
    "location, expected",
    [
        ("text.bin", "text.bin (external data of text.onnx) is not listed (with its sha256) in files"),
        ("../outside.bin", "'../outside.bin' points outside the bundle"),
        ("/tmp/outside.bin", "'/tmp/outside.bin' points outside the bundle"),
    ],
)
def test_unlisted_or_outside_external_data_is_refused(
    location, expected, bundles, class_file, tmp_path, capsys
):
    bundle = _copy_bundle(bundles, tmp_path)
    (tmp_path / "outside.bin").write_bytes(b"")
    _externalise_text_graph(bundle, location, listed=False)
    if location != "text.bin":
        (tmp_path / "outside.bin").write_bytes((bundle / "text.bin").read_bytes())
    code, lines, out = _label(bundle, class_file, tmp_path, capsys)
    assert code == 2 and len(lines) == 1, lines
    assert "manifest.json" in lines[0] and expected in lines[0], lines
    assert not out.exists()


def test_locations_are_found_wherever_a_tensor_can_be(tmp_path):
    """Initializers, Constant attributes inside an If's subgraph: the same files onnx itself finds."""

    def constant(name, value):
        tensor = numpy_helper.from_array(np.full(4, value, np.float32), name)
        return helper.make_node("Constant", [], [name], value=tensor)

    branch = helper.make_graph(
        [constant("c", 2.0)], "branch", [], [helper.make_tensor_value_info("c", TensorProto.FLOAT, [4])]
    )
    nodes = [helper.make_node("If", ["cond"], ["y"], then_branch=branch, else_branch=branch)]
    graph = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info("cond", TensorProto.BOOL, [])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [4])],
        [numpy_helper.from_array(np.ones(4, np.float32), "w")],
    )
    path = tmp_path / "g.onnx"
    model = helper.make_model(graph)
    onnx.save_model(model, str(path), save_as_external_data=True, location="w.bin", size_threshold=0)
    model = onnx.load(str(path), load_external_data=False)
    tensors = list(_get_all_tensors(model))
    assert len(tensors) == 3  # the initializer and both branches' constants
    for i, tensor in enumerate(t for t in tensors if not uses_external_data(t)):  # constants: own files
        set_external_data(tensor, f"sub/c{i}.bin")
        tensor.ClearField("raw_data")
    onnx.save_model(model, str(path))
    found_by_onnx = {
        e.value for t in _get_all_tensors(onnx.load(str(path), load_external_data=False))
        for e in t.external_data if e.key == "location"
    }  # fmt: skip
    assert external_data_locations(path) == sorted(found_by_onnx) == ["sub/c0.bin", "sub/c1.bin", "w.bin"]
    path.write_bytes(path.read_bytes()[:-3])  # truncated: one line, not a traceback
    with pytest.raises(Exception, match="not a valid ONNX graph"):
        external_data_locations(path)
