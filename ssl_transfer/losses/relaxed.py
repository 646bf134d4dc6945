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

Large batches: ``block_size=B`` computes the same loss over row blocks of B anchors. A row
block holds full rows of D, so each row mean is exact within its block; every block is
recomputed in the backward pass (activation checkpointing), so forward + backward keep only
O(B·n) intermediates alive instead of O(n²), with the same value and gradient up to rounding.

Example::

    >>> loss_fn = RelaxedContrastiveLoss(sigma=1.0, delta=1.0)
    >>> student = torch.randn(8, 64, requires_grad=True)   # (n, d_s)
    >>> teacher = torch.randn(8, 512)                      # (n, d_t)
    >>> loss = loss_fn(student, teacher)
    >>> loss.backward()
"""

from __future__ import annotations

import functools

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

EPS_SQ = 1e-12  # clamp of squared distances before the square root


def _compute_dtype(x: Tensor) -> torch.dtype:
    return torch.float64 if x.dtype == torch.float64 else torch.float32


def full_precision(forward):
    """Decorator for a loss's ``forward(student, teacher, ...)``: autocast is off inside it, so
    the losses compute in float32 (float64 for float64 inputs) also when the training step runs
    under mixed precision (``trainer.precision: 16-mixed`` / ``bf16-mixed``), where Gram
    matrices and pairwise distances in half precision lose their small differences to
    cancellation. Half-precision inputs are upcast by the losses themselves."""

    @functools.wraps(forward)
    def wrapper(self, student: Tensor, teacher: Tensor, *args, **kwargs):
        with torch.autocast(device_type=student.device.type, enabled=False):
            return forward(self, student, teacher, *args, **kwargs)

    return wrapper


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


def unit_scale(s: Tensor) -> Tensor:
    """``s`` divided by its (detached) root-mean-square norm.

    D̃ is invariant to a global scale of the student, so this changes neither the loss nor its
    gradient mathematically (with c = rms(s) detached, ∇_s L(s / c) = ∇L(s) by scale invariance);
    numerically it keeps squared distances O(1): no overflow to inf (inf - inf = NaN in the
    Gram formula) when a scale-invariant loss lets the embedding norm grow step after step,
    and the 1e-12 clamp acts at the same relative scale whatever the norm.
    """
    return s / _safe_rms(s)


@torch.no_grad()
def _safe_rms(s: Tensor) -> Tensor:
    """Root-mean-square row norm of ``s`` (detached), computed without overflow by scaling by
    the largest entry first; 1 when it is 0 or not finite."""
    peak = s.abs().amax().clamp_min(torch.finfo(s.dtype).tiny)
    rms = peak * ((s / peak) ** 2).sum(dim=1).mean().sqrt()
    return torch.where(torch.isfinite(rms) & (rms > 0), rms, torch.ones_like(rms))


def row_normalised_distances(student: Tensor) -> Tensor:
    """D̃ (n, n): student distances divided by their row mean (diagonal zero included)."""
    s = unit_scale(student.to(_compute_dtype(student)))
    d = pairwise_distances(s)
    return d / d.mean(dim=1, keepdim=True)


def _relaxed_block_sum(s: Tensor, t_hat: Tensor, start: int, stop: int, sigma: float, delta: float) -> Tensor:
    """Σ over anchors i in [start, stop) of the loss terms of row i (full rows: exact row means).

    s: student (n, d_s) in its compute dtype; t_hat: L2-normalised teacher (n, d_t), no gradient.
    Same arithmetic as the dense path, restricted to rows [start, stop): intermediates (B, n).
    """
    n = s.shape[0]
    sq_norms = (s * s).sum(dim=1)
    sq = (sq_norms[start:stop, None] + sq_norms[None, :] - 2.0 * (s[start:stop] @ s.T)).clamp_min(EPS_SQ)
    rows = torch.arange(start, stop, device=s.device)
    off_diag = rows[:, None] != torch.arange(n, device=s.device)[None, :]
    d = sq.sqrt() * off_diag
    d = d / d.mean(dim=1, keepdim=True)  # (B, n)
    with torch.no_grad():
        w = torch.exp(-(2.0 - 2.0 * (t_hat[start:stop] @ t_hat.T)).clamp_min(0.0) / sigma).to(d.dtype)
    pull = w * d.pow(2)
    push = (1.0 - w) * F.relu(delta - d).pow(2)
    return torch.where(d > 0, pull + push, torch.zeros_like(d)).sum()


def _sym_addmm_(out: Tensor, x: Tensor, alpha: float) -> Tensor:
    """``out += alpha · x xᵀ`` in place for a symmetric ``out`` (n, n): the two diagonal blocks
    and one off-diagonal block by matmul, the other block mirrored (3/4 of the multiply-adds)."""
    h = x.shape[0] // 2
    if h < 64:
        return out.addmm_(x, x.T, alpha=alpha)
    x1, x2 = x[:h], x[h:]
    out[:h, :h].addmm_(x1, x1.T, alpha=alpha)
    out[h:, h:].addmm_(x2, x2.T, alpha=alpha)
    out[h:, :h].addmm_(x2, x1.T, alpha=alpha)
    out[:h, h:].copy_(out[h:, :h].T)
    return out


@torch.no_grad()
def _relaxed_labels_fused(teacher: Tensor, sigma: float) -> Tensor:
    """:func:`teacher_relaxed_labels` with one (n, n) buffer: with g = t̂ t̂ᵀ,
    -||t̂_i - t̂_j||² / sigma = (2 g - 2) / sigma is one symmetric ``addmm``; clamp at 0, exp."""
    t = F.normalize(teacher.to(_compute_dtype(teacher)), dim=1)
    out = torch.full((t.shape[0], t.shape[0]), -2.0 / sigma, dtype=t.dtype, device=t.device)
    return _sym_addmm_(out, t, 2.0 / sigma).clamp_max_(0.0).exp_()


# Fast path of the unit scaling: mean squared norms inside this range are used as they are
# (no overflow or loss of precision in float32 Gram entries); outside it, unit_scale() first.
_SAFE_MEAN_SQ = (1e-20, 1e20)


class _DenseRelaxedContrastive(torch.autograd.Function):
    """The dense loss with its gradient written out: same value and gradient as autograd on
    the formula, up to rounding (tests/test_relaxed_loss.py), in fewer passes (docs/speed.md).

    With u = s / rms(s) (the unit-scale student, rms detached), r_i = ||u_i||²,
    sq_ij = r_i + r_j - 2 u_i·u_j clamped at 1e-12, D = sqrt(sq) (D_ii = 0), m_i = row mean
    of D, D̃ = D / m and M = off-diagonal (D̃ > 0 there, as the loss's mask requires):

        A_ij = (2/n) M_ij (w_ij D̃_ij - (1 - w_ij) max(0, delta - D̃_ij))     = ∂L/∂D̃_ij
        P_ij = [sq_ij unclamped] (A_ij - (1/n) Σ_k A_ik D̃_ik) / (2 m_i² D̃_ij) = ∂L/∂sq_ij
        ∂L/∂u = 2 (diag((P + Pᵀ) 1) - (P + Pᵀ)) u,   ∂L/∂s = ∂L/∂u / rms

    Autograd on the formula allocates about 20 (n, n) intermediates, keeps a dozen for the
    backward pass and runs two n×n×d matmuls there. Here: three (n, n) allocations, the rest in
    place; the loss value falls out of the gradient's terms; one (n, n) matrix, P + Pᵀ, kept
    (only when the student needs a gradient); one backward matmul; both Gram matrices (teacher
    and student) computed as symmetric (3/4 of the multiply-adds); the 1 / rms² scale folded
    into the Gram instead of materialising u. Timings: docs/speed.md.
    """

    @staticmethod
    def forward(ctx, s: Tensor, teacher: Tensor, sigma: float, delta: float, need_grad: bool) -> Tensor:
        # Three (n, n) buffers are allocated, every other step works in place on them:
        # `dist` (sq -> D -> D̃ -> D̃ m²), `w` (w -> a -> n P) and `buf` (h -> (1 - w) h -> a D̃ -> q).
        n = s.shape[0]
        w = _relaxed_labels_fused(teacher, sigma).to(s.dtype)  # (n, n)
        sq_norms = (s * s).sum(dim=1)  # (n,)
        mean_sq = float(sq_norms.mean())
        pre = 1.0  # s is divided by `pre` first off the fast path (extreme scale, non-finite)
        if not _SAFE_MEAN_SQ[0] < mean_sq < _SAFE_MEAN_SQ[1]:
            pre = float(_safe_rms(s))
            s = s / pre
            sq_norms = (s * s).sum(dim=1)
            mean_sq = float(sq_norms.mean())
        inv = 1.0 / mean_sq if mean_sq > 0 else 1.0  # 1 / rms²: u = s / rms without forming u
        r = sq_norms * inv
        dist = _sym_addmm_(r[:, None] + r[None, :], s, -2.0 * inv)  # sq_ij of u
        dist.fill_diagonal_(1.0)  # D_ii is set to 0 below; keep the diagonal out of the clamp test
        clamped = (dist < EPS_SQ) if need_grad and float(dist.amin()) < EPS_SQ else None
        dist.clamp_min_(EPS_SQ).sqrt_()  # D
        dist.fill_diagonal_(0.0)
        m = dist.mean(dim=1, keepdim=True)  # (n, 1) row means, zero diagonal included
        d_t = dist.div_(m)  # D̃
        buf = torch.rsub(d_t, delta).clamp_min_(0.0)  # h = max(0, delta - D̃)
        push = buf.addcmul_(w, buf, value=-1.0)  # (1 - w) h
        push.fill_diagonal_(0.0)
        a = w.mul_(d_t).sub_(push)  # w D̃ - (1 - w) h = (n/2) ∂L/∂D̃ off the diagonal
        a.fill_diagonal_(0.0)
        push_sum = push.sum()
        row = torch.mul(a, d_t, out=buf).sum(dim=1, keepdim=True)  # (n, 1) Σ_k a_ik D̃_ik
        # per pair w D̃² + (1 - w) h² = a D̃ + (1 - w) h (h + D̃) = a D̃ + delta (1 - w) h,
        # as h + D̃ = delta wherever h > 0: the loss comes out of the gradient's terms
        loss = (row.sum() + delta * push_sum) / n
        if need_grad:
            p = a.sub_(row.div_(n)).div_(d_t.mul_(m * m))  # n P = (a - row / n) / (m² D̃)
            p.fill_diagonal_(0.0)
            if clamped is not None:
                p.masked_fill_(clamped, 0.0)
            ctx.save_for_backward(s, torch.add(p, p.T, out=buf))  # q = n (P + Pᵀ), symmetric
            ctx.scale = 2.0 * inv / (n * pre)
        return loss

    @staticmethod
    def backward(ctx, grad_loss: Tensor):
        s, q = ctx.saved_tensors
        # ∂L/∂s = 2 (diag(Q 1) - Q) u / rms with Q = q / n and u = s / rms
        c = ctx.scale * float(grad_loss)
        with torch.autocast(device_type=s.device.type, enabled=False):
            grad = torch.addmm(s * (q.sum(dim=1, keepdim=True) * c), q, s, alpha=-c)
        return grad, None, None, None, None


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
            return self._blocked(student, teacher)
        s = student.to(_compute_dtype(student))
        need_grad = torch.is_grad_enabled() and s.requires_grad
        return _DenseRelaxedContrastive.apply(s, teacher.detach(), self.sigma, self.delta, need_grad)

    def _blocked(self, student: Tensor, teacher: Tensor) -> Tensor:
        s = unit_scale(student.to(_compute_dtype(student)))
        t_hat = F.normalize(teacher.detach().to(_compute_dtype(teacher)), dim=1)
        n, step = s.shape[0], self.block_size
        recompute = torch.is_grad_enabled() and s.requires_grad and n > step
        total = s.new_zeros(())
        for start in range(0, n, step):
            args = (s, t_hat, start, min(start + step, n), self.sigma, self.delta)
            if recompute:  # keep only the inputs; rebuild the block's graph during backward
                total = total + checkpoint(_relaxed_block_sum, *args, use_reentrant=False,
                                           preserve_rng_state=False)
            else:
                total = total + _relaxed_block_sum(*args)
        return total / n

    def extra_repr(self) -> str:
        extra = "" if self.block_size is None else f", block_size={self.block_size}"
        return f"sigma={self.sigma}, delta={self.delta}{extra}"
