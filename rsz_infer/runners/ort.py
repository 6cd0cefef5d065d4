"""ONNX Runtime runner (TensorRT, CUDA or CPU execution provider)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from rsz_infer.errors import RszError, first_line
from rsz_infer.runners.base import Runner

# Preference order; only providers present in this onnxruntime build are used.
PROVIDER_ORDER = ("TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider")
# ONNX Runtime's input type names -> numpy dtypes the feeds are cast to
ORT_DTYPES = {
    "tensor(float)": "float32",
    "tensor(float16)": "float16",
    "tensor(int64)": "int64",
    "tensor(int32)": "int32",
}


class OrtRunner(Runner):
    """io_binding: run through an IOBinding (inputs copied once, outputs allocated by ONNX Runtime on the
    provider's device, then copied back together); None turns it on when a GPU provider leads."""

    library = "ONNX Runtime"

    def __init__(
        self, onnx_path: Path | str, device: str = "cpu", threads: int = 0, io_binding: bool | None = None
    ) -> None:
        import onnxruntime as ort

        self.path = Path(onnx_path)
        available = ort.get_available_providers()
        if device == "cpu":
            providers = ["CPUExecutionProvider"]
        else:
            providers = [p for p in PROVIDER_ORDER if p in available]
        opts = ort.SessionOptions()
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        if threads:
            opts.intra_op_num_threads = threads
        if providers[0] == "CPUExecutionProvider":
            # Idle intra-op threads sleep instead of spinning: rsz-infer's decode threads share these cores,
            # and spinning threads starved them (2 cores, INT8 demo bundle: the batching loop at 59-64% of
            # the encoder-only rate with spinning, 77-81% without; benchmarks/RESULTS.md).
            opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
        try:
            self.session = ort.InferenceSession(str(self.path), sess_options=opts, providers=providers)
        except Exception as err:  # onnxruntime raises its own exception types
            raise RszError(f"{self.path}: ONNX Runtime cannot load this graph ({first_line(err)})") from None
        self.providers = self.session.get_providers()
        self.name = f"ort:{self.providers[0].replace('ExecutionProvider', '').lower()}"
        self._inputs = [i.name for i in self.session.get_inputs()]
        self._outputs = [o.name for o in self.session.get_outputs()]
        self.input_dtypes = {
            i.name: ORT_DTYPES[i.type] for i in self.session.get_inputs() if i.type in ORT_DTYPES
        }
        on_gpu = self.providers[0] != "CPUExecutionProvider"
        self.io_binding = on_gpu if io_binding is None else io_binding
        self._output_device = "cuda" if on_gpu else "cpu"

    def _infer(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        if not self.io_binding:
            values = self.session.run(self._outputs, feeds)
            return dict(zip(self._outputs, values))
        binding = self.session.io_binding()
        for name in self._inputs:
            binding.bind_cpu_input(name, feeds[name])
        for name in self._outputs:
            binding.bind_output(name, self._output_device)
        self.session.run_with_iobinding(binding)
        return dict(zip(self._outputs, binding.copy_outputs_to_cpu()))
