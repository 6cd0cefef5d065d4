"""MSA: Multi-Scale Alignment for remote-sensing image-text retrieval (and zero-shot labelling by prompts).

Image tower: the pooled feature of every ResNet stage, projected per scale to a common width Dm
(`scales` [B, S, Dm]) and fused by a learned per-image gate into the embedding. Text tower: MiniLM,
fine-tuned (all or the last N layers), pooled and projected into the same embedding space; its token
states projected to Dm are the `tokens` [B, L, Dm].
MSCMAT (multi-scale cross-modal alignment): each scale attends, as one query, to the text tokens (padding
masked out) and is compared with what it read; this gives a match matrix per scale for the whole batch
[S, B_img, B_txt] in one batched computation, trained per scale with InfoNCE, kept consistent across
scales by KL to the largest scale, and exported as a reranker of (image, text) pairs.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from rsz_infer.errors import RszError
from rsz_infer.preprocess import IMAGENET_MEAN, IMAGENET_STD
from rsz_infer.tokenizer import Tokenizer
from rsz_train.config import ABOVE_ZERO, ZERO_OR_MORE
from rsz_train.losses import msa as losses
from rsz_train.models.backbones import GEOEMBED_MEAN, GEOEMBED_STD, create_resnet, pooled_features
from rsz_train.models.base import ClassSemantics, ExportGraph, RszModel, TaskInfo
from rsz_train.models.frozen import FrozenBackboneMixin, FrozenFeatureCache

TEXT_POOLINGS = ("mean", "cls")


@dataclass
class MSAConfig:
    """MSA settings; the defaults train in minutes on CPU on the embedded 64 px benchmark."""

    train_defaults: ClassVar[dict] = {"epochs": 4, "lr": 5e-4}  # chosen on validation mR

    backbone: str = "resnet18"  # resnet18 (geoembed aerial weights), resnet50, ... (backbones.create_resnet)
    pretrained: str | None = "geoembed"  # None = random init, or a torchvision checkpoint path
    # Paper size (msa_resnet50): a backbone without pretrained weights is an error, since MSA's tables come
    # from pretrained towers; `rsz-train msa --allow-random-init` turns it off for a deliberate run.
    require_pretrained: bool = False
    freeze_backbone: bool = True  # true trains only the scale projections (fast on CPU)
    cache_features: bool = True  # frozen backbone: memoise features of identical input tiles (CPU speed)
    model_dim: int = 256  # Dm: the common width of scales and tokens (cross-attention)
    embed_dim: int = 256  # D: the retrieval / classification embedding
    text_pooling: str = "mean"  # "mean" over the attention mask | "cls"
    text_trainable_layers: int = 2  # fine-tune the last N MiniLM layers; -1 = all (with the embeddings)
    text_lr_scale: float = 0.1  # text tower lr / base lr, where the loop uses model.parameter_groups(lr)
    max_text_length: int = 32
    text_prompt: str = "a satellite image of {description}"  # class prompt, with {name} and {description}
    init_logit_scale: float = 10.0  # learnable scale of the global cosine similarities
    margin: float = 0.2  # triplet margin on cosine similarities
    temperature: float = 0.1  # of the per-scale match matrices (alignment and consistency)
    triplet_weight: float = 1.0
    contrastive_weight: float = 1.0  # symmetric InfoNCE on the global embeddings with the logit scale
    alignment_weight: float = 0.5  # per-scale InfoNCE on the MSCMAT match matrices
    consistency_weight: float = 0.2  # KL of each smaller scale to the largest
    class_weight: float = 0.0  # optional cross-entropy against the training classes' prompts
    # The match head: "cosine" (rsz: one attention head, cosine of the scale feature and what it read) or
    # "mscmat" (yr666666/MSA model.py Multi_img_crossatt: multi-head cross-attention per scale after
    # LayerNorms, then sigmoid(fc((read + global text token) * scale feature)): the global text term).
    matcher: str = "cosine"
    matcher_heads: int = 8  # "mscmat" only; must divide model_dim
    # "rsz": InfoNCE both ways per scale / temperature, KL(largest || smaller) both ways (losses/msa.py);
    # "authors": retrieval.py's forms: per-scale cross-entropy image -> text summed over scales, and
    # KL(smaller || largest) over images per text at consistency_temperature (see losses/msa.py).
    loss_form: str = "rsz"
    consistency_temperature: float = 2.0  # loss_form "authors" (retrieval.py: element_neig_rank_loss(..., 2))

    # rsz_train.config.check_range, when the config is read
    ranges: ClassVar[dict] = {
        "model_dim": ABOVE_ZERO,
        "embed_dim": ABOVE_ZERO,
        "text_trainable_layers": (-1, True, None),  # -1 = all
        "text_lr_scale": ZERO_OR_MORE,
        "max_text_length": ABOVE_ZERO,
        "init_logit_scale": ABOVE_ZERO,  # its log is the parameter
        "margin": ZERO_OR_MORE,
        "temperature": ABOVE_ZERO,
        "triplet_weight": ZERO_OR_MORE,
        "contrastive_weight": ZERO_OR_MORE,
        "alignment_weight": ZERO_OR_MORE,
        "consistency_weight": ZERO_OR_MORE,
        "class_weight": ZERO_OR_MORE,
        "matcher_heads": ABOVE_ZERO,  # must also divide model_dim (checked where the model is built)
        "consistency_temperature": ABOVE_ZERO,
    }


class MultiScaleImage(nn.Module):
    """image [B,3,H,W] -> (embedding [B,D], scales [B,S,Dm]): per-stage pooled features, projected and
    fused by a softmax gate over scales computed from each image's own scale features."""

    def __init__(self, backbone: nn.Module, model_dim: int, embed_dim: int, freeze_backbone: bool) -> None:
        super().__init__()
        self.backbone, self.freeze_backbone = backbone, freeze_backbone
        self.scale_projections = nn.ModuleList(
            nn.Sequential(nn.LayerNorm(c), nn.Linear(c, model_dim)) for c in backbone.stage_channels
        )
        self.gate = nn.Linear(model_dim, 1)
        self.output = nn.Linear(model_dim, embed_dim)

    def pooled(self, images: torch.Tensor) -> torch.Tensor:
        """Per-stage pooled backbone features, concatenated [B, sum C] (what the feature cache keeps)."""
        with torch.set_grad_enabled(torch.is_grad_enabled() and not self.freeze_backbone):
            return torch.cat(pooled_features(self.backbone(images)), dim=1)

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.from_pooled(self.pooled(images))

    def from_pooled(self, pooled: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        stages = pooled.split(self.backbone.stage_channels, dim=1)
        scales = torch.stack([proj(p) for proj, p in zip(self.scale_projections, stages)], dim=1)
        gates = torch.softmax(self.gate(scales).squeeze(-1), dim=1)
        fused = (gates.unsqueeze(-1) * scales).sum(dim=1)
        return self.output(fused), scales


class TextTower(nn.Module):
    """input_ids, attention_mask [B,L] -> (embedding [B,D], tokens [B,L,Dm])."""

    def __init__(self, encoder: nn.Module, pooling: str, model_dim: int, embed_dim: int) -> None:
        super().__init__()
        self.encoder, self.pooling = encoder, pooling
        hidden = encoder.hidden_size
        self.token_projection = nn.Linear(hidden, model_dim)
        self.output = nn.Linear(hidden, embed_dim)

    def forward(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        mean_pooled, states = self.encoder.forward_tokens(input_ids, attention_mask)
        pooled = mean_pooled if self.pooling == "mean" else states[:, 0]
        return self.output(pooled), self.token_projection(states)


class MultiScaleCrossAttention(nn.Module):
    """MSCMAT: per scale, one query (the image's scale feature) attends to the text tokens; the match is
    the cosine between the scale feature and what it read. Padded tokens get no attention weight."""

    def __init__(self, model_dim: int) -> None:
        super().__init__()
        self.query = nn.Linear(model_dim, model_dim)
        self.key = nn.Linear(model_dim, model_dim)
        self.value = nn.Linear(model_dim, model_dim)

    def _keys_values(self, tokens: torch.Tensor, attention_mask: torch.Tensor) -> tuple[torch.Tensor, ...]:
        # An additive -1e4 bias (not -inf, not a boolean select) zeroes padded weights in float32 and
        # float16 alike and exports as plain arithmetic.
        padding_bias = (attention_mask.to(tokens.dtype) - 1.0) * 1e4
        return self.key(tokens) / math.sqrt(tokens.shape[-1]), self.value(tokens), padding_bias

    def match_matrix(
        self, scales: torch.Tensor, tokens: torch.Tensor, attention_mask: torch.Tensor
    ) -> torch.Tensor:
        """Every image with every text: scales [B,S,Dm], tokens [T,L,Dm], mask [T,L] -> [S,B,T]."""
        keys, values, bias = self._keys_values(tokens, attention_mask)
        weights = torch.softmax(torch.einsum("bsd,tld->sbtl", self.query(scales), keys) + bias, dim=-1)
        read = F.normalize(torch.einsum("sbtl,tld->sbtd", weights, values), dim=-1)
        return torch.einsum("sbtd,bsd->sbt", read, F.normalize(scales, dim=-1))

    def paired(
        self, scales: torch.Tensor, tokens: torch.Tensor, attention_mask: torch.Tensor
    ) -> torch.Tensor:
        """Image b with text b only: scales [B,S,Dm], tokens [B,L,Dm], mask [B,L] -> [S,B]."""
        keys, values, bias = self._keys_values(tokens, attention_mask)
        weights = torch.softmax(torch.einsum("bsd,bld->sbl", self.query(scales), keys) + bias[None], dim=-1)
        read = F.normalize(torch.einsum("sbl,bld->sbd", weights, values), dim=-1)
        return (read * F.normalize(scales, dim=-1).transpose(0, 1)).sum(dim=-1)

    def forward(
        self, scales: torch.Tensor, tokens: torch.Tensor, attention_mask: torch.Tensor
    ) -> torch.Tensor:
        """The rerank score [B] of each pair: the paired match averaged over scales."""
        return self.paired(scales, tokens, attention_mask).mean(dim=0)


class MSCMATMatcher(nn.Module):
    """The authors' MSCMAT (yr666666/MSA model.py, Multi_img_crossatt.forward): per scale s, the image's
    scale feature (one query, LayerNorm) reads the text tokens (LayerNorm) with multi-head attention; the
    match is sigmoid(fc_s((read + text_cls) * scale_feature)) in (0, 1), text_cls being the text's first
    (CLS) token: the global text term. Padded tokens get no attention weight (an additive -1e4)."""

    def __init__(self, model_dim: int, num_scales: int, heads: int) -> None:
        super().__init__()
        if model_dim % heads:
            raise RszError(f"model.matcher_heads {heads}: must divide model.model_dim {model_dim}")
        self.image_norm, self.text_norm = nn.LayerNorm(model_dim), nn.LayerNorm(model_dim)
        self.attention = nn.ModuleList(
            nn.MultiheadAttention(model_dim, heads, batch_first=True) for _ in range(num_scales)
        )
        self.match = nn.ModuleList(nn.Linear(model_dim, 1) for _ in range(num_scales))

    def _read(
        self, s: int, queries: torch.Tensor, tokens: torch.Tensor, attention_mask: torch.Tensor
    ) -> torch.Tensor:
        """queries [T, Q, Dm] of scale s read texts [T, L, Dm] -> [T, Q, Dm]. The keys are the tokens after
        the first (CLS) one, as the authors' `sequence_outputs[:, 1:, :]`; the CLS token is the global
        term."""
        keys = self.text_norm(tokens[:, 1:])
        bias = (attention_mask[:, 1:].to(tokens.dtype) - 1.0) * 1e4  # [T, L - 1]
        mask = bias[:, None, :].expand(-1, queries.shape[1], -1)
        mask = mask.repeat_interleave(self.attention[s].num_heads, dim=0)  # [T * heads, Q, L]
        return self.attention[s](self.image_norm(queries), keys, keys, attn_mask=mask, need_weights=False)[0]

    def match_matrix(
        self, scales: torch.Tensor, tokens: torch.Tensor, attention_mask: torch.Tensor
    ) -> torch.Tensor:
        """Every image with every text: scales [B,S,Dm], tokens [T,L,Dm], mask [T,L] -> [S,B,T]."""
        out = []
        for s in range(scales.shape[1]):
            queries = scales[None, :, s].expand(tokens.shape[0], -1, -1)  # [T, B, Dm]
            read = self._read(s, queries, tokens, attention_mask)  # [T, B, Dm]
            joint = (read + tokens[:, None, 0]) * queries
            out.append(torch.sigmoid(self.match[s](joint)).squeeze(-1).T)  # [B, T]
        return torch.stack(out)

    def paired(
        self, scales: torch.Tensor, tokens: torch.Tensor, attention_mask: torch.Tensor
    ) -> torch.Tensor:
        """Image b with text b only -> [S, B]."""
        out = []
        for s in range(scales.shape[1]):
            queries = scales[:, s : s + 1]  # [B, 1, Dm]
            read = self._read(s, queries, tokens, attention_mask)
            joint = (read + tokens[:, :1]) * queries
            out.append(torch.sigmoid(self.match[s](joint))[:, 0, 0])
        return torch.stack(out)

    def forward(
        self, scales: torch.Tensor, tokens: torch.Tensor, attention_mask: torch.Tensor
    ) -> torch.Tensor:
        """The rerank score [B] of each pair: the paired match averaged over scales."""
        return self.paired(scales, tokens, attention_mask).mean(dim=0)


MATCHERS = ("cosine", "mscmat")
LOSS_FORMS = ("rsz", "authors")


def _set_text_trainable(encoder: nn.Module, last_layers: int) -> None:
    """Freeze MiniLM except its last `last_layers` transformer layers (-1: train everything)."""
    if last_layers < 0:
        encoder.requires_grad_(True)
        return
    encoder.requires_grad_(False)
    layers = encoder.transformer.encoder.layer
    for layer in list(layers)[len(layers) - last_layers :] if last_layers else []:
        layer.requires_grad_(True)


class MSA(FrozenBackboneMixin, RszModel):
    kind = "msa"
    scoring_rule = "cosine"
    class_embedding = "text"

    def __init__(self, config: MSAConfig, task: TaskInfo) -> None:
        from rsz_train.text import load_minilm, minilm_tokenizer_json

        super().__init__()
        if config.text_pooling not in TEXT_POOLINGS:
            raise RszError(
                f"text_pooling={config.text_pooling!r}: expected one of {', '.join(TEXT_POOLINGS)}"
            )
        _check_prompt(config.text_prompt)
        self.config, self.task = config, task
        if config.require_pretrained and not config.pretrained:
            raise RszError(
                f"model.pretrained is not set: the {config.backbone} backbone would start from random "
                "weights "
                "(give model.pretrained: /path/to/resnet.pth, or --allow-random-init)"
            )
        backbone = create_resnet(config.backbone, pretrained=config.pretrained)
        # The preprocessing the backbone was trained with (rsz_train.runs.preprocess_spec reads these).
        geoembed = config.pretrained == "geoembed"
        self.image_mean = GEOEMBED_MEAN if geoembed else IMAGENET_MEAN
        self.image_std = GEOEMBED_STD if geoembed else IMAGENET_STD
        if config.freeze_backbone:
            backbone.requires_grad_(False)
        self.image = MultiScaleImage(backbone, config.model_dim, config.embed_dim, config.freeze_backbone)
        caching = config.freeze_backbone and config.cache_features
        self.feature_cache = FrozenFeatureCache() if caching else None
        encoder, _ = load_minilm()
        _set_text_trainable(encoder, config.text_trainable_layers)
        self.text = TextTower(encoder, config.text_pooling, config.model_dim, config.embed_dim)
        if config.matcher not in MATCHERS:
            raise RszError(f"model.matcher {config.matcher!r}: expected {' or '.join(MATCHERS)}")
        if config.loss_form not in LOSS_FORMS:
            raise RszError(f"model.loss_form {config.loss_form!r}: expected {' or '.join(LOSS_FORMS)}")
        self.match_head = (
            MultiScaleCrossAttention(config.model_dim)
            if config.matcher == "cosine"
            else MSCMATMatcher(config.model_dim, len(backbone.stage_channels), config.matcher_heads)
        )
        self.log_logit_scale = nn.Parameter(torch.tensor(math.log(config.init_logit_scale)))
        self.tokenizer = Tokenizer(minilm_tokenizer_json(), max_length=config.max_text_length)

    def frozen_backbone(self) -> nn.Module | None:
        return self.image.backbone if self.config.freeze_backbone else None

    def image_outputs(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(embedding [B,D], scales [B,S,Dm]); a frozen backbone's features come from the cache."""
        if self.feature_cache is None:
            return self.image(images)
        with torch.no_grad():
            pooled = self.feature_cache(self.image.pooled, images)
        return self.image.from_pooled(pooled)

    def parameter_groups(self, lr: float) -> list[dict]:
        """Optimizer groups: the pretrained text tower learns text_lr_scale times slower than the rest
        (Adam is invariant to gradient scale, so this needs its own group)."""
        text_params = {id(p) for p in self.text.encoder.parameters()}
        trainable = [p for p in self.parameters() if p.requires_grad]
        return [
            {"params": [p for p in trainable if id(p) not in text_params], "lr": lr},
            {"params": [p for p in trainable if id(p) in text_params], "lr": lr * self.config.text_lr_scale},
        ]

    # --- the RszModel interface -------------------------------------------------------------------

    def tokenize(self, texts: list[str]) -> dict[str, torch.Tensor]:
        return {name: torch.from_numpy(array) for name, array in self.tokenizer.encode(list(texts)).items()}

    def class_prompts(self, semantics: ClassSemantics) -> list[str]:
        prompt = self.config.text_prompt
        return [prompt.format(name=n, description=d) for n, d in zip(semantics.names, semantics.descriptions)]

    def class_inputs(
        self, semantics: ClassSemantics, device: torch.device | str = "cpu"
    ) -> dict[str, torch.Tensor]:
        return {k: v.to(device) for k, v in self.tokenize(self.class_prompts(semantics)).items()}

    def encode_images(self, images: torch.Tensor) -> torch.Tensor:
        return self.image_outputs(images)[0]

    def encode_classes(self, class_inputs: dict[str, torch.Tensor], batch_size: int = 256) -> torch.Tensor:
        """Token batch (prompts or captions) -> text embeddings [N, D], in chunks to bound memory."""
        ids, mask = class_inputs["input_ids"], class_inputs["attention_mask"]
        chunks = [
            self.text(ids[i : i + batch_size], mask[i : i + batch_size])[0]
            for i in range(0, len(ids), batch_size)
        ]
        return torch.cat(chunks) if chunks else ids.new_zeros((0, self.config.embed_dim), dtype=torch.float32)

    def logit_scale(self) -> float:
        return float(self.log_logit_scale.detach().exp())

    def match_matrix(self, images: torch.Tensor, class_inputs: dict[str, torch.Tensor]) -> torch.Tensor:
        """MSCMAT match of every image with every text [S, B_img, B_txt] (evaluation / reranking)."""
        _, scales = self.image_outputs(images)
        _, tokens = self.text(class_inputs["input_ids"], class_inputs["attention_mask"])
        return self.match_head.match_matrix(scales, tokens, class_inputs["attention_mask"])

    def training_losses(self, batch: dict[str, Any]) -> dict[str, torch.Tensor]:
        cfg = self.config
        ids, mask = batch["input_ids"], batch["attention_mask"]
        image_emb, scales = self.image_outputs(batch["image"])
        text_emb, tokens = self.text(ids, mask)
        # Two identical captions in one batch are not negatives of each other.
        duplicates = (ids[:, None, :] == ids[None, :, :]).all(dim=-1)
        similarity = F.normalize(image_emb, dim=-1) @ F.normalize(text_emb, dim=-1).T
        scale = self.log_logit_scale.clamp(max=math.log(100.0)).exp()
        match = self.match_head.match_matrix(scales, tokens, mask)
        parts = {
            "triplet": losses.triplet_hardest_negative(similarity, cfg.margin, duplicates),
            "contrastive": losses.info_nce_both_ways(scale * similarity, duplicates),
        }
        if cfg.loss_form == "authors":
            parts["alignment"] = losses.authors_scale_alignment(match)
            parts["consistency"] = losses.authors_cross_scale_consistency(match, cfg.consistency_temperature)
        else:
            parts["alignment"] = losses.scale_alignment_loss(match, cfg.temperature, duplicates)
            parts["consistency"] = losses.cross_scale_consistency(match, cfg.temperature, duplicates)
        weights = {
            "triplet": cfg.triplet_weight,
            "contrastive": cfg.contrastive_weight,
            "alignment": cfg.alignment_weight,
            "consistency": cfg.consistency_weight,
        }
        if cfg.class_weight > 0 and "class_inputs" in batch:
            class_emb = F.normalize(self.encode_classes(batch["class_inputs"]), dim=-1)
            logits = scale * F.normalize(image_emb, dim=-1) @ class_emb.T
            parts["class"] = F.cross_entropy(logits, batch["label"])
            weights["class"] = cfg.class_weight
        parts["loss"] = sum(weights[name] * value for name, value in parts.items())
        return parts

    def export_graphs(self) -> list[ExportGraph]:
        self.eval()
        size, dm = self.task.image_size, self.config.model_dim
        example_text = self.tokenize(["a satellite image of an airport", "dense residential area"])
        ids, mask = example_text["input_ids"], example_text["attention_mask"]
        batch_seq = {0: "batch", 1: "seq"}
        image = ExportGraph(
            role="image",
            module=self.image,
            example_inputs=(torch.randn(2, 3, size, size),),
            input_names=["image"],
            output_names=["embedding", "scales"],
            dynamic_axes={"image": {0: "batch"}, "embedding": {0: "batch"}, "scales": {0: "batch"}},
        )
        text = ExportGraph(
            role="text",
            module=self.text,
            example_inputs=(ids, mask),
            input_names=["input_ids", "attention_mask"],
            output_names=["embedding", "tokens"],
            dynamic_axes={
                "input_ids": batch_seq,
                "attention_mask": batch_seq,
                "embedding": {0: "batch"},
                "tokens": batch_seq,
            },
        )
        num_scales = len(self.image.scale_projections)
        rerank = ExportGraph(
            role="rerank",
            module=self.match_head,
            example_inputs=(torch.randn(2, num_scales, dm), torch.randn(2, ids.shape[1], dm), mask),
            input_names=["scales", "tokens", "attention_mask"],
            output_names=["score"],
            dynamic_axes={
                "scales": {0: "batch"},
                "tokens": batch_seq,
                "attention_mask": batch_seq,
                "score": {0: "batch"},
            },
        )
        return [image, text, rerank]


def _check_prompt(prompt: str) -> None:
    try:
        prompt.format(name="x", description="y")
    except (KeyError, IndexError, ValueError) as err:
        raise RszError(
            f"text_prompt={prompt!r}: only {{name}} and {{description}} may appear ({err})"
        ) from None


def build_msa(config: MSAConfig, task: TaskInfo) -> MSA:
    return MSA(config, task)
