"""Polygraphy-style runners: every backend has the same `infer(feeds) -> outputs`.

`Runner.infer` is a template method: it checks that every input is fed, casts the feeds to the graph's
dtypes (FP16 graphs take float16 images), calls the backend's `_infer`, turns any backend error into one
RszError line, and returns float outputs as float32, so callers never care about backend or precision.
"""

from __future__ import annotations

from abc import ABC, abstractmethod

import numpy as np

from rsz_infer.errors import RszError, first_line


class Runner(ABC):
    """One loaded graph (ONNX, TensorRT engine or PyTorch module) on one device."""

    name: str = "runner"  # backend and device, e.g. "ort:cpu", "torch:cuda:fp16", "tensorrt_rtx:8.9"
    library: str = "a runner"  # for messages: "ONNX Runtime", "TensorRT", "PyTorch"
    _inputs: list[str]  # set by each backend's constructor, in the graph's order
    _outputs: list[str]
    input_dtypes: dict[str, str] = {}  # input name -> numpy dtype; replaced (never mutated) per instance
    batch_range: tuple[int, int | None] = (1, None)  # (min, max) batch the graph accepts; max None: any
    precision: str = "fp32"  # the graph variant that runs (rsz_infer.backend.choose_precision)

    def infer(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Run one batch. Feeds and outputs are host numpy arrays keyed by tensor name."""
        missing = [name for name in self.input_names if name not in feeds]
        if missing:
            takes = ", ".join(self.input_names)
            raise RszError(f"{', '.join(missing)}: missing input(s) of {self.name} (it takes {takes})")
        typed = {
            name: np.ascontiguousarray(feeds[name], self.input_dtypes.get(name, feeds[name].dtype))
            for name in self.input_names
        }
        try:
            out = self._infer(typed)
        except RszError:
            raise
        except Exception as err:  # runtime errors of the engine (shapes, memory) as one line
            raise RszError(f"{self.name}: inference failed ({first_line(err)})") from None
        return {k: v.astype(np.float32) if v.dtype == np.float16 else v for k, v in out.items()}

    @abstractmethod
    def _infer(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """The backend's run of one batch: every input present, in the graph's dtypes."""

    def batch_size(self, requested: int) -> int:
        """The batch size closest to `requested` that this graph accepts."""
        low, high = self.batch_range
        return max(low, requested if high is None else min(requested, high))

    @property
    def input_names(self) -> list[str]:
        return self._inputs

    @property
    def output_names(self) -> list[str]:
        return self._outputs

    def close(self) -> None:  # noqa: B027 - optional hook
        """Release device resources."""

    def __enter__(self) -> Runner:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
