"""Relaxed contrastive loss (Kim et al., "Embedding Transfer with Label Relaxation for
Improved Metric Learning", CVPR 2021).

Teacher similarities act as relaxed (soft) labels for a contrastive loss on the student's
mean-normalised pairwise distances. With teacher embeddings t (n, d_t), no gradient, and
student embeddings s (n, d_s), d_s may differ from d_t::

    t̂_i  = t_i / ||t_i||                         (teacher L2-normalised)
    w_ij = exp(-||t̂_i - t̂_j||² / sigma)          (relaxed label, 1 = same, 0 = unrelated)
    D_ij = ||s_i - s_j||   (sqrt(clamp(., 1e-12)), D_ii = 0; the student is not normalised)
    D̃_ij = D_ij / ((1/n) Σ_k D_ik)               (row mean, zero diagonal included)
    L    = (1/n) Σ_{i≠j, D̃_ij>0} [ w_ij D̃_ij² + (1 - w_ij) max(0, delta - D̃_ij)² ]

The loss is invariant to a global scale of the student embeddings. It is computed in
float32, or float64 when the inputs are float64.

Example::

    >>> loss_fn = RelaxedContrastiveLoss(sigma=1.0, delta=1.0)
    >>> student = torch.randn(8, 64, requires_grad=True)   # (n, d_s)
    >>> teacher = torch.randn(8, 512)                      # (n, d_t)
    >>> loss = loss_fn(student, teacher)
    >>> loss.backward()
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

EPS_SQ = 1e-12  # clamp of squared distances before the square root


def _compute_dtype(x: Tensor) -> torch.dtype:
    return torch.float64 if x.dtype == torch.float64 else torch.float32


def check_pair_inputs(student: Tensor, teacher: Tensor) -> None:
    if student.ndim != 2 or teacher.ndim != 2:
        raise ValueError(
            f"expected student (n, d_s) and teacher (n, d_t) matrices, got shapes "
            f"{tuple(student.shape)} and {tuple(teacher.shape)}"
        )
    if student.shape[0] != teacher.shape[0]:
        raise ValueError(
            f"student and teacher must embed the same n items, got {student.shape[0]} and "
            f"{teacher.shape[0]} rows"
        )
    if student.shape[0] < 2:
        raise ValueError("pairwise losses need at least 2 embeddings per batch")


@torch.no_grad()
def teacher_relaxed_labels(teacher: Tensor, sigma: float) -> Tensor:
    """w (n, n): exp(-||t̂_i - t̂_j||² / sigma) of L2-normalised teacher embeddings."""
    t = F.normalize(teacher.to(_compute_dtype(teacher)), dim=1)
    sq = (2.0 - 2.0 * (t @ t.T)).clamp_min(0.0)
    return torch.exp(-sq / sigma)


def pairwise_distances(x: Tensor) -> Tensor:
    """Euclidean distances (n, n) with sqrt(clamp(squared, 1e-12)) and an exact zero diagonal."""
    sq_norms = (x * x).sum(dim=1)
    sq = (sq_norms[:, None] + sq_norms[None, :] - 2.0 * (x @ x.T)).clamp_min(EPS_SQ)
    off_diag = ~torch.eye(x.shape[0], dtype=torch.bool, device=x.device)
    return sq.sqrt() * off_diag


def row_normalised_distances(student: Tensor) -> Tensor:
    """D̃ (n, n): student distances divided by their row mean (diagonal zero included)."""
    s = student.to(_compute_dtype(student))
    d = pairwise_distances(s)
    return d / d.mean(dim=1, keepdim=True)


class RelaxedContrastiveLoss(nn.Module):
    """Contrastive loss on mean-normalised student distances with teacher relaxed labels.

    Args:
        sigma: Bandwidth of the teacher similarity kernel (paper: 1; STML uses 3 for SSL
            teachers). Larger sigma gives softer labels.
        delta: Margin pushing unrelated pairs apart, in units of the row-mean distance.

    Shapes: ``student`` (n, d_s), ``teacher`` (n, d_t) → scalar. The teacher gets no gradient.
    """

    def __init__(self, sigma: float = 1.0, delta: float = 1.0):
        super().__init__()
        if sigma <= 0:
            raise ValueError(f"sigma must be > 0, got {sigma}")
        if delta <= 0:
            raise ValueError(f"delta must be > 0, got {delta}")
        self.sigma = float(sigma)
        self.delta = float(delta)

    def forward(self, student: Tensor, teacher: Tensor) -> Tensor:
        check_pair_inputs(student, teacher)
        w = teacher_relaxed_labels(teacher.detach(), self.sigma)
        d = row_normalised_distances(student)
        w = w.to(d.dtype)
        pull = w * d.pow(2)
        push = (1.0 - w) * F.relu(self.delta - d).pow(2)
        mask = d > 0  # excludes the diagonal (D_ii = 0) and any collapsed pair
        return torch.where(mask, pull + push, torch.zeros_like(d)).sum() / d.shape[0]

    def extra_repr(self) -> str:
        return f"sigma={self.sigma}, delta={self.delta}"
