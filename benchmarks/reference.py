"""Reference image graphs at the papers' sizes, with random weights, to time where no trained weights exist.

`ref:NAME` in every benchmark command means one of these. Each is a backbone from
rsz_train.models.backbones plus a small head of the shape its model family exports (docs/DESIGN.md, role
"image"), so the timing is that of the backbone, which dominates:
- DSVA on a ViT (vit_b16, vit_b32 at 224 px; vit_tiny at 64 px for tests): `embedding` [B,A] (global and
  attention-pooled local attribute scores) and `attention_maps` [B,A,h,w].
- MSA on ResNet-50: `embedding` [B,D] and `scales` [B,4,Dm] (one projected vector per stage).
- MCFA on ResNet-18 (resnet_tiny for tests): `embedding` [B,D] (the visual encoder's latent mean).
Weights are random and non-zero (zero-initialised biases are filled too), so no kernel takes a sparse path.
"""

from __future__ import annotations

import tempfile
import warnings
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor, nn

from rsz_infer.errors import RszError
from rsz_train.models.backbones import create_resnet, create_vit


@dataclass(frozen=True)
class ReferenceSpec:
    family: str  # "dsva" | "msa" | "mcfa"
    backbone: str
    image_size: int


REFERENCES: dict[str, ReferenceSpec] = {
    "vit_b16": ReferenceSpec("dsva", "vit_b16", 224),
    "vit_b32": ReferenceSpec("dsva", "vit_b32", 224),
    "vit_tiny": ReferenceSpec("dsva", "vit_tiny", 64),
    "resnet50": ReferenceSpec("msa", "resnet50", 224),
    "resnet18": ReferenceSpec("mcfa", "resnet18", 224),
    "resnet_tiny": ReferenceSpec("mcfa", "resnet_tiny", 64),
}

NUM_ATTRIBUTES = 64  # DSVA attribute count (the synthetic benchmark and RS attribute sets are of this order)
MSA_MODEL_DIM = 256
EMBED_DIM = 256


class DSVAHead(nn.Module):
    """ViT tokens -> attribute scores from the CLS token and from attribute-wise attention over patches."""

    def __init__(self, vit: nn.Module, attributes: int) -> None:
        super().__init__()
        self.vit = vit
        width = vit.width
        self.global_proj = nn.Linear(width, attributes)
        self.attention = nn.Linear(width, attributes)  # one attention query per attribute
        self.prototypes = nn.Parameter(torch.randn(attributes, width) * 0.02)

    def forward(self, image: Tensor) -> tuple[Tensor, Tensor]:
        tokens = self.vit(image)
        cls, patches = tokens[:, 0], tokens[:, 1:]
        attn = self.attention(patches).softmax(dim=1)  # [B, N, A], over patches
        local = torch.einsum("bna,bnw->baw", attn, patches)
        local_scores = (local * self.prototypes).sum(-1)
        embedding = 0.5 * (self.global_proj(cls) + local_scores)
        h, w = image.shape[-2] // self.vit.patch_size, image.shape[-1] // self.vit.patch_size
        maps = attn.transpose(1, 2).reshape(image.shape[0], -1, h, w)
        return embedding, maps


class MSAHead(nn.Module):
    """ResNet stages -> one projected vector per stage (`scales`) and a global embedding."""

    def __init__(self, resnet: nn.Module, model_dim: int, embed_dim: int) -> None:
        super().__init__()
        self.resnet = resnet
        self.scale_proj = nn.ModuleList(nn.Linear(c, model_dim) for c in resnet.stage_channels)
        self.embed = nn.Linear(model_dim, embed_dim)

    def forward(self, image: Tensor) -> tuple[Tensor, Tensor]:
        stages = self.resnet(image)
        scales = torch.stack([p(s.mean(dim=(2, 3))) for p, s in zip(self.scale_proj, stages)], dim=1)
        return self.embed(scales.mean(dim=1)), scales


class MCFAHead(nn.Module):
    """ResNet last stage -> pooled feature -> visual VAE encoder mean."""

    def __init__(self, resnet: nn.Module, hidden: int, embed_dim: int) -> None:
        super().__init__()
        self.resnet = resnet
        self.encoder = nn.Sequential(
            nn.Linear(resnet.stage_channels[-1], hidden), nn.ReLU(), nn.Linear(hidden, embed_dim)
        )

    def forward(self, image: Tensor) -> Tensor:
        return self.encoder(self.resnet(image)[-1].mean(dim=(2, 3)))


@dataclass
class ReferenceModel:
    name: str
    family: str
    module: nn.Module  # eval mode, fp32, CPU
    image_size: int
    output_names: list[str]
    input_names: tuple[str, ...] = ("image",)

    def example(self, batch: int = 1) -> Tensor:
        return torch.randn(batch, 3, self.image_size, self.image_size)


def reference_names() -> list[str]:
    return list(REFERENCES)


def build_reference(name: str, image_size: int | None = None, seed: int = 0) -> ReferenceModel:
    """`name` is a key of REFERENCES (with or without the "ref:" prefix)."""
    name = name.removeprefix("ref:")
    if name not in REFERENCES:
        raise RszError(
            f"ref:{name}: unknown reference model; known: {', '.join('ref:' + n for n in REFERENCES)}"
        )
    spec = REFERENCES[name]
    size = image_size or spec.image_size
    torch.manual_seed(seed)
    if spec.family == "dsva":
        module: nn.Module = DSVAHead(create_vit(spec.backbone, size), NUM_ATTRIBUTES)
        outputs = ["embedding", "attention_maps"]
    elif spec.family == "msa":
        module = MSAHead(create_resnet(spec.backbone), MSA_MODEL_DIM, EMBED_DIM)
        outputs = ["embedding", "scales"]
    else:
        module = MCFAHead(create_resnet(spec.backbone), 512, EMBED_DIM)
        outputs = ["embedding"]
    _fill_zero_parameters(module)
    return ReferenceModel(f"ref:{name}", spec.family, module.eval(), size, outputs)


def _fill_zero_parameters(module: nn.Module) -> None:
    """Zero-initialised tensors (biases, LayerNorm shifts) get small random values: random, non-zero."""
    with torch.no_grad():
        for p in module.parameters():
            if not p.any():
                p.normal_(0.0, 0.02)


def export_reference_onnx(ref: ReferenceModel, out_dir: Path | str | None = None) -> Path:
    """The reference's FP32 image graph as ONNX (dynamic batch), in out_dir or a fresh temporary folder."""
    out = Path(out_dir) if out_dir else Path(tempfile.mkdtemp(prefix="rsz-bench-"))
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"{ref.name.removeprefix('ref:')}_image.onnx"
    dynamic = {"image": {0: "batch"}, **{n: {0: "batch"} for n in ref.output_names}}
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")  # tracer and deprecation chatter of the TorchScript exporter
        torch.onnx.export(
            ref.module,
            (ref.example(2),),
            str(path),
            input_names=list(ref.input_names),
            output_names=ref.output_names,
            dynamic_axes=dynamic,
            opset_version=17,
            dynamo=False,
        )
    return path
