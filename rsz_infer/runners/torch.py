"""PyTorch runner: an nn.Module behind the same `infer(feeds)` as the ONNX and TensorRT runners.

torch is imported inside the functions only, so `import rsz_infer` never needs PyTorch.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from rsz_infer.errors import RszError
from rsz_infer.runners.base import Runner


class TorchRunner(Runner):
    """Run `module(*inputs)` with feeds taken in `input_names` order; outputs keyed by `output_names`.

    fp16 runs the module in half precision (float inputs cast, outputs returned as float32); compile uses
    torch.compile; cuda_graphs (CUDA only) captures one graph per input shape and replays it.
    """

    library = "PyTorch"

    def __init__(
        self,
        module: Any,
        device: str = "cpu",
        fp16: bool = False,
        compile: bool = False,
        cuda_graphs: bool = False,
        input_names: list[str] | None = None,
        output_names: list[str] | None = None,
    ) -> None:
        import copy
        import inspect

        import torch

        if device.startswith("cuda") and not torch.cuda.is_available():
            raise RszError(f"device {device}: PyTorch sees no CUDA GPU on this machine")
        if cuda_graphs and not device.startswith("cuda"):
            raise RszError(f"cuda_graphs: needs a CUDA device, not {device}")
        self.device = torch.device(device)
        self.fp16 = fp16
        if fp16:  # a half copy: the caller's module (e.g. the FP32 reference of a check) stays FP32
            module = copy.deepcopy(module).half()
        self.module = module.eval().to(self.device)
        self.forward = torch.compile(self.module) if compile else self.module
        self.cuda_graphs = cuda_graphs
        self._graphs: dict[tuple, tuple] = {}  # input shapes -> (graph, static inputs, static outputs)
        # Default names: the forward() parameters, and output0, output1, ... (ExportGraphs give both).
        self._inputs = list(input_names or inspect.signature(module.forward).parameters)
        self._outputs = list(output_names or [])
        self.name = f"torch:{self.device.type}{':fp16' if fp16 else ''}"

    def _to_tensor(self, array: np.ndarray):  # torch.Tensor
        import torch

        tensor = torch.from_numpy(np.ascontiguousarray(array)).to(self.device)
        if self.fp16 and tensor.is_floating_point():
            tensor = tensor.half()
        return tensor

    def _run(self, tensors: list) -> tuple:
        out = self.forward(*tensors)
        return out if isinstance(out, tuple | list) else (out,)

    def _run_graph(self, tensors: list) -> tuple:
        import torch

        key = tuple((tuple(t.shape), t.dtype) for t in tensors)
        if key not in self._graphs:
            static_in = [t.clone() for t in tensors]
            stream = torch.cuda.Stream()
            stream.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(stream):  # warm-up outside the graph, as CUDA graph capture requires
                self._run(static_in)
            torch.cuda.current_stream().wait_stream(stream)
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph):
                static_out = self._run(static_in)
            self._graphs[key] = (graph, static_in, static_out)
        graph, static_in, static_out = self._graphs[key]
        for dst, src in zip(static_in, tensors):
            dst.copy_(src)
        graph.replay()
        return static_out

    def _infer(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        import torch

        tensors = [self._to_tensor(feeds[name]) for name in self._inputs]
        with torch.inference_mode():
            outputs = self._run_graph(tensors) if self.cuda_graphs else self._run(tensors)
        if not self._outputs:
            self._outputs = [f"output{i}" for i in range(len(outputs))]
        result = {}
        for name, value in zip(self._outputs, outputs):
            value = value.detach()
            if value.is_floating_point():
                value = value.float()
            result[name] = value.cpu().numpy()
        return result


def bundle_model(bundle_dir, manifest):  # noqa: ANN001, ANN201 - (Path, Manifest) -> RszModel
    """The trained model of a bundle, from the run's files it ships (safetensors weights, listed and
    hash-checked in the manifest like every file; never a pickle), through rsz_train.runs.load_run."""
    import tempfile
    from pathlib import Path

    files = manifest.extra.get("torch")
    if not files:
        raise RszError(
            f"--backend torch: {bundle_dir} carries no PyTorch weights (made before bundles shipped them, "
            "or not from a run); re-export it with rsz-export, or use --backend ort or trt"
        )
    try:
        from rsz_train.runs import CLASSES, CONFIG, WEIGHTS, load_run
    except ImportError as err:
        raise RszError(
            f"--backend torch: needs the training side (pip install 'rsz[train]'): {err}"
        ) from None
    bundle_dir = Path(bundle_dir)
    with tempfile.TemporaryDirectory(prefix="rsz-torch-") as tmp:
        # load_run reads a run folder: link the bundle's copies under the run's file names
        for name, key in ((CONFIG, "config"), (WEIGHTS, "weights"), (CLASSES, "classes")):
            (Path(tmp) / name).symlink_to((bundle_dir / files[key]).resolve())
        model, _ = load_run(tmp)
    return model


def bundle_runner(bundle_dir, manifest, role: str, device: str, precision: str) -> TorchRunner:  # noqa: ANN001
    """The PyTorch module of a bundle's graph (bundle_model). On CUDA: FP16 (precision auto),
    torch.compile and one CUDA graph per batch shape (full batches, and the shorter last one of a run)."""
    if precision == "int8":
        raise RszError("--backend torch: no INT8 in the PyTorch backend; use --backend ort --precision int8")
    model = bundle_model(bundle_dir, manifest)
    graph = next((g for g in model.export_graphs() if g.role == role), None)
    if graph is None:
        raise RszError(f"{bundle_dir}: the {model.kind} model has no {role!r} graph")
    on_gpu = device.startswith("cuda")
    runner = TorchRunner(
        graph.module,
        device=device,
        fp16=precision == "fp16",
        compile=on_gpu,
        cuda_graphs=on_gpu,
        input_names=graph.input_names,
        output_names=graph.output_names,
    )
    runner.precision = precision
    return runner
