"""The dense relaxed contrastive loss with its forward and backward passes written by hand.

Same value and gradient as autograd on the formula of :mod:`ssl_transfer.losses.relaxed` (up to
rounding; tests/test_relaxed_fused.py), in fewer passes and far less memory (docs/speed.md).
This is what ``RelaxedContrastiveLoss()`` runs; ``block_size=B`` runs
:mod:`~ssl_transfer.losses.relaxed_blocked` instead.

The gradient is first order only: the backward pass is ``once_differentiable``, so a second
derivative through it (``torch.autograd.grad(..., create_graph=True)`` and a second ``grad``)
raises a RuntimeError instead of returning a wrong one. Use ``block_size`` (pure autograd) or
:func:`~ssl_transfer.losses.relaxed.relaxed_contrastive_loss` for higher derivatives.
"""

from __future__ import annotations

import functools

import torch
from torch import Tensor
from torch.autograd.function import once_differentiable

from .common import EPS_SQ, centre_and_scale, compute_dtype, unit_rows

# Fast path of the unit scaling: mean squared norms (of the centred student) inside this range
# are used as they are (no overflow or loss of precision in float32 Gram entries); outside it,
# centre_and_scale() first.
SAFE_MEAN_SQ = (1e-20, 1e20)


def sym_addmm_(out: Tensor, x: Tensor, alpha: float) -> Tensor:
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
def relaxed_labels_fused(teacher: Tensor, sigma: float) -> Tensor:
    """:func:`~ssl_transfer.losses.relaxed.teacher_relaxed_labels` with one (n, n) buffer: with
    r_i = ||t̂_i||² (0 for a zero row) and g = t̂ t̂ᵀ, -||t̂_i - t̂_j||² / sigma =
    (2 g_ij - r_i - r_j) / sigma is an outer sum and one symmetric ``addmm``; clamp at 0, exp."""
    t, r = unit_rows(teacher.to(compute_dtype(teacher)))
    r = r * (-1.0 / sigma)
    out = r[:, None] + r[None, :]
    return sym_addmm_(out, t, 2.0 / sigma).clamp_max_(0.0).exp_()


class _SecondDerivativeError(torch.autograd.Function):
    """``grad`` unchanged, tied to ``student`` by a backward that raises: a first-order-only
    gradient returned under ``create_graph=True``."""

    @staticmethod
    def forward(ctx, grad: Tensor, student: Tensor) -> Tensor:
        return grad.clone()

    @staticmethod
    def backward(ctx, _):
        raise RuntimeError(
            "RelaxedContrastiveLoss (dense path) has a hand-written first-order gradient and cannot "
            "be differentiated twice; use RelaxedContrastiveLoss(block_size=...) or "
            "ssl_transfer.losses.relaxed.relaxed_contrastive_loss (autograd) for second derivatives")


def _error_if_differentiated(backward):
    """Completes ``once_differentiable`` for :class:`DenseRelaxedContrastive`. That decorator
    attaches its error node only when the incoming gradient requires grad, and to a detached
    copy of the gradient: ``torch.autograd.grad(loss, s, create_graph=True)`` followed by a
    second ``torch.autograd.grad(..., s)`` would find no path to ``s`` through the loss and
    silently treat its gradient as constant (wrong wherever other terms are differentiated
    twice). Under ``create_graph=True`` the gradient returned here is tied to the saved
    student input (``ctx.saved_tensors[0]``) by a node that raises when differentiated."""

    @functools.wraps(backward)
    def wrapper(ctx, *grads):
        outputs = backward(ctx, *grads)
        if not torch.is_grad_enabled():  # create_graph=False: the usual case
            return outputs
        student = ctx.saved_tensors[0]
        return tuple(_SecondDerivativeError.apply(o.detach(), student) if isinstance(o, Tensor) else o
                     for o in outputs)

    return wrapper


class DenseRelaxedContrastive(torch.autograd.Function):
    """The dense loss with its gradient written out.

    With u = (s - mean(s)) / rms (the centred unit-scale student; mean and rms detached),
    r_i = ||u_i||², sq_ij = r_i + r_j - 2 u_i·u_j clamped at 1e-12, D = sqrt(sq) (D_ii = 0),
    m_i = row mean of D, D̃ = D / m and M = off-diagonal (D̃ > 0 there, as the loss's mask
    requires)::

        A_ij = (2/n) M_ij (w_ij D̃_ij - (1 - w_ij) max(0, delta - D̃_ij))     = ∂L/∂D̃_ij
        P_ij = [sq_ij unclamped] (A_ij - (1/n) Σ_k A_ik D̃_ik) / (2 m_i² D̃_ij) = ∂L/∂sq_ij
        ∂L/∂u = 2 (diag((P + Pᵀ) 1) - (P + Pᵀ)) u,   ∂L/∂s = ∂L/∂u / rms

    Autograd on the formula allocates about 20 (n, n) intermediates, keeps a dozen for the
    backward pass and runs two n×n×d matmuls there. Here: three (n, n) allocations, the rest in
    place; the loss value falls out of the gradient's terms; one (n, n) matrix, P + Pᵀ, kept
    (only when the student needs a gradient); one backward matmul; both Gram matrices (teacher
    and student) computed as symmetric (3/4 of the multiply-adds); the 1 / rms² scale folded
    into the Gram instead of materialising u. Timings: docs/speed.md.

    First order only: P + Pᵀ is saved as a constant, so a second derivative through this
    backward would be wrong; it raises RuntimeError instead (``once_differentiable``, and
    :func:`_error_if_differentiated` for a ``create_graph=True`` call whose incoming gradient
    needs no grad).
    """

    @staticmethod
    def forward(ctx, student: Tensor, teacher: Tensor, sigma: float, delta: float, need_grad: bool) -> Tensor:
        # Three (n, n) buffers are allocated, every other step works in place on them:
        # `dist` (sq -> D -> D̃ -> D̃ m²), `w` (w -> a -> n P) and `buf` (h -> (1 - w) h -> a D̃ -> q).
        n = student.shape[0]
        w = relaxed_labels_fused(teacher, sigma).to(student.dtype)  # (n, n)
        s = student - student.mean(dim=0, keepdim=True)  # centred: precise Gram distances
        sq_norms = (s * s).sum(dim=1)  # (n,)
        mean_sq = float(sq_norms.mean())
        k = 1.0  # u = s · k / rms: k = 1 on the fast path
        if not SAFE_MEAN_SQ[0] < mean_sq < SAFE_MEAN_SQ[1]:  # extreme scale or overflow (NaN too)
            s, k_t = centre_and_scale(student)
            k = float(k_t)
            sq_norms = (s * s).sum(dim=1)
            mean_sq = float(sq_norms.mean())
        inv = 1.0 / mean_sq if mean_sq > 0 else 1.0  # 1 / rms²: u = s / rms without forming u
        r = sq_norms * inv
        dist = sym_addmm_(r[:, None] + r[None, :], s, -2.0 * inv)  # sq_ij of u
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
            # the input (for _error_if_differentiated), the centred s, q = n (P + Pᵀ) symmetric
            ctx.save_for_backward(student, s, torch.add(p, p.T, out=buf))
            ctx.scale = 2.0 * inv * k / n
        return loss

    @staticmethod
    @_error_if_differentiated
    @once_differentiable
    def backward(ctx, grad_loss: Tensor):
        _, s, q = ctx.saved_tensors
        # ∂L/∂s = 2 (diag(Q 1) - Q) u · k / rms with Q = q / n and u = s · k / rms (the centring
        # mean is detached, so the gradient with respect to the centred s is the one for s)
        c = ctx.scale * float(grad_loss)
        with torch.autocast(device_type=s.device.type, enabled=False):
            grad = torch.addmm(s * (q.sum(dim=1, keepdim=True) * c), q, s, alpha=-c)
        return grad, None, None, None, None


def relaxed_contrastive_fused(student: Tensor, teacher: Tensor, sigma: float, delta: float) -> Tensor:
    """The dense loss (scalar) through :class:`DenseRelaxedContrastive`. ``student`` (n, d_s)
    in its compute dtype (float32 or float64); ``teacher`` (n, d_t), no gradient."""
    need_grad = torch.is_grad_enabled() and student.requires_grad
    return DenseRelaxedContrastive.apply(student, teacher.detach(), sigma, delta, need_grad)
