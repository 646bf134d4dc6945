"""Regression (FitNet-style hint) loss: a learned linear map of the student embedding regresses
the teacher embedding (Romero et al., "FitNets: Hints for Thin Deep Nets", ICLR 2015)::

    L = (1/(n·d_t)) Σ_i ||W s_i + b - t_i||²      (W, b: nn.Linear(student_dim, teacher_dim))

Unlike the relational losses this module has parameters (``self.proj``). They are trained
together with the student: the TransferModule must hand the loss's parameters to the optimiser
(e.g. ``list(student.parameters()) + list(loss.parameters())``), otherwise W stays at its
random initialisation. The teacher gets no gradient. The projection is applied in float64 when
the student embedding is float64 (the float32 parameters are cast, gradients flow back).

Example::

    >>> loss_fn = RegressionLoss(student_dim=128, teacher_dim=512)
    >>> student = torch.randn(64, 128, requires_grad=True)   # (n, d_s)
    >>> teacher = torch.randn(64, 512)                       # (n, d_t)
    >>> loss_fn(student, teacher).backward()                # grads for student and loss_fn.proj
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn

from .common import check_pair_inputs, compute_dtype, full_precision


class RegressionLoss(nn.Module):
    """MSE between ``Linear(student_dim, teacher_dim)(student)`` and the teacher embedding.

    Args:
        student_dim: d_s, width of the student embedding.
        teacher_dim: d_t, width of the teacher embedding.
        bias: Whether the linear map has a bias.

    Shapes: ``student`` (n, d_s), ``teacher`` (n, d_t) → scalar.
    """

    def __init__(self, student_dim: int, teacher_dim: int, bias: bool = True):
        super().__init__()
        if student_dim < 1 or teacher_dim < 1:
            raise ValueError(f"student_dim and teacher_dim must be >= 1, got {student_dim} and {teacher_dim}")
        self.proj = nn.Linear(student_dim, teacher_dim, bias=bias)

    @full_precision
    def forward(self, student: Tensor, teacher: Tensor) -> Tensor:
        check_pair_inputs(student, teacher, min_rows=1)
        if (student.shape[1], teacher.shape[1]) != (self.proj.in_features, self.proj.out_features):
            raise ValueError(f"RegressionLoss was built for d_s={self.proj.in_features}, "
                             f"d_t={self.proj.out_features}, got {student.shape[1]} and {teacher.shape[1]}")
        dtype = compute_dtype(student)
        bias = None if self.proj.bias is None else self.proj.bias.to(dtype)
        pred = F.linear(student.to(dtype), self.proj.weight.to(dtype), bias)
        return F.mse_loss(pred, teacher.detach().to(dtype))
