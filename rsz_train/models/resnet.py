"""ResNets that return their four stage feature maps, and the aerial ResNet-18 weights of PyPI `geoembed`.

Module names follow torchvision's ResNet (conv1, bn1, layer1.0.conv1, ..., downsample.0/1), so a
torchvision state dict loads as is (its fc is ignored).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from rsz_infer.errors import RszError

# geoembed's own preprocessing (geoembed.preprocess.preprocess): RGB / 255, then (x - 0.5) / 0.5.
GEOEMBED_MEAN = (0.5, 0.5, 0.5)
GEOEMBED_STD = (0.5, 0.5, 0.5)
GEOEMBED_IMAGE_SIZE = 128  # the V3 ResNet-18's native tile size (z=20 web-mercator, about 38 m)


class BasicBlock(nn.Module):
    expansion = 1

    def __init__(self, in_ch: int, ch: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_ch, ch, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(ch)
        self.conv2 = nn.Conv2d(ch, ch, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(ch)
        self.downsample = _shortcut(in_ch, ch, stride)

    def forward(self, x: Tensor) -> Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + (x if self.downsample is None else self.downsample(x)))


class Bottleneck(nn.Module):
    expansion = 4

    def __init__(self, in_ch: int, ch: int, stride: int) -> None:
        super().__init__()
        out_ch = ch * self.expansion
        self.conv1 = nn.Conv2d(in_ch, ch, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(ch)
        self.conv2 = nn.Conv2d(ch, ch, 3, stride, 1, bias=False)  # stride on the 3x3, as torchvision v1.5
        self.bn2 = nn.BatchNorm2d(ch)
        self.conv3 = nn.Conv2d(ch, out_ch, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(out_ch)
        self.downsample = _shortcut(in_ch, out_ch, stride)

    def forward(self, x: Tensor) -> Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = F.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return F.relu(out + (x if self.downsample is None else self.downsample(x)))


def _shortcut(in_ch: int, out_ch: int, stride: int) -> nn.Sequential | None:
    if stride == 1 and in_ch == out_ch:
        return None
    return nn.Sequential(nn.Conv2d(in_ch, out_ch, 1, stride, bias=False), nn.BatchNorm2d(out_ch))


class GeoEmbedHead(nn.Module):
    """geoembed V3's embedding head: average-pool to pool x pool, flatten (C, y, x), linear, L2-normalise."""

    def __init__(self, in_ch: int, pool_size: int, embed_dim: int) -> None:
        super().__init__()
        self.pool_size = pool_size
        self.fc = nn.Linear(in_ch * pool_size * pool_size, embed_dim)

    def forward(self, last_stage: Tensor) -> Tensor:
        pooled = F.adaptive_avg_pool2d(last_stage, self.pool_size)
        return F.normalize(self.fc(pooled.flatten(1)), dim=-1, eps=1e-8)


class ResNetStages(nn.Module):
    """A ResNet without its classifier: [B,3,H,W] -> the four stage maps (strides 4..32, or 1..8 for `cifar`).

    stem="imagenet": 7x7/2 conv + 3x3/2 max-pool (torchvision). stem="cifar": one 3x3/1 conv, no pooling
    (the geoembed aerial ResNet-18, trained on 128 px tiles). `head` is an optional embedding head on the
    last stage (set by the geoembed weights); `embed(x)` runs it.
    """

    def __init__(
        self,
        block: str = "basic",
        layers: tuple[int, ...] = (2, 2, 2, 2),
        base: int = 64,
        stem: str = "imagenet",
    ) -> None:
        super().__init__()
        block_cls = {"basic": BasicBlock, "bottleneck": Bottleneck}[block]
        self.stem = stem
        if stem == "imagenet":
            self.conv1 = nn.Conv2d(3, base, 7, 2, 3, bias=False)
        elif stem == "cifar":
            self.conv1 = nn.Conv2d(3, base, 3, 1, 1, bias=False)
        else:
            raise ValueError(f"unknown stem {stem!r}; known: imagenet, cifar")
        self.bn1 = nn.BatchNorm2d(base)
        in_ch = base
        self.stage_channels: list[int] = []
        for i, count in enumerate(layers):
            ch = base * 2**i
            blocks = []
            for j in range(count):
                stride = 2 if i > 0 and j == 0 else 1  # each stage after the first halves the map once
                blocks.append(block_cls(in_ch, ch, stride))
                in_ch = ch * block_cls.expansion
            self.add_module(f"layer{i + 1}", nn.Sequential(*blocks))
            self.stage_channels.append(in_ch)
        self.head: nn.Module | None = None
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, x: Tensor) -> list[Tensor]:
        x = F.relu(self.bn1(self.conv1(x)))
        if self.stem == "imagenet":
            x = F.max_pool2d(x, 3, 2, 1)
        stages = []
        for layer in (self.layer1, self.layer2, self.layer3, self.layer4):
            x = layer(x)
            stages.append(x)
        return stages

    def embed(self, x: Tensor) -> Tensor:
        """The head's embedding of `x` (geoembed: [B, 256], unit length)."""
        if self.head is None:
            raise RuntimeError("this ResNet has no embedding head")
        return self.head(self.forward(x)[-1])


def pooled_features(stages: list[Tensor]) -> list[Tensor]:
    """Global average pool of each stage map: [B, C_i, h, w] -> [B, C_i]."""
    return [s.mean(dim=(2, 3)) for s in stages]


@dataclass(frozen=True)
class ResNetConfig:
    block: str
    layers: tuple[int, ...]
    base: int = 64


RESNET_CONFIGS: dict[str, ResNetConfig] = {
    "resnet_tiny": ResNetConfig("basic", (1, 1, 1, 1), 16),  # for fast tests: channels 16..128
    "resnet18": ResNetConfig("basic", (2, 2, 2, 2)),
    "resnet34": ResNetConfig("basic", (3, 4, 6, 3)),
    "resnet50": ResNetConfig("bottleneck", (3, 4, 6, 3)),
}


def create_resnet(name: str, pretrained: str | None = None) -> ResNetStages:
    """A ResNet by name. `pretrained`: None (random), "geoembed" (resnet18 only: the aerial V3 weights of
    PyPI geoembed, CIFAR stem, with its 256-d head), or a path to a torchvision-style state dict file."""
    if name not in RESNET_CONFIGS:
        raise RszError(f"{name}: unknown ResNet; known: {', '.join(RESNET_CONFIGS)}")
    cfg = RESNET_CONFIGS[name]
    if pretrained == "geoembed":
        if name != "resnet18":
            raise RszError(f"{name}: geoembed weights exist for resnet18 only")
        return load_geoembed_resnet18()
    model = ResNetStages(cfg.block, cfg.layers, cfg.base)
    if pretrained is not None:
        _load_torchvision_state(model, Path(pretrained))
    return model


def _load_torchvision_state(model: ResNetStages, path: Path) -> None:
    from rsz_train.models.vit import _read_tensors  # one reader for every torch checkpoint format

    if not path.is_file():
        raise RszError(f"{path}: no such ResNet checkpoint (or use pretrained='geoembed')")
    state = {k: v for k, v in _read_tensors(path).items() if not k.startswith("fc.")}
    ours = model.state_dict()
    missing = [k for k in ours if k not in state and not k.endswith("num_batches_tracked")]
    wrong = [k for k, v in state.items() if k not in ours or ours[k].shape != v.shape]
    if missing or wrong:
        bad = (missing or wrong)[:3]
        raise RszError(f"{path}: not a matching torchvision ResNet state dict (e.g. {', '.join(bad)})")
    model.load_state_dict(state, strict=False)


def geoembed_weights_path() -> Path:
    try:
        import geoembed
    except ImportError:
        raise RszError("geoembed: package not installed (pip install geoembed)") from None
    return Path(geoembed.__file__).parent / "weights" / "v3.npz"


def geoembed_state_dict(npz: dict[str, np.ndarray]) -> tuple[dict[str, Tensor], dict[str, int]]:
    """Map geoembed V3 npz arrays onto ResNetStages names; returns (state dict, {npz key: times used}).

    npz layout: bb.stem.{0: conv, 1: bn}, bb.layerS.B.{conv1,bn1,conv2,bn2}, bb.layerS.0.short.{0: conv,
    1: bn}, fc.weight stored [in, out] (netcl's Linear layout, so transposed here), fc.bias, and the
    ints embed_dim, base_channels, pool_size that size the network.
    """
    used = dict.fromkeys(npz, 0)

    def take(key: str) -> Tensor:
        used[key] += 1
        return torch.from_numpy(np.ascontiguousarray(npz[key], dtype=np.float32))

    def bn(ours: str, theirs: str) -> None:
        for kind in ("weight", "bias", "running_mean", "running_var"):
            state[f"{ours}.{kind}"] = take(f"{theirs}.{kind}")

    state: dict[str, Tensor] = {}
    state["conv1.weight"] = take("bb.stem.0.weight")
    bn("bn1", "bb.stem.1")
    for stage in range(1, 5):
        for blk in range(2):
            ours, theirs = f"layer{stage}.{blk}", f"bb.layer{stage}.{blk}"
            state[f"{ours}.conv1.weight"] = take(f"{theirs}.conv1.weight")
            bn(f"{ours}.bn1", f"{theirs}.bn1")
            state[f"{ours}.conv2.weight"] = take(f"{theirs}.conv2.weight")
            bn(f"{ours}.bn2", f"{theirs}.bn2")
            if f"{theirs}.short.0.weight" in npz:
                state[f"{ours}.downsample.0.weight"] = take(f"{theirs}.short.0.weight")
                bn(f"{ours}.downsample.1", f"{theirs}.short.1")
    state["head.fc.weight"] = take("fc.weight").t().contiguous()
    state["head.fc.bias"] = take("fc.bias")
    for key in ("embed_dim", "base_channels", "pool_size"):  # sizes, read by load_geoembed_resnet18
        used[key] += 1
    return state, used


def load_geoembed_resnet18(path: Path | str | None = None) -> ResNetStages:
    """The geoembed V3 aerial ResNet-18 (CIFAR stem, `head` = its 256-d embedding) as a ResNetStages.

    Inputs: RGB tiles normalised with GEOEMBED_MEAN/STD, natively GEOEMBED_IMAGE_SIZE px.
    """
    path = Path(path) if path else geoembed_weights_path()
    try:
        with np.load(path, allow_pickle=False) as data:
            npz = {k: data[k] for k in data.files}
    except (OSError, ValueError) as err:
        raise RszError(f"{path}: not a readable geoembed npz ({err})") from None
    try:
        state, used = geoembed_state_dict(npz)
    except KeyError as err:
        raise RszError(f"{path}: missing geoembed tensor {err}") from None
    unused = [k for k, n in used.items() if n != 1]
    if unused:
        raise RszError(f"{path}: tensors not used exactly once: {', '.join(unused[:5])}")
    sizes = {key: int(npz[key].reshape(-1)[0]) for key in ("embed_dim", "base_channels", "pool_size")}
    model = ResNetStages("basic", (2, 2, 2, 2), sizes["base_channels"], stem="cifar")
    model.head = GeoEmbedHead(model.stage_channels[-1], sizes["pool_size"], sizes["embed_dim"])
    ours = model.state_dict()
    for key, value in state.items():
        if ours[key].shape != value.shape:
            raise RszError(f"{path}: {key} has shape {tuple(value.shape)}, expected {tuple(ours[key].shape)}")
    result = model.load_state_dict(state, strict=False)
    assert all(k.endswith("num_batches_tracked") for k in result.missing_keys), result.missing_keys
    assert not result.unexpected_keys, result.unexpected_keys
    return model
