"""FP32 ONNX -> strongly typed FP16 ONNX with FP32 islands where FP16 overflows.

TensorRT 10 (strongly typed networks) and TensorRT-RTX take precision from the graph, not from a builder
flag, so the FP16 variant is its own ONNX file: weights and activations are float16, except in the ops of
FP32_OPS, which compute in float32 with Casts around them. Graph inputs and outputs stay float32, so
preprocessing, tokenisation and scoring are the same for both variants (the first Cast is free).

A small converter of our own rather than onnxconverter-common: that one leaves the model's own
Cast(to=float) nodes at float32 (breaking typing of e.g. MiniLM's mask pooling) and loops when Cast is
blocked. Here every node gets one precision and a Cast is inserted wherever a float tensor crosses from
one precision to the other.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

# Ops kept in FP32, and why (FP16 overflows above 65504 and loses everything below 6e-8):
FP32_OPS = {
    # Variance / mean of squares: a sum of squared activations over hundreds of channels passes 65504 for
    # activations of a few tens (LayerNorm in MiniLM, decomposed norms, mean pooling over tokens).
    "LayerNormalization": "variance of activations (sum of squares) overflows",
    "ReduceMean": "decomposed LayerNorm/RMS variance: mean of squares overflows",
    "Pow": "x**2 of activations above 256 overflows",
    "Sqrt": "input is a variance or sum of squares, kept with it",
    "Reciprocal": "1/x of small variances or norms overflows",
    # Softmax and exponentials: exp(x) overflows for x > 11.
    "Softmax": "exp of attention scores overflows; row sums lose precision",
    "LogSoftmax": "same as Softmax",
    "Exp": "exp(x) overflows for x > 11 (logit scale, Gaussian variances)",
    "Log": "log of tiny FP16 values is -inf",
    # L2 normalisation of embeddings (F.normalize -> ReduceL2, Clip, Div) and pooled sums: the squared
    # norm overflows, and the cosine score of every class depends on it.
    "ReduceL2": "L2 norm: sum of squares overflows",
    "ReduceSumSquare": "sum of squares overflows",
    "ReduceSum": "sums over tokens / pixels grow past the FP16 range",
    "Div": "division by a norm, a token count or sqrt(d): keeps normalised embeddings exact",
    # Not precision choices: float inputs that ONNX requires to be float32 (Resize scales) or control flow.
    "Resize": "its scales input must be float32",
    "Upsample": "its scales input must be float32",
    "Range": "index arithmetic",
    "If": "subgraphs are not converted",
    "Loop": "subgraphs are not converted",
    "Scan": "subgraphs are not converted",
}

FLOAT, HALF = TensorProto.FLOAT, TensorProto.FLOAT16
_FP16_MAX = float(np.finfo(np.float16).max)


def _to_half(array: np.ndarray) -> np.ndarray:
    # Clip to the FP16 range: attention masks use float32's minimum, which must stay a large negative
    # number (-65504), not -inf (a fully masked row would then give NaN).
    return np.clip(array, -_FP16_MAX, _FP16_MAX).astype(np.float16)


def _half_tensor(tensor: TensorProto) -> TensorProto:
    return numpy_helper.from_array(_to_half(numpy_helper.to_array(tensor)), tensor.name)


def _shape_skeleton(model: onnx.ModelProto) -> onnx.ModelProto:
    """`model` for shape inference, which serialises it: past EXTERNAL_DATA_BYTES of weights (protobuf
    writes nothing over 2 GiB) a copy whose large float weights keep their type and dims but no values,
    which inference never reads (it reads small int64 shapes and indices, kept)."""
    from rsz_export.onnx_export import EXTERNAL_DATA_BYTES  # here: this module needs no torch

    if sum(t.ByteSize() for t in model.graph.initializer) <= EXTERNAL_DATA_BYTES:
        return model
    skeleton = onnx.ModelProto()
    skeleton.ir_version = model.ir_version
    skeleton.opset_import.extend(model.opset_import)
    graph = skeleton.graph
    for field in ("node", "input", "output", "value_info"):
        getattr(graph, field).extend(getattr(model.graph, field))
    for tensor in model.graph.initializer:
        if tensor.data_type == FLOAT and tensor.ByteSize() > 1 << 16:
            graph.initializer.add(name=tensor.name, data_type=FLOAT, dims=tensor.dims)
        else:
            graph.initializer.append(tensor)
    return skeleton


def _float_tensors(model: onnx.ModelProto) -> set[str]:
    """Names of all float32 tensors (inputs, initializers, intermediate values, outputs)."""
    inferred = onnx.shape_inference.infer_shapes(_shape_skeleton(model))
    values = list(inferred.graph.input) + list(inferred.graph.value_info) + list(inferred.graph.output)
    names = {v.name for v in values if v.type.tensor_type.elem_type == FLOAT}
    names |= {t.name for t in model.graph.initializer if t.data_type == FLOAT}
    for node in model.graph.node:  # Constant outputs are not always in value_info
        if node.op_type == "Constant":
            for attr in node.attribute:
                if attr.name == "value" and attr.t.data_type == FLOAT:
                    names.add(node.output[0])
    return names


def convert_model_fp16(model: onnx.ModelProto, fp32_ops: set[str] | None = None) -> onnx.ModelProto:
    """The FP16 variant of an FP32 model (returns a new model; inputs and outputs stay float32)."""
    fp32_ops = set(FP32_OPS) if fp32_ops is None else fp32_ops
    copied = onnx.ModelProto()
    copied.CopyFrom(model)  # not through SerializeToString: that fails for a graph over 2 GiB
    model = copied
    graph = model.graph
    floats = _float_tensors(model)
    graph_inputs = {v.name for v in graph.input}
    initializers = {t.name: t for t in graph.initializer}

    # Precision of every float tensor: what its producer computes in. Graph inputs are float32 (kept I/O).
    half_nodes = [n.op_type not in fp32_ops for n in graph.node]
    readers: dict[str, list[bool]] = {}
    for node, half in zip(graph.node, half_nodes):
        for name in node.input:
            readers.setdefault(name, []).append(half)
    # Constants and initializers become float16 only when every node that reads them computes in float16
    # (an epsilon such as 1e-12 would otherwise round to 0 before reaching a float32 op).
    for index, node in enumerate(graph.node):
        if node.op_type == "Constant":
            half_nodes[index] = all(readers.get(node.output[0], [False]))
    tensor_half: dict[str, bool] = {name: False for name in graph_inputs}
    for node, half in zip(graph.node, half_nodes):
        for out in node.output:
            if out in floats:
                tensor_half[out] = half
    for name, tensor in initializers.items():
        if tensor.data_type == FLOAT and name not in graph_inputs:
            half = all(readers.get(name, [False]))
            tensor_half[name] = half
            if half:
                tensor.CopyFrom(_half_tensor(tensor))

    new_nodes: list[onnx.NodeProto] = []
    casts: dict[tuple[str, bool], str] = {}

    def cast_of(name: str, half: bool) -> str:
        """`name` in the wanted precision, inserting (once) a Cast when it is in the other one."""
        if name not in floats or tensor_half.get(name, False) == half:
            return name
        if (name, half) not in casts:
            cast_name = f"{name}__to_{'fp16' if half else 'fp32'}"
            new_nodes.append(
                helper.make_node("Cast", [name], [cast_name], to=HALF if half else FLOAT, name=cast_name)
            )
            casts[(name, half)] = cast_name
        return casts[(name, half)]

    for node, half in zip(graph.node, half_nodes):
        for i, name in enumerate(node.input):
            if name:
                node.input[i] = cast_of(name, half)
        if half:
            for attr in node.attribute:
                if node.op_type == "Cast" and attr.name == "to" and attr.i == FLOAT:
                    attr.i = HALF  # the model's own casts to float now cast to float16
                elif attr.type == onnx.AttributeProto.TENSOR and attr.t.data_type == FLOAT:
                    attr.t.CopyFrom(_half_tensor(attr.t))  # Constant, ConstantOfShape values
        new_nodes.append(node)

    # Graph outputs stay float32: rename the producer's output and cast back under the public name.
    for output in graph.output:
        if output.name in floats and tensor_half.get(output.name, False):
            internal = f"{output.name}__fp16"
            for node in new_nodes:
                node.output[:] = [internal if o == output.name else o for o in node.output]
                node.input[:] = [internal if i == output.name else i for i in node.input]
            new_nodes.append(
                helper.make_node("Cast", [internal], [output.name], to=FLOAT, name=f"{output.name}__out")
            )

    del graph.node[:]
    graph.node.extend(new_nodes)
    del graph.value_info[:]  # stale element types; checks re-infer them
    return model


def convert_fp16(src: Path, dst: Path, extra_fp32_ops: dict[str, str] | None = None) -> dict:
    """Write the FP16 variant of the FP32 graph `src` to `dst`; returns what to record in the manifest.

    extra_fp32_ops: more ops to keep in FP32 for this graph (op -> why)."""
    from rsz_export.onnx_export import save_onnx  # here: this module needs no torch, onnx_export does

    ops = FP32_OPS | (extra_fp32_ops or {})
    save_onnx(convert_model_fp16(onnx.load(str(src)), set(ops)), dst)
    return {"fp32_ops": {op: ops[op] for op in sorted(ops)}, "io_dtype": "float32"}
