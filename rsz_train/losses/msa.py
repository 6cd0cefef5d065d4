"""MSA losses: image-text retrieval over in-batch pairs (image b belongs with text b).

Similarity matrices are [B_img, B_txt] with the true pairs on the diagonal; match matrices from the
multi-scale cross-attention are [S, B_img, B_txt]. `duplicates` [B, B] (bool, optional) marks pairs that
are not true negatives although off the diagonal (e.g. two images with the identical caption); they are
left out of every negative set.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def _negative_mask(size: int, duplicates: torch.Tensor | None, device: torch.device) -> torch.Tensor:
    """True where (i, j) may serve as a negative: off the diagonal and not a known duplicate."""
    not_diagonal = ~torch.eye(size, dtype=torch.bool, device=device)
    return not_diagonal if duplicates is None else not_diagonal & ~duplicates


def triplet_hardest_negative(
    similarity: torch.Tensor, margin: float, duplicates: torch.Tensor | None = None
) -> torch.Tensor:
    """Bidirectional hinge triplet loss with the hardest in-batch negative (VSE++, Faghri et al. 2018).

    For image i: max(0, margin - s(i, i) + max_j s(i, j)); for text j likewise over images; mean of both.
    """
    positive = similarity.diagonal()
    negatives = _negative_mask(similarity.shape[0], duplicates, similarity.device)
    masked = similarity.masked_fill(~negatives, float("-inf"))
    hardest_text = masked.max(dim=1).values  # per image
    hardest_image = masked.max(dim=0).values  # per text
    # A row with no valid negative (-inf) gives relu(-inf) = 0: nothing to push away.
    image_to_text = F.relu(margin - positive + hardest_text)
    text_to_image = F.relu(margin - positive + hardest_image)
    return (image_to_text.mean() + text_to_image.mean()) / 2


def info_nce_both_ways(logits: torch.Tensor, duplicates: torch.Tensor | None = None) -> torch.Tensor:
    """Symmetric InfoNCE (CLIP): cross-entropy of the diagonal over rows and over columns."""
    keep = _negative_mask(logits.shape[0], duplicates, logits.device)
    keep = keep | torch.eye(logits.shape[0], dtype=torch.bool, device=logits.device)
    logits = logits.masked_fill(~keep, float("-inf"))
    target = torch.arange(logits.shape[0], device=logits.device)
    return (F.cross_entropy(logits, target) + F.cross_entropy(logits.T, target)) / 2


def scale_alignment_loss(
    match: torch.Tensor, temperature: float, duplicates: torch.Tensor | None = None
) -> torch.Tensor:
    """Per-scale cross-modal alignment: InfoNCE both ways on each scale's match matrix / temperature,
    averaged over scales. match [S, B, B] holds similarities (cosines), so logits are match / temperature."""
    return torch.stack([info_nce_both_ways(m / temperature, duplicates) for m in match]).mean()


def cross_scale_consistency(
    match: torch.Tensor, temperature: float, duplicates: torch.Tensor | None = None
) -> torch.Tensor:
    """KL(teacher || student) from the largest scale (the last, detached) to each smaller scale.

    Compares the retrieval distributions softmax(match / temperature) over texts (per image) and over
    images (per text); zero when all scales give the same match matrix.
    """
    if match.shape[0] < 2:
        return match.sum() * 0.0
    keep = _negative_mask(match.shape[1], duplicates, match.device)
    keep = keep | torch.eye(match.shape[1], dtype=torch.bool, device=match.device)
    logits = (match / temperature).masked_fill(~keep, -1e4)  # duplicates carry no probability mass
    teacher = logits[-1].detach()
    losses = []
    for student in logits[:-1]:
        for dim in (1, 0):  # over texts per image, then over images per text
            t_log = torch.log_softmax(teacher, dim=dim)
            s_log = torch.log_softmax(student, dim=dim)
            per_query = (t_log.exp() * (t_log - s_log)).sum(dim=dim)
            losses.append(per_query.mean())
    return torch.stack(losses).mean()


def authors_scale_alignment(match: torch.Tensor) -> torch.Tensor:
    """MSCMA loss as yr666666/MSA retrieval.py writes it (`loss_cross = loss_cross1 + ... + loss_cross4`,
    each `CrossEntropyLoss(out_sim[s], label_interact)`): per scale, cross-entropy of each image's row of
    match scores (used as logits, as they are) against its own text; summed over scales, image -> text
    only (interact_cross puts image i in row i)."""
    target = torch.arange(match.shape[1], device=match.device)
    return torch.stack([F.cross_entropy(m, target) for m in match]).sum()


def authors_cross_scale_consistency(match: torch.Tensor, temperature: float = 2.0) -> torch.Tensor:
    """CSMMC loss as yr666666/MSA retrieval.py writes it: `element_neig_rank_loss(out_sim[3], out_sim[s], 2)`
    summed over the smaller scales s, where W_h0 = softmax(sim_s / t, dim=0).t(),
    W_l0 = softmax(sim_3.detach() / t, dim=0).t() and `F.kl_div(W_l0.log(), W_h0, reduction='mean')`.

    Direction: F.kl_div(log q, p) is KL(p || q) = sum p (log p - log q), here p = the smaller scale's
    distribution over images for each text (softmax over dim 0) and q = the largest scale's (detached), i.e.
    KL(smaller || largest), the direction of the authors' code (the paper's text was not at hand to check):
    mass a smaller scale puts where the teacher (the largest scale, detached) has little costs most, so the
    smaller scales learn to stay inside the teacher's neighbourhoods. reduction='mean' divides the sum by
    the number of elements (B * B), as theirs does. rsz's cross_scale_consistency is KL(largest || smaller).
    """
    teacher = torch.log_softmax(match[-1].detach() / temperature, dim=0)
    total = match.new_zeros(())
    for student in match[:-1]:
        p_log = torch.log_softmax(student / temperature, dim=0)
        total = total + (p_log.exp() * (p_log - teacher)).mean()
    return total
