"""Model FLOPs per image and the machine's measured matrix peak.

Two ways to count a model's FLOPs (the benchmark says which one it used):
- `onnx_flops`: from the ONNX graph, with the batch fixed to 1 and shapes inferred, summing
  2*M*N*K for every MatMul/Gemm and 2*out_elements*(Cin/groups)*kh*kw for every Conv. Elementwise ops,
  softmax and normalisation are left out (they are memory bound, a few % of the total).
- `torch_flops`: torch.utils.flop_counter.FlopCounterMode on the PyTorch module (matmul, conv, attention).
A multiply-add counts as 2 FLOPs in both.

The peak is MEASURED in the same run, not taken from a data sheet: a large bf16/fp16 matmul on GPU, an
fp32 matmul on CPU (best of numpy, ONNX Runtime and torch, all cores).
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import numpy as np


def onnx_flops(onnx_path: Path | str) -> float | None:
    """FLOPs of one image (batch 1) through an ONNX graph; None when shapes cannot be inferred."""
    import onnx
    from onnx import shape_inference

    model = onnx.load(str(onnx_path), load_external_data=False)
    for value in model.graph.input:  # every dynamic axis (batch, seq) becomes 1
        for dim in value.type.tensor_type.shape.dim:
            if not dim.HasField("dim_value"):
                dim.dim_value = 1
    model = shape_inference.infer_shapes(model, data_prop=True)
    shapes: dict[str, list[int]] = {}
    for value in [*model.graph.input, *model.graph.value_info, *model.graph.output]:
        dims = [d.dim_value if d.HasField("dim_value") else -1 for d in value.type.tensor_type.shape.dim]
        shapes[value.name] = dims
    for init in model.graph.initializer:
        shapes[init.name] = list(init.dims)

    nodes = [n for n in model.graph.node if n.op_type in ("MatMul", "Gemm", "Conv")]
    unknown = {
        name
        for n in nodes
        for name in (n.input[0], n.input[1], n.output[0])
        if not shapes.get(name) or min(shapes[name]) < 0
    }
    if unknown:  # shape inference stopped at a data-dependent shape: read the real ones off one run
        shapes.update(_shapes_by_running(model, unknown))
    total = 0
    for node in nodes:
        a, b, out = shapes.get(node.input[0]), shapes.get(node.input[1]), shapes.get(node.output[0])
        if not a or not b or not out or min(a + b + out) < 0:
            return None  # an unknown shape: better no figure than a wrong one
        if node.op_type == "MatMul":
            total += 2 * int(np.prod(out)) * a[-1]
        elif node.op_type == "Gemm":
            trans_a = any(at.name == "transA" and at.i for at in node.attribute)
            total += 2 * int(np.prod(out)) * (a[0] if trans_a else a[1])
        else:  # Conv: weight [Cout, Cin/groups, kh, kw]
            total += 2 * int(np.prod(out)) * int(np.prod(b[1:]))
    return float(total)


def _shapes_by_running(model, names: set[str]) -> dict[str, list[int]]:  # onnx.ModelProto
    """Shapes of the named tensors from one ONNX Runtime run at batch 1 (random float inputs)."""
    import onnx
    import onnxruntime

    model = onnx.ModelProto.FromString(model.SerializeToString())
    known_outputs = {o.name for o in model.graph.output}
    for name in sorted(names - known_outputs):
        model.graph.output.append(onnx.helper.make_empty_tensor_value_info(name))
    try:
        session = onnxruntime.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
        rng = np.random.default_rng(0)
        feeds = {}
        for value in session.get_inputs():
            shape = [d if isinstance(d, int) else 1 for d in value.shape]
            dtype = np.int64 if "int64" in value.type else np.float32
            feeds[value.name] = np.ones(shape, dtype) if dtype == np.int64 else rng.random(shape, np.float32)
        outputs = session.get_outputs()
        values = session.run([o.name for o in outputs], feeds)
    except Exception:  # noqa: BLE001 - any failure only means no FLOP figure
        return {}
    return {o.name: list(v.shape) for o, v in zip(outputs, values) if o.name in names}


def torch_flops(module, example) -> float:  # torch types stay out of module scope
    """FLOPs of one forward of `module` on `example` (one image), by FlopCounterMode."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        module(example)
    return float(counter.get_total_flops())


def measure_cpu_peak(n: int = 1024, repeats: int = 5) -> dict:
    """fp32 matmul FLOP/s on this CPU, all cores: the best of numpy's BLAS, ONNX Runtime's MLAS and (when
    already imported) torch, since BLAS builds differ a lot and the peak is what the best of them reaches."""
    rng = np.random.default_rng(0)
    a = rng.standard_normal((n, n), dtype=np.float32)
    b = rng.standard_normal((n, n), dtype=np.float32)
    candidates = {"numpy": lambda: a @ b}
    ort_matmul = _ort_matmul(b)
    if ort_matmul is not None:
        candidates["onnxruntime"] = lambda: ort_matmul(a)
    torch = sys.modules.get("torch")
    if torch is not None:
        ta, tb = torch.from_numpy(a), torch.from_numpy(b)
        candidates["torch"] = lambda: ta @ tb
    best_name, best = "", float("inf")
    for name, fn in candidates.items():
        fn()  # warm-up: thread pool start, page faults
        for _ in range(repeats):
            t0 = time.perf_counter()
            fn()
            dt = time.perf_counter() - t0
            if dt < best:
                best_name, best = name, dt
    return {
        "tflops": 2 * n**3 / best / 1e12,
        "method": f"fp32 matmul {n}^3, best of {repeats} x ({', '.join(candidates)}): {best_name}",
    }


def _ort_matmul(b: np.ndarray):  # a callable, or None without onnx/onnxruntime
    try:
        import onnxruntime
        from onnx import TensorProto, helper, numpy_helper
    except ImportError:
        return None
    n = b.shape[0]
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["a", "b"], ["c"])],
        "peak",
        [helper.make_tensor_value_info("a", TensorProto.FLOAT, [n, n])],
        [helper.make_tensor_value_info("c", TensorProto.FLOAT, [n, n])],
        [numpy_helper.from_array(b, "b")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    session = onnxruntime.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return lambda a: session.run(None, {"a": a})


def measure_gpu_peak(dtype: str = "bf16", n: int = 8192, repeats: int = 10) -> dict:
    """Dense matmul FLOP/s on the current CUDA device (torch, random data), mean of `repeats` after 3."""
    import torch

    dt = {"bf16": torch.bfloat16, "fp16": torch.float16}[dtype]
    a = torch.randn(n, n, device="cuda", dtype=dt)
    b = torch.randn(n, n, device="cuda", dtype=dt)
    for _ in range(3):
        a @ b
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(repeats):
        a @ b
    end.record()
    torch.cuda.synchronize()
    seconds = start.elapsed_time(end) / 1e3 / repeats
    del a, b
    torch.cuda.empty_cache()
    return {"tflops": 2 * n**3 / seconds / 1e12, "method": f"torch {dtype} matmul {n}^3, mean of {repeats}"}
