"""Relaxed multi-similarity loss (Kim et al., CVPR 2021, the MS variant of relaxed transfer).

Same relaxed labels w and mean-normalised student distances D̃ as
:class:`~ssl_transfer.losses.RelaxedContrastiveLoss`, in a multi-similarity form with
scale_pos α, scale_neg β and margin δ. For every anchor i, over j ≠ i::

    w_ij = exp(-||t̂_i - t̂_j||² / sigma)      (w_ij = 1 when i, j are views of one image)
    D̃_ij = D_ij / ((1/n) Σ_k D_ik)           (Euclidean student distances, row-mean normalised)
    L_i  = (1/α) log(1 + Σ_{j≠i} w_ij e^{α D̃_ij})
         + (1/β) log(1 + Σ_{j≠i} (1 - w_ij) e^{β(δ - D̃_ij)})
    L    = (1/n) Σ_i L_i

Both log-sum terms are computed as logsumexp over [0, log w_ij + α D̃_ij] (resp.
[0, log(1 - w_ij) + β(δ - D̃_ij)]), so large α D̃ cannot overflow and w = 0 or w = 1 (log = -inf)
simply drops the pair.

Conventions shared with ``RelaxedContrastiveLoss`` (same helpers): an all-zero teacher row is the
origin (w = exp(-1/sigma) to unit rows, 1 to another zero row); the student is centred and
unit-scaled before its Gram matrix; NaN / inf, d = 0, non-floating dtypes are refused.

Multi-view batches are stacked as [view0 of all b images; view1 of all b images; ...], n = views·b:
items i and j are views of the same image iff i % b == j % b, and such pairs get w = 1.

Example::

    >>> loss_fn = RelaxedMSLoss(sigma=1.0, delta=1.0, views=2)
    >>> student = torch.randn(2 * 90, 128, requires_grad=True)   # (n, d_s), 2 views of 90 images
    >>> teacher = torch.randn(2 * 90, 512)                       # (n, d_t)
    >>> loss_fn(student, teacher).backward()
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from .common import check_pair_inputs, full_precision
from .relaxed import row_normalised_distances, teacher_relaxed_labels


def same_image_mask(n: int, views: int, device: torch.device | None = None) -> Tensor:
    """(n, n) bool: True where items i and j are views of the same image (i % b == j % b)."""
    image = torch.arange(n, device=device) % (n // views)
    return image[:, None] == image[None, :]


def _log1p_sum_exp(logits: Tensor) -> Tensor:
    """Row-wise log(1 + Σ_j exp(logits_ij)), stable; logits may hold -inf (term absent)."""
    zero = logits.new_zeros(logits.shape[0], 1)
    return torch.logsumexp(torch.cat([zero, logits], dim=1), dim=1)


class RelaxedMSLoss(nn.Module):
    """Multi-similarity loss on mean-normalised student distances with teacher relaxed labels.

    Args:
        sigma: Bandwidth of the teacher similarity kernel (as in RelaxedContrastiveLoss).
        delta: Margin of the push term, in units of the row-mean distance.
        scale_pos: α, sharpness of the pull (positive) term.
        scale_neg: β, sharpness of the push (negative) term.
        views: Number of views stacked in the batch (1: no view structure). n must be a
            multiple of ``views``; views of the same image get w = 1.

    Shapes: ``student`` (n, d_s), ``teacher`` (n, d_t) → scalar. The teacher gets no gradient.
    """

    def __init__(self, sigma: float = 1.0, delta: float = 1.0, scale_pos: float = 1.0,
                 scale_neg: float = 2.0, views: int = 1):
        super().__init__()
        for name, value in (("sigma", sigma), ("delta", delta), ("scale_pos", scale_pos),
                            ("scale_neg", scale_neg)):
            if value <= 0:
                raise ValueError(f"{name} must be > 0, got {value}")
        if isinstance(views, bool) or not isinstance(views, int) or views < 1:
            raise ValueError(f"views must be a positive int, got {views!r}")
        self.sigma = float(sigma)
        self.delta = float(delta)
        self.scale_pos = float(scale_pos)
        self.scale_neg = float(scale_neg)
        self.views = views

    @full_precision
    def forward(self, student: Tensor, teacher: Tensor) -> Tensor:
        check_pair_inputs(student, teacher)
        n = student.shape[0]
        if n % self.views:
            raise ValueError(f"batch of {n} embeddings is not views={self.views} × images; "
                             f"stack whole views or set views=1")
        d = row_normalised_distances(student)  # (n, n), D̃
        w = teacher_relaxed_labels(teacher.detach(), self.sigma).to(d.dtype)
        if self.views > 1:
            w = torch.where(same_image_mask(n, self.views, d.device), torch.ones_like(w), w)
        others = ~torch.eye(n, dtype=torch.bool, device=d.device)
        neg_inf = torch.full_like(d, float("-inf"))
        a, b = self.scale_pos, self.scale_neg
        pos = torch.where(others, torch.log(w) + a * d, neg_inf)
        neg = torch.where(others, torch.log1p(-w) + b * (self.delta - d), neg_inf)
        per_anchor = _log1p_sum_exp(pos) / a + _log1p_sum_exp(neg) / b  # (n,)
        return per_anchor.mean()

    def extra_repr(self) -> str:
        return (f"sigma={self.sigma}, delta={self.delta}, scale_pos={self.scale_pos}, "
                f"scale_neg={self.scale_neg}, views={self.views}")
