"""Relational knowledge distillation (Park et al., "Relational Knowledge Distillation", CVPR 2019).

Reductions follow the RKD authors' code (lenscloth/RKD, ``metric/loss.py``: ``RkdDistance``,
``RKdAngle``). With student s (n, d_s) and teacher t (n, d_t), no gradient::

    D_ij  = ||x_i - x_j||  (sqrt(clamp(., 1e-12)), D_ii = 0),   μ = mean of D over D_ij > 0
    dist  = (1/n²)  Σ_{i,j}   ℓ(D^s_ij / μ^s,  D^t_ij / μ^t)                 (diagonal included)
    e_ab  = (x_b - x_a) / max(||x_b - x_a||, 1e-12)                      (e_aa = 0)
    angle = (1/n³)  Σ_{a,b,c} ℓ(<e^s_ab, e^s_ac>, <e^t_ab, e^t_ac>)       (angle at vertex a)
    L     = dist_weight · dist + angle_weight · angle

ℓ is smooth-L1 with β = 1. The paper weights 1 × distance + 2 × angle.

Memory: the angle term is a sum over the vertex (anchor) a, so it is computed in chunks of
``chunk_size`` anchors; with more than one chunk each chunk is recomputed in the backward pass
(activation checkpointing), so the value and the gradient equal the unchunked ones (up to
floating-point summation order) while at most one chunk's intermediates are alive: at most
about c·n·(3·d_s + d_t + 4·n) elements for c = chunk_size (plus O(n²) for the distance term),
instead of n²·(3·d_s + d_t + 4·n) unchunked. Measured (docs/loss_memory.md), n = 512,
d_s = d_t = 512, float32, forward + backward: 394 MiB with c = 64, 106 MiB with c = 16,
3.0 GiB unchunked.

Example::

    >>> loss_fn = RKDLoss(dist_weight=1.0, angle_weight=2.0, chunk_size=64)
    >>> student = torch.randn(180, 128, requires_grad=True)   # (n, d_s)
    >>> teacher = torch.randn(180, 512)                       # (n, d_t)
    >>> loss_fn(student, teacher).backward()
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from .common import check_pair_inputs, compute_dtype, full_precision, pairwise_distances


def mean_normalised_distances(x: Tensor) -> Tensor:
    """(n, n) Euclidean distances divided by their mean over the positive (off-diagonal) entries."""
    d = pairwise_distances(x)
    return d / d[d > 0].mean()


def _angles(x: Tensor, start: int, stop: int) -> Tensor:
    """(c, n, n) cosines <e_ab, e_ac> for vertices a in [start, stop); e_ab = unit(x_b - x_a)."""
    diff = x[None, :, :] - x[start:stop, None, :]  # (c, n, d): [a, b] = x_b - x_a
    unit = F.normalize(diff, p=2, dim=2)
    return torch.bmm(unit, unit.transpose(1, 2))


def _angle_chunk_sum(s: Tensor, t: Tensor, start: int, stop: int) -> Tensor:
    with torch.no_grad():
        t_angle = _angles(t, start, stop)
    return F.smooth_l1_loss(_angles(s, start, stop), t_angle, reduction="sum", beta=1.0)


def rkd_angle_term(s: Tensor, t: Tensor, chunk_size: int | None = None) -> Tensor:
    """Mean smooth-L1 over the full (n, n, n) angle tensor, in chunks of vertices."""
    n = s.shape[0]
    step = n if chunk_size is None else chunk_size
    recompute = torch.is_grad_enabled() and s.requires_grad and n > step
    total = s.new_zeros(())
    for start in range(0, n, step):
        stop = min(start + step, n)
        if recompute:  # keep only the inputs; rebuild this chunk's graph during backward
            total = total + checkpoint(_angle_chunk_sum, s, t, start, stop, use_reentrant=False,
                                       preserve_rng_state=False)
        else:
            total = total + _angle_chunk_sum(s, t, start, stop)
    return total / n ** 3


def rkd_distance_term(s: Tensor, t: Tensor) -> Tensor:
    """Mean smooth-L1 over the full (n, n) matrix of mean-normalised distances."""
    with torch.no_grad():
        t_d = mean_normalised_distances(t)
    return F.smooth_l1_loss(mean_normalised_distances(s), t_d, beta=1.0)


class RKDLoss(nn.Module):
    """RKD distance + angle loss between student and teacher embeddings.

    Args:
        dist_weight: Weight of the distance term (paper: 1). 0 skips it.
        angle_weight: Weight of the angle term (paper: 2). 0 skips it.
        chunk_size: Anchors per chunk of the O(n³) angle term (None: one chunk of n).

    Shapes: ``student`` (n, d_s), ``teacher`` (n, d_t) → scalar. The teacher gets no gradient.
    """

    def __init__(self, dist_weight: float = 1.0, angle_weight: float = 2.0, chunk_size: int | None = 64):
        super().__init__()
        if dist_weight < 0 or angle_weight < 0 or dist_weight + angle_weight == 0:
            raise ValueError(f"dist_weight and angle_weight must be >= 0 and not both 0, got "
                             f"{dist_weight} and {angle_weight}")
        if chunk_size is not None and (isinstance(chunk_size, bool) or not isinstance(chunk_size, int)
                                       or chunk_size < 1):
            raise ValueError(f"chunk_size must be a positive int or None, got {chunk_size!r}")
        self.dist_weight = float(dist_weight)
        self.angle_weight = float(angle_weight)
        self.chunk_size = chunk_size

    @full_precision
    def forward(self, student: Tensor, teacher: Tensor) -> Tensor:
        check_pair_inputs(student, teacher)
        s = student.to(compute_dtype(student))
        t = teacher.detach().to(s.dtype)
        loss = s.new_zeros(())
        if self.dist_weight:
            loss = loss + self.dist_weight * rkd_distance_term(s, t)
        if self.angle_weight:
            loss = loss + self.angle_weight * rkd_angle_term(s, t, self.chunk_size)
        return loss

    def extra_repr(self) -> str:
        return f"dist_weight={self.dist_weight}, angle_weight={self.angle_weight}, chunk_size={self.chunk_size}"
