"""Probabilistic knowledge transfer (Passalis & Tefas, "Learning Deep Representations with
Probabilistic Knowledge Transfer", ECCV 2018).

Follows the PKT authors' code (passalis/probabilistic_kt, ``nn/pkt.py``,
``cosine_similarity_loss``; RepDistiller's ``distiller_zoo/PKT.py`` is a copy of it)::

    x̂_i  = x_i / (||x_i|| + eps)                              (a zero vector stays zero)
    K_ij = (<x̂_i, x̂_j> + 1) / 2                               (cosine similarity mapped to [0, 1])
    p_ij = K^t_ij / Σ_k K^t_ik,   q_ij = K^s_ij / Σ_k K^s_ik   (row-normalised; teacher p, student q)
    L    = (1/n²) Σ_{i,j} p_ij log((p_ij + eps) / (q_ij + eps))

Diagonal: kept. The authors' code row-normalises the full n×n kernel matrix, self-similarity
K_ii = 1 included, and takes ``torch.mean`` over all n² entries; the paper's formula
(p_{i|j} = K_ij / Σ_{k≠j} K_kj) excludes k = j. We follow the code, as METHOD.md asks ("the PKT
authors' reduction"). Including it only adds, per row, the near-constant self term.

The norm uses ``torch.linalg.vector_norm`` (gradient 0 at a zero vector) instead of
sqrt(Σ x²) (infinite gradient there); the values agree up to rounding.

Example::

    >>> loss_fn = PKTLoss(eps=1e-7)
    >>> student = torch.randn(128, 64, requires_grad=True)   # (n, d_s)
    >>> teacher = torch.randn(128, 512)                      # (n, d_t)
    >>> loss_fn(student, teacher).backward()
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from .common import check_pair_inputs, compute_dtype, full_precision


def cosine_conditional_probabilities(x: Tensor, eps: float) -> Tensor:
    """(n, n) row-stochastic matrix of (cos + 1)/2 similarities, diagonal included."""
    x = x / (torch.linalg.vector_norm(x, dim=1, keepdim=True) + eps)
    k = (x @ x.T + 1.0) / 2.0
    return k / k.sum(dim=1, keepdim=True)


class PKTLoss(nn.Module):
    """KL divergence between teacher and student cosine-similarity conditional distributions.

    Args:
        eps: Added to norms and inside the log ratio, as in the authors' code (1e-7).

    Shapes: ``student`` (n, d_s), ``teacher`` (n, d_t) → scalar. The teacher gets no gradient.
    """

    def __init__(self, eps: float = 1e-7):
        super().__init__()
        if eps <= 0:
            raise ValueError(f"eps must be > 0, got {eps}")
        self.eps = float(eps)

    @full_precision
    def forward(self, student: Tensor, teacher: Tensor) -> Tensor:
        check_pair_inputs(student, teacher)
        s = student.to(compute_dtype(student))
        with torch.no_grad():
            p = cosine_conditional_probabilities(teacher.detach().to(s.dtype), self.eps)
        q = cosine_conditional_probabilities(s, self.eps)
        return (p * torch.log((p + self.eps) / (q + self.eps))).mean()

    def extra_repr(self) -> str:
        return f"eps={self.eps}"
