"""Frozen pretrained backbones (MCFA's and MSA's default): kept in eval mode, their features memoised."""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from typing import Any

import torch
from torch import nn


class FrozenFeatureCache:
    """Memo of a frozen backbone's features by the exact bytes of each input tile.

    A frozen backbone (eval mode) is a fixed function of its input, and training revisits the same
    tiles every epoch (and evaluation the same validation tiles), so on CPU most backbone passes after
    the first epoch are repeats. Only tiles not seen before go through the backbone. Bounded by
    max_items (then it simply stops adding).
    """

    def __init__(self, max_items: int = 50_000) -> None:
        self.max_items = max_items
        self.store: dict[bytes, torch.Tensor] = {}

    def clear(self) -> None:
        self.store.clear()

    def __call__(self, compute: Callable[[torch.Tensor], torch.Tensor], images: torch.Tensor) -> torch.Tensor:
        host = images.detach().to("cpu", torch.float32).contiguous()
        keys = [hashlib.blake2b(tile.numpy().tobytes(), digest_size=16).digest() for tile in host]
        keys = [k + str(tuple(images.shape[1:])).encode() for k in keys]
        missing = [i for i, k in enumerate(keys) if k not in self.store]
        fresh = {}
        if missing:
            features = compute(images[missing]).detach().cpu()
            fresh = {keys[i]: f for i, f in zip(missing, features)}
            room = self.max_items - len(self.store)
            self.store.update(dict(list(fresh.items())[: max(room, 0)]))
        rows = [self.store[k] if k in self.store else fresh[k] for k in keys]
        return torch.stack(rows).to(images.device)


class FrozenBackboneMixin:
    """For an nn.Module whose pretrained backbone may be frozen (`frozen_backbone()` returns it, or None).

    Training mode never reaches the frozen backbone, so its BatchNorm statistics stay the pretrained ones,
    and loading weights clears the feature cache, whose entries belong to the old weights.
    """

    feature_cache: FrozenFeatureCache | None

    def frozen_backbone(self) -> nn.Module | None:
        raise NotImplementedError

    def train(self, mode: bool = True) -> Any:
        super().train(mode)  # type: ignore[misc]
        backbone = self.frozen_backbone()
        if backbone is not None:
            backbone.eval()
        return self

    def load_state_dict(self, state_dict: Any, strict: bool = True, assign: bool = False) -> Any:
        if self.feature_cache is not None:
            self.feature_cache.clear()
        return super().load_state_dict(state_dict, strict=strict, assign=assign)  # type: ignore[misc]
