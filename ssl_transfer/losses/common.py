"""Helpers shared by the losses: input checks, compute precision, pairwise distances, and the
centring / unit scaling of translation- and scale-invariant student embeddings.

Every loss calls :func:`check_pair_inputs` (or :func:`check_logit_inputs` for ``KDLoss``)
before computing anything, so that what a loss cannot compute is refused with an error instead
of coming back as a NaN, or worse a finite value with a NaN gradient:

- a numpy array (or anything that is not a ``torch.Tensor``): ``TypeError``, pass
  ``torch.from_numpy(x)``;
- integer, boolean or complex tensors: ``TypeError`` naming the dtype (embeddings and logits
  are real floating-point values);
- shapes: two (n, d) matrices with the same n, n >= 2 for the pairwise losses, d >= 1:
  ``ValueError``;
- NaN or infinite entries in the student or the teacher: ``ValueError``.

The finite check costs one reduction over each (n, d) input (a sum; only when the sum is not
finite, which an overflow can also cause, an exact elementwise test decides).
"""

from __future__ import annotations

import functools
import math

import torch
from torch import Tensor

EPS_SQ = 1e-12  # clamp of squared distances before the square root
NORM_EPS = 1e-12  # lower bound of a norm in a division (as torch.nn.functional.normalize)


def compute_dtype(x: Tensor) -> torch.dtype:
    """float64 for float64 inputs, float32 for everything else (half precision is upcast)."""
    return torch.float64 if x.dtype == torch.float64 else torch.float32


def full_precision(fn):
    """Decorator for a loss's ``forward(self, student, teacher, ...)`` (or a loss function
    ``fn(student, teacher, ...)``): autocast is off inside it, so the losses compute in float32
    (float64 for float64 inputs) also when the training step runs under mixed precision
    (``trainer.precision: 16-mixed`` / ``bf16-mixed``), where Gram matrices and pairwise
    distances in half precision lose their small differences to cancellation. Half-precision
    inputs are upcast by the losses themselves."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        tensor = next((a for a in args if isinstance(a, Tensor)), None)
        device_type = "cpu" if tensor is None else tensor.device.type
        with torch.autocast(device_type=device_type, enabled=False):
            return fn(*args, **kwargs)

    return wrapper


# ----------------------------------------------------------------------------- input checks


def check_tensor(x, name: str) -> None:
    """A real floating-point ``torch.Tensor``, else ``TypeError`` (numpy arrays: use
    ``torch.from_numpy``; integer, boolean and complex dtypes are named)."""
    if not isinstance(x, Tensor):
        kind = f"{type(x).__module__}.{type(x).__qualname__}"
        if type(x).__module__ == "numpy":
            raise TypeError(f"{name} must be a torch.Tensor, got a {kind}; pass a torch tensor "
                            f"(torch.from_numpy({name}))")
        raise TypeError(f"{name} must be a torch.Tensor, got {kind}; pass a torch tensor")
    if x.dtype == torch.bool or x.is_complex() or not x.is_floating_point():
        raise TypeError(f"{name} has dtype {x.dtype}; the losses need real floating-point "
                        f"embeddings or logits (float16, bfloat16, float32 or float64)")


def check_finite(x: Tensor, name: str) -> None:
    """``ValueError`` if ``x`` holds NaN or ±inf. One sum over ``x``: a finite sum means every
    entry is finite; a non-finite sum (a NaN or inf entry, or an overflow of the sum) falls
    back to the exact elementwise test."""
    with torch.no_grad():
        if bool(torch.isfinite(x.sum(dtype=compute_dtype(x)))):
            return
        bad = ~torch.isfinite(x)
        if bool(bad.any()):
            count = int(bad.sum())
            raise ValueError(f"{name} holds {count} NaN or infinite value(s) (first at index "
                             f"{tuple(bad.nonzero()[0].tolist())}); the loss of such a batch "
                             f"is undefined")


def check_pair_inputs(student: Tensor, teacher: Tensor, min_rows: int = 2) -> None:
    """Student (n, d_s) and teacher (n, d_t): tensors of a real floating dtype, same n >=
    ``min_rows``, d_s, d_t >= 1, every entry finite. TypeError / ValueError otherwise."""
    check_tensor(student, "student")
    check_tensor(teacher, "teacher")
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
    if student.shape[0] < min_rows:
        raise ValueError(f"the loss needs at least {min_rows} embedding(s) per batch, got "
                         f"{student.shape[0]}")
    if student.shape[1] < 1 or teacher.shape[1] < 1:
        raise ValueError(f"embeddings need at least one dimension, got shapes "
                         f"{tuple(student.shape)} and {tuple(teacher.shape)} (d = 0)")
    check_finite(student, "student")
    check_finite(teacher, "teacher")


def check_logit_inputs(student: Tensor, teacher: Tensor) -> None:
    """Student and teacher logits: tensors of a real floating dtype and the same (n, C) shape,
    n, C >= 1, every entry finite (a -inf logit makes KL(p || q) 0 · ∞). TypeError /
    ValueError otherwise."""
    check_tensor(student, "student")
    check_tensor(teacher, "teacher")
    if student.ndim != 2 or student.shape != teacher.shape:
        raise ValueError(f"expected student and teacher logits of the same (n, C) shape, got "
                         f"{tuple(student.shape)} and {tuple(teacher.shape)}")
    if student.shape[0] < 1 or student.shape[1] < 1:
        raise ValueError(f"logits need n >= 1 rows and C >= 1 classes, got shape {tuple(student.shape)}")
    check_finite(student, "student")
    check_finite(teacher, "teacher")


# ----------------------------------------------------------------------------- geometry


def pairwise_distances(x: Tensor) -> Tensor:
    """Euclidean distances (n, n) with sqrt(clamp(squared, 1e-12)) and an exact zero diagonal."""
    sq_norms = (x * x).sum(dim=1)
    sq = (sq_norms[:, None] + sq_norms[None, :] - 2.0 * (x @ x.T)).clamp_min(EPS_SQ)
    off_diag = ~torch.eye(x.shape[0], dtype=torch.bool, device=x.device)
    return sq.sqrt() * off_diag


def unit_rows(x: Tensor) -> tuple[Tensor, Tensor]:
    """x̂ = x / max(||x||, 1e-12) per row (as ``F.normalize``) and ||x̂||² per row.

    ||x̂||² is 1 for every row of norm >= 1e-12 and 0 for an all-zero row, which stays at the
    origin (below 1e-12 it is (||x|| / 1e-12)²). With it, r_i + r_j - 2 x̂_i·x̂_j is the
    squared distance ||x̂_i - x̂_j||² also for zero rows (2 - 2 x̂_i·x̂_j would give 2 where the
    distance to the origin is 1)."""
    norms = torch.linalg.vector_norm(x, dim=1, keepdim=True)
    denom = norms.clamp_min(NORM_EPS)
    return x / denom, (norms / denom).square().squeeze(1)


@torch.no_grad()
def safe_rms(s: Tensor) -> Tensor:
    """Root-mean-square row norm of ``s`` (detached), computed without overflow or underflow
    by scaling by the largest entry first; 1 when it is 0 or not finite."""
    peak = s.abs().amax().clamp_min(torch.finfo(s.dtype).tiny)
    rms = peak * ((s / peak) ** 2).sum(dim=1).mean().sqrt()
    return torch.where(torch.isfinite(rms) & (rms > 0), rms, torch.ones_like(rms))


@torch.no_grad()
def _power_of_two_and_mean(s: Tensor) -> tuple[Tensor, Tensor]:
    """p = 2^-e with 2^(e-1) <= max |s| < 2^e (e clamped so p is a normal number), and the
    batch mean of p·s. Scaling by a power of two is exact in floating point."""
    limit = math.frexp(torch.finfo(s.dtype).max)[1] - 8  # 120 for float32, 1016 for float64
    exponent = torch.frexp(s.abs().amax()).exponent.clamp(-limit, limit)
    p = torch.pow(2.0, (-exponent).to(s.dtype))
    return p, (s * p).mean(dim=0, keepdim=True)


def centre_and_scale(s: Tensor) -> tuple[Tensor, Tensor]:
    """(u, k): u = (s - mean) · k, the student centred on its batch mean and scaled to unit
    root-mean-square row norm; mean and k detached (k a 0-d tensor).

    For translation- and scale-invariant losses (the relaxed losses' D̃) this changes neither
    the loss nor its gradient mathematically (by the invariances, ∇_s L(u) = k ∇L(s)), and
    numerically:

    - centring: embeddings sharing a large common offset c (s_i = c + x_i, ||c|| ≫ ||x_i||)
      lose the x_i to cancellation in the Gram form ||s_i||² + ||s_j||² - 2 s_i·s_j; after
      centring the Gram entries are of the size of the distances themselves;
    - unit scale: squared distances stay O(1): no overflow to inf (inf - inf = NaN) when a
      scale-invariant loss lets the norm grow step after step, no underflow for tiny
      embeddings, and the 1e-12 clamp acts at the same relative scale whatever the norm.

    s is first multiplied by a power of two (exact) that brings its largest entry below 1, so
    the mean and the subtraction cannot overflow whatever the scale of s.
    """
    p, mean = _power_of_two_and_mean(s)
    c = s * p - mean
    rms = safe_rms(c)
    return c / rms, p / rms


def centred_unit_scale(s: Tensor) -> Tensor:
    """The ``u`` of :func:`centre_and_scale`: s centred on its (detached) batch mean and divided
    by its (detached) root-mean-square row norm."""
    return centre_and_scale(s)[0]
