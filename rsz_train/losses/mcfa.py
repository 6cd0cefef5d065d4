"""MCFA losses (Liu et al., 2023): cross-modal VAE terms (as in CADA-VAE) and cross-instance contrast.

Each function takes plain tensors and returns a scalar, so each can be checked by hand.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def reparameterize(mu: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    """A sample of N(mu, exp(logvar)) that gradients flow through."""
    return mu + torch.randn_like(mu) * torch.exp(0.5 * logvar)


def reconstruction_loss(reconstruction: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Mean absolute error per element (L1 as in CADA-VAE; a mean so both modalities weigh alike)."""
    return (reconstruction - target).abs().mean()


def kl_to_standard_normal(mu: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    """KL(N(mu, exp(logvar)) || N(0, I)), summed over latent dimensions, averaged over the batch."""
    return (-0.5 * (1 + logvar - mu.pow(2) - logvar.exp()).sum(dim=-1)).mean()


def wasserstein_gaussians(
    mu_a: torch.Tensor, logvar_a: torch.Tensor, mu_b: torch.Tensor, logvar_b: torch.Tensor
) -> torch.Tensor:
    """2-Wasserstein distance between diagonal Gaussians, row by row, averaged (CADA-VAE distribution
    alignment): sqrt(|mu_a - mu_b|^2 + |sigma_a - sigma_b|^2)."""
    sigma_a, sigma_b = torch.exp(0.5 * logvar_a), torch.exp(0.5 * logvar_b)
    squared = (mu_a - mu_b).pow(2).sum(-1) + (sigma_a - sigma_b).pow(2).sum(-1)
    # The small constant keeps the gradient of sqrt finite when the two Gaussians coincide.
    return torch.sqrt(squared + 1e-8).mean()


def supervised_contrastive(
    anchors: torch.Tensor,
    candidates: torch.Tensor,
    anchor_labels: torch.Tensor,
    candidate_labels: torch.Tensor,
    temperature: float,
    exclude_self: bool = False,
    mean_in_log: bool = False,
) -> torch.Tensor:
    """Supervised contrastive loss (Khosla et al., 2020) from anchors [N, D] to candidates [M, D].

    Each anchor's positives are the candidates with its label; the loss is the mean negative log
    softmax (cosine / temperature over all candidates) of its positives. With exclude_self the anchors
    are the candidates (visual-visual) and an anchor is neither its own positive nor negative.
    Anchors without any positive are skipped.

    mean_in_log: the log of the mean softmax probability of the positives instead (SupCon's L_in rather
    than L_out), the form of MCFA's authors (ContrastiveLoss_new.py: the mean of exp(sim / t) over the
    positives, divided by the sum over all candidates, under one -log). The two agree when each anchor has
    one positive; otherwise L_in <= L_out (Jensen), and L_in is met once any positive is close.
    """
    logits = F.normalize(anchors, dim=-1) @ F.normalize(candidates, dim=-1).T / temperature
    positives = (anchor_labels[:, None] == candidate_labels[None, :]).float()
    if exclude_self:
        self_mask = torch.eye(len(anchors), dtype=torch.bool, device=anchors.device)
        logits = logits.masked_fill(self_mask, float("-inf"))
        positives = positives.masked_fill(self_mask, 0.0)
    log_prob = torch.log_softmax(logits, dim=1)
    count = positives.sum(1)
    has_positive = count > 0
    if not has_positive.any():  # a zero that keeps the graph (logits.sum() may be -inf: self entries)
        return (anchors.sum() + candidates.sum()) * 0.0
    if mean_in_log:
        # -log(mean of the positives' probabilities) = log(count) - logsumexp of their log-probabilities;
        # rows without positives go first (an all -inf logsumexp would put nan into the gradient)
        rows, count = log_prob[has_positive], count[has_positive]
        pooled = torch.logsumexp(rows.masked_fill(positives[has_positive] == 0, float("-inf")), dim=1)
        return (count.log() - pooled).mean()
    # -inf * 0 would be nan; self entries are never positives, so zero them before the product.
    log_prob = torch.where(positives > 0, log_prob, torch.zeros_like(log_prob))
    per_anchor = -(log_prob * positives).sum(1)[has_positive] / count[has_positive]
    return per_anchor.mean()
