"""Source stage: SimCLR teacher pretraining with lightly's NT-Xent loss and projection head."""

from __future__ import annotations

import torch
from lightly.loss import NTXentLoss
from lightly.models.modules.heads import SimCLRProjectionHead

from ..config import SourceConfig
from ..models import build_backbone
from .base import StageModule


class SimCLRModule(StageModule):
    """SimCLR (Chen et al. 2020): backbone → projection head → NT-Xent over the stacked views.

    With more than two views every pair of views is contrasted and the losses averaged.
    ``gather_distributed=True`` makes negatives span all processes under DDP.
    """

    stage = "source"

    def __init__(self, cfg: SourceConfig, in_channels: int, batch_size: int):
        super().__init__()
        self.save_hyperparameters({"source": vars(cfg), "in_channels": in_channels, "batch_size": batch_size})
        self.opt_cfg = cfg
        self.batch_size = batch_size
        self.backbone, self.spec = build_backbone(cfg.backbone, cfg.stem, in_channels)
        self.projection_head = SimCLRProjectionHead(self.spec.feat_dim, cfg.proj_hidden_dim, cfg.proj_out_dim)
        self.criterion = NTXentLoss(temperature=cfg.temperature, gather_distributed=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.backbone(x)

    def project(self, x: torch.Tensor) -> torch.Tensor:
        return self.projection_head(self.backbone(x))

    def training_step(self, batch, batch_idx):
        views = batch["views"]
        b = views[0].shape[0]
        z = self.project(torch.cat(views)).split(b)  # one (b, proj_out_dim) block per view
        pairs = [(i, j) for i in range(len(z)) for j in range(i + 1, len(z))]
        loss = sum(self.criterion(z[i], z[j]) for i, j in pairs) / len(pairs)
        self.check_finite(loss, "SimCLR loss")
        self.log_loss(loss, b)
        return loss
