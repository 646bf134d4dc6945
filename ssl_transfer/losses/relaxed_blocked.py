"""The relaxed contrastive loss over row blocks, for large batches (``block_size=B``).

A row block holds B full rows of D, so each row mean is exact within its block; the loss is
the sum of the blocks' terms divided by n. With gradients, every block is recomputed in the
backward pass (activation checkpointing), so forward + backward keep only O(B·n) intermediates
alive instead of O(n²), with the same value and gradient as the dense loss up to rounding
(tests/test_losses_blocked.py). Pure autograd: second derivatives are exact too.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.utils.checkpoint import checkpoint

from .common import EPS_SQ, centred_unit_scale, compute_dtype, unit_rows


def relaxed_rows_sum(u: Tensor, t_hat: Tensor, t_sq: Tensor, start: int, stop: int,
                     sigma: float, delta: float) -> Tensor:
    """Σ over anchors i in [start, stop) of the loss terms of row i (intermediates (B, n)).

    u: centred unit-scale student (n, d_s) in its compute dtype; t_hat: L2-normalised teacher
    (n, d_t) and t_sq its squared row norms (n,) (1, or 0 for a zero row), no gradient.
    """
    n = u.shape[0]
    sq_norms = (u * u).sum(dim=1)
    sq = (sq_norms[start:stop, None] + sq_norms[None, :] - 2.0 * (u[start:stop] @ u.T)).clamp_min(EPS_SQ)
    rows = torch.arange(start, stop, device=u.device)
    off_diag = rows[:, None] != torch.arange(n, device=u.device)[None, :]
    d = sq.sqrt() * off_diag
    d = d / d.mean(dim=1, keepdim=True)  # (B, n) D̃
    with torch.no_grad():
        t_dist = t_sq[start:stop, None] + t_sq[None, :] - 2.0 * (t_hat[start:stop] @ t_hat.T)
        w = torch.exp(-t_dist.clamp_min(0.0) / sigma).to(d.dtype)
    pull = w * d.pow(2)
    push = (1.0 - w) * F.relu(delta - d).pow(2)
    return torch.where(d > 0, pull + push, torch.zeros_like(d)).sum()


def relaxed_contrastive_blocked(student: Tensor, teacher: Tensor, sigma: float, delta: float,
                                block_size: int) -> Tensor:
    """The loss (scalar) over row blocks of ``block_size`` anchors, each block recomputed in the
    backward pass when the student needs a gradient and there is more than one block."""
    u = centred_unit_scale(student.to(compute_dtype(student)))
    t_hat, t_sq = unit_rows(teacher.detach().to(compute_dtype(teacher)))
    n, step = u.shape[0], block_size
    recompute = torch.is_grad_enabled() and u.requires_grad and n > step
    total = u.new_zeros(())
    for start in range(0, n, step):
        args = (u, t_hat, t_sq, start, min(start + step, n), sigma, delta)
        if recompute:  # keep only the inputs; rebuild the block's graph during backward
            total = total + checkpoint(relaxed_rows_sum, *args, use_reentrant=False,
                                       preserve_rng_state=False)
        else:
            total = total + relaxed_rows_sum(*args)
    return total / n
