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

:func:`relaxed_contrastive_loss` below is this formula term by term, differentiated by autograd.
``RelaxedContrastiveLoss`` computes the same value and gradient (up to rounding) by one of:

- dense (default): :mod:`~ssl_transfer.losses.relaxed_fused`, forward and backward written
  by hand (fewer passes, one (n, n) matrix kept for backward; docs/speed.md). First order
  only: a second derivative through it raises RuntimeError.
- ``block_size=B``: :mod:`~ssl_transfer.losses.relaxed_blocked`, row blocks of B anchors, each
  recomputed in the backward pass: O(B·n) memory instead of O(n²); pure autograd.

Conventions shared by every path (and by ``RelaxedMSLoss``, which uses the same helpers):

- Zero teacher rows: t̂ = t / max(||t||, 1e-12) (as ``F.normalize``), so an all-zero teacher
  row stays at the origin: ||t̂_i - t̂_j||² = 1 to every unit row (w = exp(-1/sigma)) and 0 to
  another zero row (w = 1). Squared teacher distances are computed as
  ||t̂_i||² + ||t̂_j||² - 2 t̂_i·t̂_j with the actual squared norms (1, or 0 for a zero row),
  which equals the direct definition (not 2 - 2 t̂_i·t̂_j, which would put zero rows at
  distance 2).
- The student is centred on its (detached) batch mean and scaled to unit root-mean-square
  norm (detached) before its Gram matrix: D̃ is invariant to translation and to a global scale
  of s, so neither changes the loss or its gradient mathematically, while float32 keeps its
  precision when embeddings share a large common offset, and no squared distance overflows.
- Inputs are checked (``common.check_pair_inputs``): NaN / inf entries, d = 0, non-floating
  dtypes and numpy arrays are refused.

The loss is computed in float32, or float64 when the inputs are float64, also under autocast.

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

from .common import (
    centred_unit_scale,
    check_pair_inputs,
    compute_dtype,
    full_precision,
    pairwise_distances,
    unit_rows,
)
from .relaxed_blocked import relaxed_contrastive_blocked
from .relaxed_fused import relaxed_contrastive_fused


@torch.no_grad()
def teacher_relaxed_labels(teacher: Tensor, sigma: float) -> Tensor:
    """w (n, n): exp(-||t̂_i - t̂_j||² / sigma) of L2-normalised teacher embeddings."""
    t_hat, sq_norms = unit_rows(teacher.to(compute_dtype(teacher)))  # t̂, ||t̂||² (0: zero row)
    sq = sq_norms[:, None] + sq_norms[None, :] - 2.0 * (t_hat @ t_hat.T)  # ||t̂_i - t̂_j||²
    return torch.exp(-sq.clamp_min(0.0) / sigma)


def row_normalised_distances(student: Tensor) -> Tensor:
    """D̃ (n, n): student distances divided by their row mean (diagonal zero included)."""
    s = centred_unit_scale(student.to(compute_dtype(student)))  # same D̃, precise Gram
    d = pairwise_distances(s)
    return d / d.mean(dim=1, keepdim=True)


@full_precision
def relaxed_contrastive_loss(student: Tensor, teacher: Tensor, sigma: float = 1.0,
                             delta: float = 1.0) -> Tensor:
    """The loss of the module docstring, term by term, differentiated by autograd.

    (n, n) memory for about twenty intermediates; ``RelaxedContrastiveLoss`` is the checked,
    faster, leaner way to compute the same value and gradient. Inputs are not checked here.
    """
    w = teacher_relaxed_labels(teacher.detach(), sigma)  # (n, n), no gradient
    d = row_normalised_distances(student)  # D̃ (n, n)
    w = w.to(d.dtype)
    pull = w * d.pow(2)
    push = (1.0 - w) * F.relu(delta - d).pow(2)
    return torch.where(d > 0, pull + push, torch.zeros_like(d)).sum() / d.shape[0]


class RelaxedContrastiveLoss(nn.Module):
    """Contrastive loss on mean-normalised student distances with teacher relaxed labels.

    Args:
        sigma: Bandwidth of the teacher similarity kernel (paper: 1; STML uses 3 for SSL
            teachers). Larger sigma gives softer labels.
        delta: Margin pushing unrelated pairs apart, in units of the row-mean distance.
        block_size: None (default) computes the dense (n, n) matrices. An int B computes the
            loss over row blocks of B anchors, recomputing each block in the backward pass:
            same value and gradient (up to floating-point rounding), peak extra memory
            about 15·B·n elements instead of about 12·n² (measured, docs/loss_memory.md:
            n = 8192, d = 512, float32, forward + backward: 242 MiB with B = 512, 3.2 GiB dense).

    Shapes: ``student`` (n, d_s), ``teacher`` (n, d_t) → scalar. The teacher gets no gradient.
    Conventions (zero teacher rows, centring, input checks): see the module docstring.
    """

    def __init__(self, sigma: float = 1.0, delta: float = 1.0, block_size: int | None = None):
        super().__init__()
        if sigma <= 0:
            raise ValueError(f"sigma must be > 0, got {sigma}")
        if delta <= 0:
            raise ValueError(f"delta must be > 0, got {delta}")
        if block_size is not None and (isinstance(block_size, bool) or not isinstance(block_size, int)
                                       or block_size < 1):
            raise ValueError(f"block_size must be a positive int or None, got {block_size!r}")
        self.sigma = float(sigma)
        self.delta = float(delta)
        self.block_size = block_size

    @full_precision
    def forward(self, student: Tensor, teacher: Tensor) -> Tensor:
        check_pair_inputs(student, teacher)
        if self.block_size is not None:
            return relaxed_contrastive_blocked(student, teacher, self.sigma, self.delta, self.block_size)
        s = student.to(compute_dtype(student))
        return relaxed_contrastive_fused(s, teacher, self.sigma, self.delta)

    def extra_repr(self) -> str:
        extra = "" if self.block_size is None else f", block_size={self.block_size}"
        return f"sigma={self.sigma}, delta={self.delta}{extra}"
