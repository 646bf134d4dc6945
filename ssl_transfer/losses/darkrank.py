"""Hard DarkRank (Chen, Wang & Zhang, "DarkRank: Accelerating Deep Metric Learning via Cross
Sample Similarities Transfer", AAAI 2018): list-wise transfer of the teacher's neighbour order.

For every anchor i, π = (π_1, ..., π_k) are the teacher's k nearest neighbours of i (teacher
Euclidean distance, anchor excluded, nearest first). Student scores and the top-k
Plackett–Luce log-likelihood of that order::

    S_ij  = -alpha · ||s_i - s_j||^beta
    C_m   = {j ≠ i} minus {π_1, ..., π_{m-1}}              (all remaining candidates)
    log P = Σ_{m=1..k} [ S_{iπ_m} - log Σ_{l ∈ C_m} exp(S_il) ]
    L     = -(1/n) Σ_i log P_i

Student distances are used as they are (not normalised), so the loss depends on the student's
scale. The normaliser runs over all remaining non-anchor items, as in the permutation probability of
the paper; the RKD authors' ``HardDarkRank`` normalises over the k selected items only.

With ``labels`` (and ``with_triplet=True``) a batch-hard triplet loss (Hermans et al. 2017) on
the student's Euclidean distances is added, ``triplet_weight`` × mean over anchors that have a
positive and a negative of max(0, max_{p: y_p = y_i, p ≠ i} D_ip − min_{q: y_q ≠ y_i} D_iq + margin).

Example::

    >>> loss_fn = DarkRankLoss(alpha=3.0, beta=3.0, k=4)
    >>> student = torch.randn(64, 128, requires_grad=True)   # (n, d_s)
    >>> teacher = torch.randn(64, 512)                       # (n, d_t)
    >>> labels = torch.randint(0, 8, (64,))                  # optional (n,)
    >>> loss_fn(student, teacher, labels).backward()
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .common import check_pair_inputs, compute_dtype, full_precision, pairwise_distances


def batch_hard_triplet(d: Tensor, labels: Tensor, margin: float) -> Tensor:
    """Batch-hard triplet loss from (n, n) distances; 0 (with a graph) if no anchor qualifies."""
    n = d.shape[0]
    same = labels[:, None] == labels[None, :]
    positive = same & ~torch.eye(n, dtype=torch.bool, device=d.device)
    hardest_pos = torch.where(positive, d, torch.full_like(d, float("-inf"))).amax(dim=1)
    hardest_neg = torch.where(~same, d, torch.full_like(d, float("inf"))).amin(dim=1)
    valid = positive.any(dim=1) & (~same).any(dim=1)
    if not valid.any():
        return d.sum() * 0.0
    return F.relu(hardest_pos[valid] - hardest_neg[valid] + margin).mean()


class DarkRankLoss(nn.Module):
    """Hard (list-wise) DarkRank loss, optionally plus a batch-hard triplet loss.

    Args:
        alpha: Score scale α (paper: 3).
        beta: Distance exponent β (paper: 3).
        k: Length of the transferred neighbour list (paper: 4); a batch needs n > k.
        margin: Triplet margin (0.2).
        with_triplet: Add the triplet loss when ``labels`` are passed (passing labels with
            ``with_triplet=False`` is an error).
        triplet_weight: Weight of the triplet term.

    Shapes: ``student`` (n, d_s), ``teacher`` (n, d_t), ``labels`` (n,) or None → scalar.
    The teacher gets no gradient.
    """

    def __init__(self, alpha: float = 3.0, beta: float = 3.0, k: int = 4, margin: float = 0.2,
                 with_triplet: bool = True, triplet_weight: float = 1.0):
        super().__init__()
        if alpha <= 0 or beta <= 0:
            raise ValueError(f"alpha and beta must be > 0, got {alpha} and {beta}")
        if isinstance(k, bool) or not isinstance(k, int) or k < 1:
            raise ValueError(f"k must be a positive int, got {k!r}")
        if margin < 0 or triplet_weight < 0:
            raise ValueError(f"margin and triplet_weight must be >= 0, got {margin} and {triplet_weight}")
        self.alpha, self.beta, self.k = float(alpha), float(beta), k
        self.margin, self.with_triplet, self.triplet_weight = float(margin), bool(with_triplet), float(triplet_weight)

    @full_precision
    def forward(self, student: Tensor, teacher: Tensor, labels: Tensor | None = None) -> Tensor:
        check_pair_inputs(student, teacher)
        n = student.shape[0]
        if n <= self.k:
            raise ValueError(f"k={self.k} neighbours need at least {self.k + 1} embeddings per batch, got {n}")
        if labels is not None:
            if not self.with_triplet:
                raise ValueError("labels were given but with_triplet=False; drop the labels or enable the triplet term")
            if labels.shape != (n,):
                raise ValueError(f"labels must have shape ({n},), got {tuple(labels.shape)}")
        s = student.to(compute_dtype(student))
        others = ~torch.eye(n, dtype=torch.bool, device=s.device)
        with torch.no_grad():
            t_d = pairwise_distances(teacher.detach().to(s.dtype))
            order = torch.where(others, t_d, torch.full_like(t_d, float("inf"))).topk(
                self.k, dim=1, largest=False, sorted=True).indices  # (n, k), nearest first
        d = pairwise_distances(s)
        # the diagonal (never a candidate) is set to 1 before the power: no 0^beta gradient issues
        scores = -self.alpha * torch.where(others, d, torch.ones_like(d)).pow(self.beta)  # (n, n)
        remaining = others
        log_p = s.new_zeros(n)
        for m in range(self.k):  # k list positions, each vectorised over all anchors
            chosen = order[:, m : m + 1]
            normaliser = torch.logsumexp(scores.masked_fill(~remaining, float("-inf")), dim=1)
            log_p = log_p + scores.gather(1, chosen).squeeze(1) - normaliser
            remaining = remaining.scatter(1, chosen, False)
        loss = -log_p.mean()
        if labels is not None:
            loss = loss + self.triplet_weight * batch_hard_triplet(d, labels.to(s.device), self.margin)
        return loss

    def extra_repr(self) -> str:
        return (f"alpha={self.alpha}, beta={self.beta}, k={self.k}, margin={self.margin}, "
                f"with_triplet={self.with_triplet}, triplet_weight={self.triplet_weight}")
