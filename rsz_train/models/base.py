"""The interface every rsz model implements (timm-style: one registry, one interface)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np
import torch
from torch import nn


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
class ExportGraph:
    """One traceable piece of a model, handed to `export` (see docs/DESIGN.md for roles and names)."""

    role: str  # "image" | "text" | "semantic" | "rerank"
    module: nn.Module  # forward(*example_inputs) -> tensor or tuple of tensors, in output_names order
    example_inputs: tuple[torch.Tensor, ...]
    input_names: list[str]
    output_names: list[str]
    dynamic_axes: dict[str, dict[int, str]] = field(default_factory=dict)
    fp32_ops: tuple[str, ...] = ()  # ops the FP16 variant keeps in FP32 besides rsz_export.fp16.FP32_OPS


class RszModel(nn.Module):
    """Base of DSVA, MCFA and MSA.

    A model maps images to embeddings and classes (through their semantics) to embeddings
    of the same size; class logits are `rsz_infer.scoring.class_logits(img, cls, rule, scale)`.
    """

    kind: ClassVar[str]
    scoring_rule: ClassVar[str]  # "cosine" | "dot"
    class_embedding: ClassVar[str]  # "attributes" | "semantic" | "text" (see rsz_infer.bundle.Manifest)

    def training_losses(self, batch: dict[str, Any]) -> dict[str, torch.Tensor]:
        """Losses for one batch; the key "loss" is the weighted total that is back-propagated."""
        raise NotImplementedError

    def cutmix_settings(self) -> tuple[float, int]:
        """(probability, grid cell in pixels) of CutMix training batches (rsz_train.data.batches.cutmix);
        a model that mixes takes [B, C] class weights as batch["label"]. Default: never."""
        return 0.0, 1

    def class_inputs(self, semantics: Any, device: torch.device | str = "cpu") -> Any:
        """Pick this model's class inputs from a ClassSemantics (attributes, sentence vectors
        or tokenized prompts), as tensors on `device`; the result is what encode_classes takes."""
        raise NotImplementedError

    def tokenize(self, texts: list[str]) -> dict[str, torch.Tensor]:
        """Models with a text tower (MSA): texts -> input_ids / attention_mask (int64)."""
        raise NotImplementedError(f"{type(self).__name__} has no text tower")

    def encode_images(self, images: torch.Tensor) -> torch.Tensor:
        """[B, 3, H, W] normalised images -> [B, D] embeddings used for scoring."""
        raise NotImplementedError

    def encode_classes(self, class_inputs: Any) -> torch.Tensor:
        """Class semantics (model specific: attribute matrix, semantic vectors, token batch) -> [C, D]."""
        raise NotImplementedError

    def logit_scale(self) -> float:
        raise NotImplementedError

    def export_graphs(self) -> list[ExportGraph]:
        raise NotImplementedError
