"""Plain Vision Transformer (fused attention) and loaders for CLIP vision weights from local checkpoints.

The ViT returns all tokens after its final LayerNorm; models pick the CLS token or pool the patch tokens.
CLIP towers are the same network with a LayerNorm before the blocks (`pre_norm`), quick-GELU and no patch
bias, so one class serves both; `load_clip_vision` maps Hugging Face or open_clip weights onto it.
"""

from __future__ import annotations

import json
import math
import zipfile
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from rsz_infer.errors import RszError, first_line

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


class QuickGELU(nn.Module):
    """The GELU approximation OpenAI CLIP was trained with; other activations would change its outputs."""

    def forward(self, x: Tensor) -> Tensor:
        return x * torch.sigmoid(1.702 * x)


def _activation(act: str) -> nn.Module:
    if act == "gelu":
        return nn.GELU()
    if act == "quick_gelu":
        return QuickGELU()
    raise ValueError(f"unknown activation {act!r}; known: gelu, quick_gelu")


class Attention(nn.Module):
    def __init__(self, width: int, heads: int) -> None:
        super().__init__()
        if width % heads:
            raise ValueError(f"width {width} is not divisible by heads {heads}")
        self.heads = heads
        self.qkv = nn.Linear(width, 3 * width)
        self.proj = nn.Linear(width, width)

    def forward(self, x: Tensor) -> Tensor:
        batch, tokens, width = x.shape
        qkv = self.qkv(x).reshape(batch, tokens, 3, self.heads, width // self.heads).permute(2, 0, 3, 1, 4)
        # Fused kernel (flash / memory-efficient on GPU); exports to plain MatMul/Softmax in ONNX.
        out = F.scaled_dot_product_attention(qkv[0], qkv[1], qkv[2])
        return self.proj(out.transpose(1, 2).reshape(batch, tokens, width))


class Mlp(nn.Module):
    def __init__(self, width: int, hidden: int, act: str) -> None:
        super().__init__()
        self.fc1 = nn.Linear(width, hidden)
        self.act = _activation(act)
        self.fc2 = nn.Linear(hidden, width)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc2(self.act(self.fc1(x)))


class Block(nn.Module):
    def __init__(self, width: int, heads: int, mlp_hidden: int, act: str, norm_eps: float) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(width, eps=norm_eps)
        self.attn = Attention(width, heads)
        self.norm2 = nn.LayerNorm(width, eps=norm_eps)
        self.mlp = Mlp(width, mlp_hidden, act)

    def forward(self, x: Tensor) -> Tensor:
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class ViT(nn.Module):
    """Plain ViT: [B,3,H,W] -> tokens [B, 1+N, width] (CLS first) after the final LayerNorm.

    `pre_norm`, `act="quick_gelu"`, `patch_bias=False` and `norm_eps=1e-5` make it a CLIP vision tower.
    `proj` (None unless set, e.g. by `load_clip_vision`) is CLIP's image projection, applied by `project`.
    """

    def __init__(
        self,
        image_size: int = 64,
        patch_size: int = 8,
        width: int = 192,
        depth: int = 4,
        heads: int = 3,
        mlp_ratio: float = 4.0,
        pre_norm: bool = False,
        act: str = "gelu",
        patch_bias: bool = True,
        norm_eps: float = 1e-6,
    ) -> None:
        super().__init__()
        if image_size % patch_size:
            raise ValueError(f"image_size {image_size} is not a multiple of patch_size {patch_size}")
        self.image_size = image_size
        self.patch_size = patch_size
        self.width = width
        self.depth = depth
        self.heads = heads
        self.act = act
        self.grid = (image_size // patch_size, image_size // patch_size)
        self.patch_embed = nn.Conv2d(3, width, patch_size, stride=patch_size, bias=patch_bias)
        self.cls_token = nn.Parameter(torch.zeros(width))
        self.pos_embed = nn.Parameter(torch.zeros(1 + self.grid[0] * self.grid[1], width))
        self.ln_pre = nn.LayerNorm(width, eps=norm_eps) if pre_norm else nn.Identity()
        mlp_hidden = int(round(width * mlp_ratio))
        self.blocks = nn.ModuleList(Block(width, heads, mlp_hidden, act, norm_eps) for _ in range(depth))
        self.norm = nn.LayerNorm(width, eps=norm_eps)
        self.proj: nn.Linear | None = None
        nn.init.trunc_normal_(self.pos_embed, std=0.02)
        nn.init.trunc_normal_(self.cls_token, std=0.02)

    def forward(self, x: Tensor) -> Tensor:
        x = self.patch_embed(x)  # [B, W, h, w]
        grid = (x.shape[-2], x.shape[-1])
        x = x.flatten(2).transpose(1, 2)
        cls = self.cls_token.expand(x.shape[0], 1, -1)
        pos = self.pos_embed
        if grid != self.grid:  # another input size than built for: resample the position grid
            pos = resize_pos_embed(pos, self.grid, grid)
        x = torch.cat([cls, x], dim=1) + pos
        x = self.ln_pre(x)
        for block in self.blocks:
            x = block(x)
        return self.norm(x)

    def project(self, cls_token: Tensor) -> Tensor:
        """CLIP's image projection of the (normed) CLS token; identity when the ViT has none."""
        return cls_token if self.proj is None else self.proj(cls_token)


def resize_pos_embed(pos: Tensor, old_grid: tuple[int, int], new_grid: tuple[int, int]) -> Tensor:
    """[1+h*w, C] position embeddings (CLS first) bicubically resampled to another patch grid."""
    if tuple(old_grid) == tuple(new_grid):
        return pos
    cls, patches = pos[:1], pos[1:]
    patches = patches.reshape(1, old_grid[0], old_grid[1], -1).permute(0, 3, 1, 2)
    patches = F.interpolate(patches, size=new_grid, mode="bicubic", align_corners=False)
    return torch.cat([cls, patches.permute(0, 2, 3, 1).reshape(new_grid[0] * new_grid[1], -1)])


@dataclass(frozen=True)
class ViTConfig:
    image_size: int
    patch_size: int
    width: int
    depth: int
    heads: int
    mlp_ratio: float = 4.0


VIT_CONFIGS: dict[str, ViTConfig] = {
    "vit_tiny": ViTConfig(64, 8, 192, 4, 3),  # the CPU default: fast enough to train on 2 cores
    "vit_small": ViTConfig(224, 16, 384, 12, 6),  # ViT-S/16
    "vit_b32": ViTConfig(224, 32, 768, 12, 12),  # ViT-B/32 (CLIP ViT-B/32 shape)
    "vit_b16": ViTConfig(224, 16, 768, 12, 12),  # ViT-B/16 (CLIP ViT-B/16 shape)
}


def create_vit(name: str, image_size: int | None = None) -> ViT:
    """A randomly initialised ViT by name; `image_size` overrides the default (position grid resized)."""
    if name not in VIT_CONFIGS:
        raise RszError(f"{name}: unknown ViT; known: {', '.join(VIT_CONFIGS)}")
    cfg = VIT_CONFIGS[name]
    size = image_size or cfg.image_size
    if size % cfg.patch_size:
        raise RszError(f"image_size {size}: not a multiple of the {name} patch size {cfg.patch_size}")
    vit = ViT(cfg.image_size, cfg.patch_size, cfg.width, cfg.depth, cfg.heads, cfg.mlp_ratio)
    if size != cfg.image_size:
        _set_image_size(vit, size)
    return vit


def _set_image_size(vit: ViT, size: int) -> None:
    new_grid = (size // vit.patch_size, size // vit.patch_size)
    with torch.no_grad():
        vit.pos_embed = nn.Parameter(resize_pos_embed(vit.pos_embed.data, vit.grid, new_grid))
    vit.grid = new_grid
    vit.image_size = size


# ----------------------------------------------------------------------------------------------------------
# CLIP vision checkpoints


@dataclass
class _ClipCheckpoint:
    """A CLIP vision tower read from disk, already in our ViT's parameter names."""

    state: dict[str, Tensor]
    act: str
    norm_eps: float
    heads: int
    recorded: bool  # act and heads come from the checkpoint's config (HF), not a convention (open_clip)


def _is_torchscript(path: Path) -> bool:
    """TorchScript archives carry a code/ folder (Python source torch.jit.load would run)."""
    if not zipfile.is_zipfile(path):
        return False
    with zipfile.ZipFile(path) as archive:
        return any("/code/" in f"/{name}" for name in archive.namelist())


def _read_tensors(path: Path) -> dict[str, Tensor]:
    """All tensors of a .safetensors / .bin / .pt / .pth file (or of a training checkpoint's state_dict)."""
    if _is_torchscript(path):
        raise RszError(
            f"{path}: a TorchScript archive (OpenAI CLIP .pt) holds code and is never loaded; "
            "use the open_clip .safetensors or a Hugging Face CLIP folder of the same model"
        )
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            return load_file(str(path))
        # weights_only: a checkpoint is plain data; torch refuses any pickled object that is not
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # any reader failure means the file is not a checkpoint we can use
        raise RszError(f"{path}: not a readable checkpoint ({first_line(err, limit=200)})") from None
    if isinstance(obj, dict) and isinstance(obj.get("state_dict"), dict):
        obj = obj["state_dict"]
    if not isinstance(obj, dict) or not all(isinstance(v, Tensor) for v in obj.values()):
        raise RszError(f"{path}: holds no state dict of tensors")
    # DataParallel / DDP training checkpoints prefix every key with "module."
    return {k.removeprefix("module."): v for k, v in obj.items()}


def _take(tensors: dict[str, Tensor], key: str, path: Path) -> Tensor:
    if key not in tensors:
        raise RszError(f"{path}: missing CLIP vision tensor {key!r}")
    return tensors.pop(key)


def _check_all_used(tensors: dict[str, Tensor], prefix: str, path: Path) -> None:
    left = sorted(k for k in tensors if k.startswith(prefix) and not k.endswith("position_ids"))
    if left:
        more = f" (+{len(left) - 3} more)" if len(left) > 3 else ""
        raise RszError(f"{path}: unexpected CLIP vision tensors {', '.join(left[:3])}{more}")


def _convert_open_clip(tensors: dict[str, Tensor], path: Path) -> dict[str, Tensor]:
    """open_clip / OpenAI keys (visual.*) -> our ViT names; every visual.* tensor must be used."""
    p = "visual."
    state = {
        "patch_embed.weight": _take(tensors, p + "conv1.weight", path),
        "cls_token": _take(tensors, p + "class_embedding", path),
        "pos_embed": _take(tensors, p + "positional_embedding", path),
        "ln_pre.weight": _take(tensors, p + "ln_pre.weight", path),
        "ln_pre.bias": _take(tensors, p + "ln_pre.bias", path),
        "norm.weight": _take(tensors, p + "ln_post.weight", path),
        "norm.bias": _take(tensors, p + "ln_post.bias", path),
    }
    if p + "proj" in tensors:
        state["proj.weight"] = tensors.pop(p + "proj").t()  # CLIP computes x @ proj
    depth = _count_blocks(tensors, p + "transformer.resblocks.", path)
    if depth == 0:
        raise RszError(f"{path}: no visual.transformer.resblocks.* tensors (not an open_clip ViT checkpoint)")
    names = {
        "ln_1": "norm1",
        "ln_2": "norm2",
        "attn.in_proj": "attn.qkv",
        "attn.out_proj": "attn.proj",
        "mlp.c_fc": "mlp.fc1",
        "mlp.c_proj": "mlp.fc2",
    }
    for i in range(depth):
        for theirs, ours in names.items():
            for kind in ("weight", "bias"):
                sep = "_" if theirs == "attn.in_proj" else "."
                key = f"{p}transformer.resblocks.{i}.{theirs}{sep}{kind}"
                state[f"blocks.{i}.{ours}.{kind}"] = _take(tensors, key, path)
    _check_all_used(tensors, p, path)
    return state


def _convert_hf(tensors: dict[str, Tensor], path: Path) -> dict[str, Tensor]:
    """Hugging Face CLIPVisionModel / CLIPModel keys -> our ViT names; every vision_model.* tensor used."""
    p = "vision_model."
    state = {
        "patch_embed.weight": _take(tensors, p + "embeddings.patch_embedding.weight", path),
        "cls_token": _take(tensors, p + "embeddings.class_embedding", path),
        "pos_embed": _take(tensors, p + "embeddings.position_embedding.weight", path),
        "ln_pre.weight": _take(tensors, p + "pre_layrnorm.weight", path),  # sic: the HF name has this typo
        "ln_pre.bias": _take(tensors, p + "pre_layrnorm.bias", path),
        "norm.weight": _take(tensors, p + "post_layernorm.weight", path),
        "norm.bias": _take(tensors, p + "post_layernorm.bias", path),
    }
    if "visual_projection.weight" in tensors:  # CLIPModel / CLIPVisionModelWithProjection
        state["proj.weight"] = tensors.pop("visual_projection.weight")
    depth = _count_blocks(tensors, p + "encoder.layers.", path)
    if depth == 0:
        raise RszError(f"{path}: no vision_model.encoder.layers.* tensors (not a CLIP vision checkpoint)")
    for i in range(depth):
        layer = f"{p}encoder.layers.{i}."
        for kind in ("weight", "bias"):
            qkv = [_take(tensors, f"{layer}self_attn.{n}_proj.{kind}", path) for n in ("q", "k", "v")]
            state[f"blocks.{i}.attn.qkv.{kind}"] = torch.cat(qkv)
            for theirs, ours in {
                "self_attn.out_proj": "attn.proj",
                "layer_norm1": "norm1",
                "layer_norm2": "norm2",
                "mlp.fc1": "mlp.fc1",
                "mlp.fc2": "mlp.fc2",
            }.items():
                state[f"blocks.{i}.{ours}.{kind}"] = _take(tensors, f"{layer}{theirs}.{kind}", path)
    _check_all_used(tensors, p, path)
    return state


def _count_blocks(tensors: dict[str, Tensor], prefix: str, path: Path) -> int:
    try:
        indices = {int(k[len(prefix) :].split(".")[0]) for k in tensors if k.startswith(prefix)}
    except ValueError:
        raise RszError(f"{path}: {prefix}* keys are not numbered blocks") from None
    if indices != set(range(len(indices))):
        raise RszError(f"{path}: {prefix}* block numbers are not 0..N-1: {sorted(indices)[:8]}")
    return len(indices)


def _read_clip(path: Path | str) -> _ClipCheckpoint:
    path = Path(path)
    if not path.exists():
        raise RszError(f"{path}: no such CLIP checkpoint")
    if path.is_dir():  # a Hugging Face model folder
        config_file = path / "config.json"
        weights = [path / n for n in ("model.safetensors", "pytorch_model.bin") if (path / n).exists()]
        if not config_file.exists() or not weights:
            raise RszError(f"{path}: a Hugging Face CLIP folder needs config.json and model.safetensors")
        try:
            config = json.loads(config_file.read_text())
        except (OSError, ValueError) as err:
            raise RszError(f"{config_file}: unreadable JSON ({err})") from None
        config = config.get("vision_config", config)  # CLIPModel nests the vision settings
        tensors = _read_tensors(weights[0])
        if not any(k.startswith("vision_model.") for k in tensors):
            raise RszError(f"{weights[0]}: no vision_model.* tensors (not a CLIP vision checkpoint)")
        state = _convert_hf(tensors, weights[0])
        width = state["cls_token"].shape[0]
        heads = int(config.get("num_attention_heads", max(1, width // 64)))
        act = config.get("hidden_act", "quick_gelu")
        eps = float(config.get("layer_norm_eps", 1e-5))
        if act not in ("gelu", "quick_gelu"):
            raise RszError(f"{config_file}: hidden_act {act!r} is not supported (gelu, quick_gelu)")
        return _ClipCheckpoint(state, act, eps, heads, recorded=True)
    tensors = _read_tensors(path)
    if not any(k.startswith("visual.") for k in tensors):
        raise RszError(f"{path}: no visual.* tensors (not an open_clip CLIP checkpoint)")
    state = _convert_open_clip(tensors, path)
    width = state["cls_token"].shape[0]
    # open_clip ViTs use 64-wide heads; OpenAI weights (what RS CLIPs fine-tune) use quick-GELU.
    return _ClipCheckpoint(state, "quick_gelu", 1e-5, max(1, width // 64), recorded=False)


def _shape_of(ckpt: _ClipCheckpoint) -> dict[str, int | float]:
    state = ckpt.state
    width, _, patch, _ = state["patch_embed.weight"].shape
    tokens = state["pos_embed"].shape[0] - 1
    side = math.isqrt(tokens)
    return {
        "image_size": side * patch,
        "patch_size": patch,
        "width": width,
        "depth": sum(1 for k in state if k.endswith("attn.qkv.weight")),
        "heads": ckpt.heads,
        "mlp_ratio": state["blocks.0.mlp.fc1.weight"].shape[0] / width,
    }


def vit_from_clip_checkpoint(
    path: Path | str, image_size: int | None = None, act: str | None = None, heads: int | None = None
) -> ViT:
    """A ViT shaped like the CLIP vision tower in `path` (HF folder or open_clip file), weights loaded.

    open_clip files record neither activation nor head count: `act` (default quick_gelu, as OpenAI's
    weights; LAION-trained towers use "gelu") and `heads` (default width // 64) override them.
    """
    if act not in (None, "gelu", "quick_gelu"):
        raise RszError(f"act={act!r}: expected gelu or quick_gelu")
    ckpt = _read_clip(path)
    if heads:
        ckpt.heads = heads
    shape = _shape_of(ckpt)
    vit = ViT(
        **shape,  # type: ignore[arg-type]
        pre_norm=True,
        act=act or ckpt.act,
        patch_bias=False,
        norm_eps=ckpt.norm_eps,
    )
    _load_state(vit, ckpt, Path(path))
    if image_size and image_size != vit.image_size:
        if image_size % vit.patch_size:
            raise RszError(f"image_size {image_size}: not a multiple of the CLIP patch size {vit.patch_size}")
        _set_image_size(vit, image_size)
    return vit


def load_clip_vision(vit: ViT, path: Path | str) -> ViT:
    """Load CLIP vision weights from a local checkpoint into `vit` (built with pre_norm=True, no patch bias).

    Position embeddings are resampled when `vit` was built for another image size. Returns `vit`.
    """
    ckpt = _read_clip(path)
    if not ckpt.recorded:  # open_clip files say nothing about these: the caller's ViT decides
        ckpt.heads, ckpt.act = vit.heads, vit.act
    shape = _shape_of(ckpt)
    ours = {"patch_size": vit.patch_size, "width": vit.width, "depth": vit.depth, "heads": vit.heads}
    for key, value in ours.items():
        if shape[key] != value:
            raise RszError(f"{path}: CLIP {key} is {shape[key]} but the ViT has {value}")
    if not isinstance(vit.ln_pre, nn.LayerNorm) or vit.patch_embed.bias is not None:
        raise RszError(
            f"{path}: the ViT must be built with pre_norm=True, patch_bias=False to take CLIP weights"
        )
    if vit.act != ckpt.act:
        raise RszError(f"{path}: checkpoint activation is {ckpt.act} but the ViT uses {vit.act}")
    _load_state(vit, ckpt, Path(path))
    return vit


def _load_state(vit: ViT, ckpt: _ClipCheckpoint, path: Path) -> None:
    state = dict(ckpt.state)
    side = math.isqrt(state["pos_embed"].shape[0] - 1)
    state["pos_embed"] = resize_pos_embed(state["pos_embed"].float(), (side, side), vit.grid)
    if "proj.weight" in state:
        out_dim, width = state["proj.weight"].shape
        vit.proj = nn.Linear(width, out_dim, bias=False)
    ours = vit.state_dict()
    for key, value in state.items():
        if key not in ours or ours[key].shape != value.shape:
            want = tuple(ours[key].shape) if key in ours else "nothing"
            raise RszError(f"{path}: tensor {key} has shape {tuple(value.shape)}, the ViT expects {want}")
    vit.load_state_dict({k: v.float() for k, v in state.items()}, strict=True)
    for module in vit.modules():  # the tower was trained with this epsilon
        if isinstance(module, nn.LayerNorm):
            module.eps = ckpt.norm_eps
