"""Knowledge distillation on logits (Hinton, Vinyals & Dean, "Distilling the Knowledge in a
Neural Network", 2015), for classification transfer::

    p = softmax(t / T),  q = softmax(s / T)
    L = T² · (1/n) Σ_i KL(p_i || q_i) = T² · (1/n) Σ_i Σ_c p_ic (log p_ic - log q_ic)

The T² factor keeps gradient magnitudes comparable across temperatures. Logits must be finite
(``common.check_logit_inputs``): a -inf logit in both p and q gives 0 · (-inf + inf) = NaN, so
masked classes are refused rather than silently producing a NaN loss. Inputs are logits,
not embeddings, so this loss is not in ``LOSSES``; add it to the cross-entropy of the student.

Example::

    >>> loss_fn = KDLoss(temperature=4.0)
    >>> student_logits = torch.randn(64, 100, requires_grad=True)   # (n, classes)
    >>> teacher_logits = torch.randn(64, 100)                       # (n, classes)
    >>> loss_fn(student_logits, teacher_logits).backward()
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn

from .common import check_logit_inputs, compute_dtype, full_precision


class KDLoss(nn.Module):
    """Temperature-softened KL(teacher || student) on logits, × T², averaged over the batch.

    Args:
        temperature: Softmax temperature T (> 0).

    Shapes: ``student`` (n, C), ``teacher`` (n, C) logits → scalar. The teacher gets no gradient.
    """

    def __init__(self, temperature: float = 4.0):
        super().__init__()
        if temperature <= 0:
            raise ValueError(f"temperature must be > 0, got {temperature}")
        self.temperature = float(temperature)

    @full_precision
    def forward(self, student: Tensor, teacher: Tensor) -> Tensor:
        check_logit_inputs(student, teacher)
        dtype = compute_dtype(student)
        T = self.temperature
        log_q = F.log_softmax(student.to(dtype) / T, dim=1)
        log_p = F.log_softmax(teacher.detach().to(dtype) / T, dim=1)
        return F.kl_div(log_q, log_p, reduction="batchmean", log_target=True) * T * T

    def extra_repr(self) -> str:
        return f"temperature={self.temperature}"
