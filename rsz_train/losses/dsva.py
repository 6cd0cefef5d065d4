"""DSVA losses (Xu et al., ISPRS 2023), each a small function on plain tensors.

- semantic compatibility: cross-entropy on the class logits. The original code applied it to
  softmaxed outputs (a softmax inside a softmax flattens the gradient); here it takes logits.
- semantic regression: MSE between predicted attributes and the class's attribute vector.
- attention concentration: each attribute's attention map is pulled toward its own peak
  (the APN-style compactness term: attention mass far from the peak costs its squared distance).
- group sparsity: group-lasso over attribute groups, so attributes of one group share few
  visual dimensions (optional).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def compatibility_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Cross-entropy of [B, C] class logits (not probabilities) against [B] labels, or [B, C] class
    weights that sum to 1 (a CutMix batch: the two classes' area shares)."""
    return F.cross_entropy(logits, labels.to(logits.dtype) if labels.is_floating_point() else labels)


def regression_loss(
    predicted: torch.Tensor, class_attributes: torch.Tensor, labels: torch.Tensor
) -> torch.Tensor:
    """Mean squared error between [B, A] predicted attributes and the [C, A] rows of the labels; with [B, C]
    class weights, the weighted mixture of the rows."""
    if labels.is_floating_point():
        target = labels.to(class_attributes.dtype) @ class_attributes
    else:
        target = class_attributes[labels]
    return F.mse_loss(predicted, target)


def concentration_loss(attention_maps: torch.Tensor) -> torch.Tensor:
    """Attention-concentration loss of [B, A, h, w] maps that each sum to 1.

    Loss = mean over (image, attribute) of sum_ij m_ij * d((i, j), peak)^2, with distances in
    units of the map side so the value does not grow with the grid. The peak position is a
    constant (argmax), so the gradient moves mass toward the peak and never moves the peak.
    """
    b, a, h, w = attention_maps.shape
    flat = attention_maps.reshape(b, a, h * w)
    peak = flat.detach().argmax(dim=-1)  # [B, A]
    peak_row, peak_col = peak // w, peak % w
    rows = torch.arange(h, device=flat.device, dtype=flat.dtype).view(1, 1, h, 1)
    cols = torch.arange(w, device=flat.device, dtype=flat.dtype).view(1, 1, 1, w)
    side = float(max(h, w))
    dist2 = ((rows - peak_row[..., None, None].to(flat.dtype)) / side) ** 2 + (
        (cols - peak_col[..., None, None].to(flat.dtype)) / side
    ) ** 2
    return (attention_maps * dist2).sum(dim=(-2, -1)).mean()


def group_sparsity_loss(weights: torch.Tensor, group_ids: torch.Tensor) -> torch.Tensor:
    """Group lasso of [A, D] per-attribute weights over attribute groups ([A] integer ids).

    Loss = sum over groups g and dimensions d of ||weights[a in g, d]||_2, divided by D.
    """
    num_groups = int(group_ids.max().item()) + 1
    squared = torch.zeros(num_groups, weights.shape[1], device=weights.device, dtype=weights.dtype)
    squared = squared.index_add(0, group_ids, weights**2)
    return torch.sqrt(squared + 1e-12).sum() / weights.shape[1]
