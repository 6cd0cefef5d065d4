"""Model registry: `create_model(kind, config, task)` builds any rsz model from its config dataclass.

Model modules register themselves with `register(ModelEntry(...))` at import; `_load_all()` imports them.
"""

from __future__ import annotations

import importlib
import os
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from rsz_train.models.base import RszModel


@dataclass
class ClassSemantics:
    """Everything known about a list of classes, from which each model picks its class inputs."""

    names: list[str]
    descriptions: list[str]
    attributes: np.ndarray  # [C, A] description-derived attribute vectors (or ground truth, per config)
    sentence: np.ndarray  # [C, 384] MiniLM embeddings of the descriptions (L2-normalised)
    glove: np.ndarray | None = None  # [C, 50] mean GloVe vectors of the class names


@dataclass
class TaskInfo:
    """What a model must know about the task when it is built."""

    attribute_names: list[str]
    attribute_phrases: list[str]
    attribute_groups: list[str]
    image_size: int
    num_train_classes: int
    extra: dict = field(default_factory=dict)


@dataclass
class ModelEntry:
    kind: str
    config_cls: type  # a dataclass; its defaults are the small CPU model
    build: Callable[[object, TaskInfo], RszModel]
    sampler: str = "random"  # "random" | "class_balanced" (episodic, MCFA)
    uses_captions: bool = False  # batches carry one tokenized caption per image (MSA)


_REGISTRY: dict[str, ModelEntry] = {}
_MODULES = ("rsz_train.models.dsva", "rsz_train.models.mcfa", "rsz_train.models.msa")


def register(entry: ModelEntry) -> ModelEntry:
    _REGISTRY[entry.kind] = entry
    return entry


def _load_all() -> None:
    for name in _MODULES:
        importlib.import_module(name)


def model_entry(kind: str) -> ModelEntry:
    _load_all()
    if kind not in _REGISTRY:
        raise KeyError(f"unknown model kind {kind!r}; known: {', '.join(sorted(_REGISTRY))}")
    return _REGISTRY[kind]


def create_model(kind: str, config: object, task: TaskInfo) -> RszModel:
    return model_entry(kind).build(config, task)


def load_run(
    run_dir: str | os.PathLike, kind: str | None = None, device: str = "cpu"
) -> tuple[RszModel, object]:
    """A trained run's best model and its rsz_train.runs.RunInfo (the code lives in rsz_train.runs)."""
    from rsz_train.runs import load_run as _load_run

    return _load_run(run_dir, kind, device)
