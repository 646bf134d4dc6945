"""Transfer losses, each called as ``loss(student, teacher)`` → scalar (teacher: no gradient).

``LOSSES`` maps config names to the embedding-transfer losses; ``registry`` checks a config's
``loss_args`` against their constructors and builds them (:func:`build_loss`). ``KDLoss`` takes
logits (classification transfer) and is not registered. ``ProxyAnchorLoss`` (the metric-learning
source stage) takes embeddings and labels. ``RegressionLoss`` has trainable parameters and needs
``student_dim``/``teacher_dim``, which the stage supplies.
"""

from .darkrank import DarkRankLoss
from .kd import KDLoss
from .pkt import PKTLoss
from .proxy_anchor import ProxyAnchorLoss
from .registry import LOSSES, build_loss, resolve_loss_args
from .regression import RegressionLoss
from .relaxed import RelaxedContrastiveLoss
from .relaxed_ms import RelaxedMSLoss
from .rkd import RKDLoss

__all__ = [
    "LOSSES",
    "DarkRankLoss",
    "KDLoss",
    "PKTLoss",
    "ProxyAnchorLoss",
    "RKDLoss",
    "RegressionLoss",
    "RelaxedContrastiveLoss",
    "RelaxedMSLoss",
    "build_loss",
    "resolve_loss_args",
]
