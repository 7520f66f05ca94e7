"""Sampled softmax with logQ correction and positive masking (OmniSearchSage / PinnerFormer).

For query i with positive p_i and shared negatives n_1..n_C the loss is cross-entropy with the
positive as the class, over

    logit(i, x) = <q_i, x> / tau - log Q(x)

where ``log Q(x)`` is the log of the expected number of times x was drawn by its sampler (both
the positive and the negatives are corrected; omit to disable). A negative whose id equals the
query's positive id is masked out: a duplicate of the positive is not a negative.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


def sampled_softmax_loss(
    queries: Tensor,
    positives: Tensor,
    positive_ids: Tensor,
    negatives: Tensor,
    negative_ids: Tensor,
    temperature: Tensor,
    log_q: tuple[Tensor, Tensor] | None = None,
) -> Tensor:
    """Mean loss. Shapes: queries and positives [N, D], positive_ids [N], negatives [C, D],
    negative_ids [C], temperature a scalar tensor, log_q = (positives [N], negatives [C])."""
    n, c = queries.shape[0], negatives.shape[0]
    assert positives.shape == queries.shape, f"positives {tuple(positives.shape)} vs queries"
    assert negatives.shape[1] == queries.shape[1], "query and negative dims differ"
    assert positive_ids.shape == (n,) and negative_ids.shape == (c,), "bad id shapes"
    pos = (queries * positives).sum(dim=-1, keepdim=True) / temperature  # [N, 1]
    neg = queries @ negatives.T / temperature  # [N, C]
    if log_q is not None:
        assert log_q[0].shape == (n,) and log_q[1].shape == (c,), "bad log_q shapes"
        pos = pos - log_q[0].unsqueeze(1)
        neg = neg - log_q[1].unsqueeze(0)
    neg = neg.masked_fill(negative_ids.unsqueeze(0) == positive_ids.unsqueeze(1), float("-inf"))
    logits = torch.cat([pos, neg], dim=1)  # [N, 1 + C], the positive is class 0
    return F.cross_entropy(logits, torch.zeros(n, dtype=torch.int64, device=queries.device))


def log_q_from_counts(counts: Tensor, draws: float) -> Tensor:
    """log of the expected number of times each item is drawn when ``draws`` candidates are taken
    proportionally to ``counts`` (the in-batch sampler), floored to stay finite."""
    p = counts.to(torch.float32) / torch.clamp(counts.sum(), min=1.0)
    return torch.log(torch.clamp(p * draws, min=1e-12))


def full_softmax_loss(
    queries: Tensor, items: Tensor, positive_ids: Tensor, temperature: Tensor
) -> Tensor:
    """Mean cross-entropy of each query over every item ``[N, D]``, its positive the class: the
    exact softmax, affordable when the catalogue is small (SASRec-CE)."""
    assert queries.shape[1] == items.shape[1], "query and item dims differ"
    return F.cross_entropy((queries / temperature) @ items.T, positive_ids)
