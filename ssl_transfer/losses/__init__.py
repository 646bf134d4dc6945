"""Transfer losses, each called as ``loss(student, teacher)`` → scalar (teacher: no gradient).

``LOSSES`` maps config names to the embedding-transfer losses. ``KDLoss`` takes logits (for
classification transfer) and is exported but not registered. ``RegressionLoss`` has trainable
parameters and needs ``student_dim``/``teacher_dim``.
"""

from .darkrank import DarkRankLoss
from .kd import KDLoss
from .pkt import PKTLoss
from .regression import RegressionLoss
from .relaxed import RelaxedContrastiveLoss
from .relaxed_ms import RelaxedMSLoss
from .rkd import RKDLoss

LOSSES = {
    "relaxed_contrastive": RelaxedContrastiveLoss,
    "relaxed_ms": RelaxedMSLoss,
    "rkd": RKDLoss,
    "pkt": PKTLoss,
    "darkrank": DarkRankLoss,
    "regression": RegressionLoss,
}

__all__ = [
    "LOSSES",
    "DarkRankLoss",
    "KDLoss",
    "PKTLoss",
    "RKDLoss",
    "RegressionLoss",
    "RelaxedContrastiveLoss",
    "RelaxedMSLoss",
]
