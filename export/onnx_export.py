"""ExportGraph (a traceable piece of a model) -> ONNX file, and the structural checks of an ONNX file."""

from __future__ import annotations

import io
import os
import tempfile
import warnings
from contextlib import redirect_stdout
from pathlib import Path

import onnx
import torch

from rsz_infer.bundle import TensorSpec
from rsz_infer.errors import RszError, first_line
from rsz_train.models.base import ExportGraph

OPSET = 17  # first opset with LayerNormalization; TensorRT 10 and TensorRT-RTX parse it

_ONNX_DTYPES = {
    onnx.TensorProto.FLOAT: "float32",
    onnx.TensorProto.FLOAT16: "float16",
    onnx.TensorProto.INT64: "int64",
    onnx.TensorProto.INT32: "int32",
    onnx.TensorProto.BOOL: "bool",
}


# Protobuf serialises no message over 2 GiB, so a graph whose weights pass this (ViT-H-14's image tower is
# 2.5 GB in FP32) keeps them in one external-data file beside it, <graph>.onnx.data, which ONNX Runtime and
# TensorRT read from the graph's folder (torch.onnx.export alone would write one file per weight).
EXTERNAL_DATA_BYTES = 1_800_000_000


def export_onnx(graph: ExportGraph, path: Path, opset: int = OPSET) -> Path:
    """Trace `graph.module` on its example inputs into `path` (FP32, dynamic axes as the graph names them)."""
    module = graph.module.eval()
    # nn.MultiheadAttention (open_clip's CLIP) takes a fused fast path in eval mode without grad, an op
    # ONNX has no symbolic for; the plain path is the same computation.
    fastpath = torch.backends.mha.get_fastpath_enabled()
    torch.backends.mha.set_fastpath_enabled(False)
    # The TorchScript tracer (dynamo=False) handles the transformers text encoder and data-dependent
    # shapes of the heads more robustly than torch.export, and its graphs parse in TensorRT as they are.
    with tempfile.TemporaryDirectory(dir=path.parent, prefix=f".{path.name}-") as tmp:
        traced = Path(tmp) / path.name
        try:
            _trace(module, graph, traced, opset)
        finally:
            torch.backends.mha.set_fastpath_enabled(fastpath)
        if os.listdir(tmp) == [path.name] and traced.stat().st_size <= EXTERNAL_DATA_BYTES:
            os.replace(traced, path)  # one self-contained file, as traced
        else:  # torch wrote each weight to its own file: gathered into one beside the graph
            save_onnx(onnx.load(str(traced)), path)
    return path


def save_onnx(model: onnx.ModelProto, path: Path) -> None:
    """onnx.save, with the weights in one external-data file `<path>.data` when they pass
    EXTERNAL_DATA_BYTES (protobuf cannot write the graph in one piece past 2 GiB)."""
    weights = sum(t.ByteSize() for t in model.graph.initializer)
    if weights <= EXTERNAL_DATA_BYTES:
        onnx.save(model, str(path))
        return
    onnx.save_model(
        model, str(path), save_as_external_data=True, all_tensors_to_one_file=True,
        location=f"{path.name}.data", size_threshold=1024,
    )  # fmt: skip
    # onnx creates the data file 0600; it takes the graph's mode (others read a shared bundle too)
    os.chmod(path.with_name(f"{path.name}.data"), path.stat().st_mode & 0o777)


def _trace(module: torch.nn.Module, graph: ExportGraph, path: Path, opset: int) -> None:
    with warnings.catch_warnings(), redirect_stdout(io.StringIO()), torch.no_grad():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            module,
            graph.example_inputs,
            str(path),
            input_names=graph.input_names,
            output_names=graph.output_names,
            dynamic_axes=graph.dynamic_axes,
            opset_version=opset,
            do_constant_folding=True,
            dynamo=False,
        )


def load_checked(path: Path) -> onnx.ModelProto:
    """onnx.checker + strict shape inference; a corrupted or invalid file is one RszError line."""
    try:
        # By path, and the graph without its external data: a graph over 2 GiB cannot be serialised whole
        # to be checked ("Failed to serialize proto"); the checker reads it from its folder as ORT does.
        onnx.checker.check_model(str(path), full_check=False)
        model = onnx.load(str(path), load_external_data=False)
        return onnx.shape_inference.infer_shapes(model, check_type=True, strict_mode=True)
    except Exception as err:  # protobuf DecodeError, onnx ValidationError, InferenceError, ...
        raise RszError(f"{path}: invalid ONNX graph ({first_line(err)})") from None


def _tensor_specs(values) -> list[TensorSpec]:  # repeated onnx ValueInfoProto
    specs = []
    for value in values:
        tensor_type = value.type.tensor_type
        shape = [d.dim_param if d.dim_param else int(d.dim_value) for d in tensor_type.shape.dim]
        specs.append(TensorSpec(value.name, shape, _ONNX_DTYPES.get(tensor_type.elem_type, "unknown")))
    return specs


def graph_io(model: onnx.ModelProto) -> tuple[list[TensorSpec], list[TensorSpec]]:
    """Inputs and outputs (names, shapes with dynamic axes by name, numpy dtypes) of a loaded ONNX model."""
    initializers = {i.name for i in model.graph.initializer}
    inputs = [v for v in model.graph.input if v.name not in initializers]
    return _tensor_specs(inputs), _tensor_specs(model.graph.output)
