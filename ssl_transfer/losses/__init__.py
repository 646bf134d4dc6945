"""Transfer losses, each called as ``loss(student, teacher)`` → scalar (teacher: no gradient)."""

from .relaxed import RelaxedContrastiveLoss

LOSSES = {"relaxed_contrastive": RelaxedContrastiveLoss}

__all__ = ["LOSSES", "RelaxedContrastiveLoss"]
