"""MCFA: Multi-level Cross-modal Feature Alignment (Liu et al., 2023) for zero-shot scene classification.

Two VAEs, one per modality (visual features of a backbone, semantic descriptors of the classes), share
one latent space. They are trained with reconstruction, cross-reconstruction and distribution alignment
(CADA-VAE) plus cross-instance contrast (visual-visual, visual-semantic, semantic-visual) on
class-balanced episodes. A tile is labelled by the nearest class latent (cosine between the visual
encoder's mean and the semantic encoder's mean), so a new class needs only its descriptor.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from rsz_infer.errors import RszError
from rsz_train.losses import mcfa as losses
from rsz_train.models.backbones import create_resnet, pooled_features
from rsz_train.models.base import ExportGraph, RszModel
from rsz_train.models.registry import ClassSemantics, ModelEntry, TaskInfo, register

SEMANTIC_SOURCES = ("sentence", "glove", "attributes")


@dataclass
class MCFAConfig:
    """MCFA settings; the defaults train in minutes on CPU on the embedded 64 px benchmark."""

    backbone: str = "resnet18"  # any name of rsz_train.models.backbones.create_resnet
    pretrained: str | None = "geoembed"  # geoembed's aerial ResNet-18, None (random) or a checkpoint path
    freeze_backbone: bool = True  # train only the VAEs (fast on CPU); false fine-tunes the backbone too
    semantic_source: str = "sentence"  # class descriptor: "sentence" (MiniLM) | "glove" | "attributes"
    latent_dim: int = 64
    hidden_dim: int = 512
    input_dropout: float = 0.1  # on both VAE inputs: a few training classes must not be memorised
    temperature: float = 0.1  # contrastive temperature; the cosine logit scale is 1 / temperature
    warmup_steps: int = 100  # linear ramp of the KL, cross-reconstruction and alignment weights
    reconstruction_weight: float = 1.0
    cross_reconstruction_weight: float = 1.0
    kl_weight: float = 0.01
    distribution_weight: float = 0.5  # 2-Wasserstein between the visual and semantic Gaussians
    contrast_vv_weight: float = 0.5  # supervised contrast among visual latents
    contrast_vs_weight: float = 1.0  # visual latent vs all class latents (the scoring rule)
    contrast_sv_weight: float = 0.5  # class latent vs the visual latents of the batch


def _mlp(in_dim: int, hidden: int, out_dim: int) -> nn.Sequential:
    return nn.Sequential(nn.Linear(in_dim, hidden), nn.LeakyReLU(0.2), nn.Linear(hidden, out_dim))


def unit_rms(x: torch.Tensor) -> torch.Tensor:
    """Scale each row to unit root-mean-square, so both modalities' reconstruction errors weigh alike
    whatever their dimension or raw scale (ResNet activations vs unit-length sentence vectors)."""
    return F.normalize(x, dim=-1) * math.sqrt(x.shape[-1])


class GaussianEncoder(nn.Module):
    """features [N, F] -> (mu, logvar) [N, latent]."""

    def __init__(self, in_dim: int, hidden: int, latent: int, dropout: float) -> None:
        super().__init__()
        self.dropout = nn.Dropout(dropout)
        self.net = _mlp(in_dim, hidden, 2 * latent)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        mu, logvar = self.net(self.dropout(x)).chunk(2, dim=-1)
        return mu, logvar


class VisualFeatures(nn.Module):
    """Backbone image -> unit-RMS global-average-pooled last stage [B, C]."""

    def __init__(self, backbone: nn.Module) -> None:
        super().__init__()
        self.backbone = backbone

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return unit_rms(pooled_features(self.backbone(images))[-1])


class _MeanEncoder(nn.Module):
    """Export wrapper: features -> the encoder's mean (the latent used for scoring)."""

    def __init__(self, features: nn.Module, encoder: GaussianEncoder) -> None:
        super().__init__()
        self.features, self.encoder = features, encoder

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.encoder(self.features(x))[0]


class _UnitRMS(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return unit_rms(x)


class MCFA(RszModel):
    kind = "mcfa"
    scoring_rule = "cosine"
    class_embedding = "semantic"

    def __init__(self, config: MCFAConfig, task: TaskInfo) -> None:
        super().__init__()
        if config.semantic_source not in SEMANTIC_SOURCES:
            raise RszError(
                f"semantic_source={config.semantic_source!r}: expected one of {', '.join(SEMANTIC_SOURCES)}"
            )
        self.config, self.task = config, task
        self.visual = VisualFeatures(create_resnet(config.backbone, pretrained=config.pretrained))
        if config.freeze_backbone:
            self.visual.backbone.requires_grad_(False)
        visual_dim = self.visual.backbone.stage_channels[-1]
        semantic_dim = {"sentence": 384, "glove": 50, "attributes": len(task.attribute_names)}[
            config.semantic_source
        ]
        if semantic_dim == 0:
            raise RszError("semantic_source='attributes': the task has no attributes")
        h, z, p = config.hidden_dim, config.latent_dim, config.input_dropout
        self.visual_encoder = GaussianEncoder(visual_dim, h, z, p)
        self.semantic_encoder = GaussianEncoder(semantic_dim, h, z, p)
        self.visual_decoder = _mlp(z, h, visual_dim)
        self.semantic_decoder = _mlp(z, h, semantic_dim)
        self.steps_done = 0  # drives the warm-up; restarts with a resumed run, which only re-ramps it

    def train(self, mode: bool = True) -> MCFA:
        super().train(mode)
        if self.config.freeze_backbone:
            self.visual.backbone.eval()  # frozen BatchNorm statistics stay those of the pretrained net
        return self

    # --- the RszModel interface -------------------------------------------------------------------

    def class_inputs(self, semantics: ClassSemantics, device: torch.device | str = "cpu") -> torch.Tensor:
        source = self.config.semantic_source
        matrix = getattr(semantics, source)
        if matrix is None:
            raise RszError(f"semantic_source={source!r}: these class semantics have no {source} vectors")
        return torch.as_tensor(matrix, dtype=torch.float32, device=device)

    def image_features(self, images: torch.Tensor) -> torch.Tensor:
        if self.config.freeze_backbone:
            with torch.no_grad():
                return self.visual(images)
        return self.visual(images)

    def encode_images(self, images: torch.Tensor) -> torch.Tensor:
        return self.visual_encoder(self.image_features(images))[0]

    def encode_classes(self, class_inputs: torch.Tensor) -> torch.Tensor:
        return self.semantic_encoder(unit_rms(class_inputs))[0]

    def logit_scale(self) -> float:
        return 1.0 / self.config.temperature

    def training_losses(self, batch: dict[str, Any]) -> dict[str, torch.Tensor]:
        cfg = self.config
        labels = batch["label"]
        visual = self.image_features(batch["image"])
        all_semantics = unit_rms(batch["class_inputs"])
        semantic = all_semantics[labels]

        mu_v, logvar_v = self.visual_encoder(visual)
        mu_s, logvar_s = self.semantic_encoder(semantic)
        z_v, z_s = losses.reparameterize(mu_v, logvar_v), losses.reparameterize(mu_s, logvar_s)
        target_v, target_s = visual.detach(), semantic

        parts = {
            "reconstruction": losses.reconstruction_loss(self.visual_decoder(z_v), target_v)
            + losses.reconstruction_loss(self.semantic_decoder(z_s), target_s),
            "cross_reconstruction": losses.reconstruction_loss(self.visual_decoder(z_s), target_v)
            + losses.reconstruction_loss(self.semantic_decoder(z_v), target_s),
            "kl": losses.kl_to_standard_normal(mu_v, logvar_v) + losses.kl_to_standard_normal(mu_s, logvar_s),
            "distribution": losses.wasserstein_gaussians(mu_v, logvar_v, mu_s, logvar_s),
        }
        class_mu = self.semantic_encoder(all_semantics)[0]
        class_ids = torch.arange(len(class_mu), device=labels.device)
        present = labels.unique()
        t = cfg.temperature
        parts["contrast_vv"] = losses.supervised_contrastive(mu_v, mu_v, labels, labels, t, exclude_self=True)
        parts["contrast_vs"] = losses.supervised_contrastive(mu_v, class_mu, labels, class_ids, t)
        parts["contrast_sv"] = losses.supervised_contrastive(class_mu[present], mu_v, present, labels, t)

        ramp = min(1.0, (self.steps_done + 1) / max(cfg.warmup_steps, 1))
        if self.training:
            self.steps_done += 1
        weights = {
            "reconstruction": cfg.reconstruction_weight,
            "cross_reconstruction": cfg.cross_reconstruction_weight * ramp,
            "kl": cfg.kl_weight * ramp,
            "distribution": cfg.distribution_weight * ramp,
            "contrast_vv": cfg.contrast_vv_weight,
            "contrast_vs": cfg.contrast_vs_weight,
            "contrast_sv": cfg.contrast_sv_weight,
        }
        parts["loss"] = sum(weights[name] * value for name, value in parts.items())
        return parts

    def export_graphs(self) -> list[ExportGraph]:
        from rsz_train.text import text_export_graph

        if self.config.semantic_source != "sentence":
            raise RszError(
                f"semantic_source={self.config.semantic_source!r}: only 'sentence' models can be exported "
                "(inference derives class semantics from descriptions with MiniLM)"
            )
        size = self.task.image_size
        semantic_dim = self.semantic_encoder.net[0].in_features
        image = ExportGraph(
            role="image",
            module=_MeanEncoder(self.visual, self.visual_encoder).eval(),
            example_inputs=(torch.randn(2, 3, size, size),),
            input_names=["image"],
            output_names=["embedding"],
            dynamic_axes={"image": {0: "batch"}, "embedding": {0: "batch"}},
        )
        semantic = ExportGraph(
            role="semantic",
            module=_MeanEncoder(_UnitRMS(), self.semantic_encoder).eval(),
            example_inputs=(F.normalize(torch.randn(3, semantic_dim), dim=-1),),
            input_names=["semantic"],
            output_names=["embedding"],
            dynamic_axes={"semantic": {0: "classes"}, "embedding": {0: "classes"}},
        )
        return [image, semantic, text_export_graph()]


def build_mcfa(config: MCFAConfig, task: TaskInfo) -> MCFA:
    return MCFA(config, task)


register(ModelEntry("mcfa", MCFAConfig, build_mcfa, sampler="class_balanced"))
