"""Model registry: THE list of model kinds. `create_model(kind, config, task)` builds any rsz model.

Each entry says what the CLIs, the training loop, export and the demo need to know about a kind, and
where its config dataclass and builder live ("module:attribute", imported when first needed). This module
imports neither torch nor the model modules, so CLIs build their choices and help from it for free.
Adding a kind: one entry here (and the model module it names); see docs/DESIGN.md.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from rsz_train.models.base import RszModel, TaskInfo


def _attribute(path: str) -> Any:
    module, _, name = path.partition(":")
    return getattr(importlib.import_module(module), name)


@dataclass(frozen=True)
class ModelEntry:
    kind: str
    summary: str  # one line: `rsz-train KIND --help`, `rsz-export --model`, `rsz-train demo --model`
    config: str  # "module:Class" of its config dataclass; the defaults are the small CPU model
    builder: str  # "module:function" (config, TaskInfo) -> RszModel
    sampler: str = "random"  # "random" | "class_balanced" (episodic, MCFA)
    uses_captions: bool = False  # batches carry one tokenized caption per image (MSA)
    needs_attributes: bool = False  # the training data must have attributes.txt (DSVA)
    trained: bool = True  # False: bundles from pretrained checkpoints only (clip: rsz-export clip)

    @property
    def config_cls(self) -> type:
        return _attribute(self.config)

    def build(self, config: object, task: TaskInfo) -> RszModel:
        return _attribute(self.builder)(config, task)


MODELS: dict[str, ModelEntry] = {
    entry.kind: entry
    for entry in [
        ModelEntry(
            "dsva",
            "DSVA (ViT mapped to class attributes; classes come from their descriptions).",
            "rsz_train.models.dsva:DSVAConfig",
            "rsz_train.models.dsva:build_dsva",
            needs_attributes=True,
        ),
        ModelEntry(
            "mcfa",
            "MCFA (visual and semantic VAEs with one shared latent space; class-balanced episodes).",
            "rsz_train.models.mcfa:MCFAConfig",
            "rsz_train.models.mcfa:build_mcfa",
            sampler="class_balanced",
        ),
        ModelEntry(
            "msa",
            "MSA (image-text retrieval model; also labels tiles by their class descriptions).",
            "rsz_train.models.msa:MSAConfig",
            "rsz_train.models.msa:build_msa",
            uses_captions=True,
        ),
        ModelEntry(
            "clip",
            "CLIP checkpoints users have (open_clip or Hugging Face): zero-shot by prompt ensembles.",
            "rsz_train.models.clip:ClipConfig",
            "rsz_train.models.clip:build_clip",
            trained=False,
        ),
    ]
}


def model_kinds() -> tuple[str, ...]:
    """Kinds rsz trains (rsz-train commands, rsz-export --model, the demo)."""
    return tuple(kind for kind, entry in MODELS.items() if entry.trained)


def bundle_kinds() -> tuple[str, ...]:
    """Every kind a bundle can be (manifest.model_kind), pretrained-only ones included."""
    return tuple(MODELS)


def model_entry(kind: str) -> ModelEntry:
    if kind not in MODELS:
        raise KeyError(f"unknown model kind {kind!r}; known: {', '.join(MODELS)}")
    return MODELS[kind]


def create_model(kind: str, config: object, task: TaskInfo) -> RszModel:
    return model_entry(kind).build(config, task)
