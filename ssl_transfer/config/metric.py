"""Config section ``metric`` (task: metric): read only by the metric-learning stages.

The metric-learning task (docs/metric_learning.md) runs a Proxy-Anchor teacher
(``source.method: proxy_anchor``) on the training classes, transfers its embedding with the
transfer stage on class-balanced batches, and evaluates Recall@K (``eval.recall_ks``), MAP@R and
NMI on classes never trained on: every choice on the validation classes (``data.val_classes``),
the test classes read once, last.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Literal

from ..errors import ConfigError
from .fields import opt

#: Backbones with a torchvision ResNet trunk (global pooling replaceable, ImageNet weights).
METRIC_BACKBONES = ("resnet18", "resnet34", "resnet50")


@dataclass
class MetricConfig:
    """Metric learning: the Proxy-Anchor source stage, the embedding networks, the evaluation.

    Proxy-Anchor (Kim et al., CVPR 2020; ``ssl_transfer.losses.ProxyAnchorLoss``): one proxy per
    training class, loss with margin δ (``margin``) and scale α (``alpha``); the proxies learn at
    ``proxy_lr_multiplier`` × the network's learning rate (``source.optimizer.lr``).
    """

    #: Proxy-Anchor margin δ and scale α (the paper: 0.1 and 32).
    margin: float = opt(0.1, gt=0, le=1)
    alpha: float = opt(32.0, gt=0, le=1000)
    #: Learning rate of the proxies relative to the network's (the paper: 100).
    proxy_lr_multiplier: float = opt(100.0, gt=0, le=1e6)
    #: Epochs at the start of the source stage that train only the embedding head and the proxies
    #: (the backbone's gradients are dropped); 0: none. The paper: 1 (5 for BN-Inception on CUB).
    warmup_epochs: float = opt(1.0, ge=0, le=1e5)
    #: Proxy-Anchor stages (teacher, teacher continued): BatchNorm layers of the backbone keep their
    #: (ImageNet) running statistics and affine parameters fixed. For pretrained backbones only.
    bn_freeze: bool = False
    #: Proxy-Anchor: clip every gradient element to [-v, v] before the step (the reference code:
    #: 10); null: no clipping.
    grad_clip_value: float | None = opt(10.0, gt=0, le=1e6)
    #: Teacher embedding dimension (the linear head on the pooled backbone feature).
    embed_dim: int = opt(512, ge=1, le=65536)
    #: Global pooling of the last feature map, for teacher and students: ``avg_max`` (average +
    #: max, as the Proxy-Anchor and LabelRelaxation networks), ``avg`` (torchvision's) or ``max``.
    pooling: Literal["avg", "max", "avg_max"] = "avg_max"
    #: ImageNet weights of the teacher's backbone (a torchvision state dict file, e.g.
    #: resnet50-0676ba61.pth; a relative path is read from the working directory); never
    #: downloaded, checked when a run starts, before anything is written. null: random init.
    imagenet_weights: str | None = None
    #: ImageNet weights of a student not initialised from the teacher (``transfer.student_init:
    #: scratch``); null: ``imagenet_weights`` when the student has the teacher's architecture,
    #: else random initialisation. (LabelRelaxation's students start from ImageNet weights.)
    student_imagenet_weights: str | None = None
    #: Choose each stage's weights on the validation classes: evaluate every this many epochs (and
    #: at the end) and keep the best ``select_metric``; 0: the final weights.
    select_every: float = opt(0.0, ge=0, le=1e5)
    select_metric: Literal["recall@1", "map@r"] = "recall@1"
    #: Also report NMI (k-means with one cluster per class; slow for SOP's 11k test classes).
    nmi: bool = True
    #: Queries per similarity chunk of the retrieval metrics: memory ~ 16 x chunk_size x n bytes.
    chunk_size: int = opt(1024, ge=1, le=2**20)

    def validate(self, root) -> None:
        task, source = root.task, root.source
        if source.method == "proxy_anchor" and task != "metric":
            raise ConfigError(f"source.method = proxy_anchor belongs to task metric, not {task}; set task: metric "
                              "(or run ssl-transfer metric CONFIG)")
        if task != "metric":
            return
        if source.method != "proxy_anchor":
            raise ConfigError(f"task metric trains a Proxy-Anchor teacher, but source.method = {source.method}; "
                              "set source.method: proxy_anchor")
        for key, arch in (("source.backbone", source.backbone), ("transfer.student_backbone",
                                                                 root.transfer.student_backbone or source.backbone)):
            if arch not in METRIC_BACKBONES:
                raise ConfigError(f"{key} = {arch} is not a ResNet; task metric's embedding networks use "
                                  f"{', '.join(METRIC_BACKBONES)}")
        if root.data.val_classes is None:
            raise ConfigError("task metric chooses on whole held-out training classes, but data.val_classes is "
                              "not set; set data.val_classes (e.g. 20 for CUB's 100 training classes)")
        if root.transfer.teacher_output != "backbone":
            raise ConfigError("task metric transfers the teacher's embedding (backbone + head); remove "
                              "transfer.teacher_output: projection")
        if root.eval.knn_monitor_every > 0:
            raise ConfigError("eval.knn_monitor_every classifies validation classes with a bank of training "
                              "classes, meaningless in task metric; use metric.select_every to follow (and "
                              "choose on) validation retrieval instead")


def check_weights_file(path: str | None, key: str) -> None:
    """A one-line ConfigError when a named weights file is not a readable file (nothing is ever
    downloaded). Called when a run starts (``plan`` of task metric) and by the loader."""
    if path is None:
        return
    if not os.path.isfile(path):
        raise ConfigError(f"{key} = '{path}' is not a file; ImageNet weights are never downloaded: save "
                          "torchvision's state dict (e.g. resnet50-0676ba61.pth) there, or set "
                          f"{key}: null to start from random weights")
    if not os.access(path, os.R_OK):
        raise ConfigError(f"{key} = '{path}' cannot be read; check its permissions")
