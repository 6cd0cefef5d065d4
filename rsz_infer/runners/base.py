"""Polygraphy-style runners: every backend has the same `infer(feeds) -> outputs`."""

from __future__ import annotations

from abc import ABC, abstractmethod

import numpy as np


class Runner(ABC):
    """One loaded graph (ONNX, TensorRT engine or PyTorch module) on one device."""

    name: str = "runner"
    _inputs: list[str]  # set by each backend's constructor, in the graph's order
    _outputs: list[str]

    @abstractmethod
    def infer(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Run one batch. Feeds and outputs are host numpy arrays keyed by tensor name."""

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
