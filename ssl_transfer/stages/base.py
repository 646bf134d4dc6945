"""Shared pieces of every training stage: optimiser + warm-up/cosine schedule, loss guard."""

from __future__ import annotations

import math

import lightning as L
import torch
import torch.distributed as dist
from lightly.utils.lars import LARS
from lightly.utils.scheduler import CosineWarmupScheduler

from ..distributed import world_size
from ..errors import NonFiniteError


def build_optimizer(params, name: str, lr: float, momentum: float, weight_decay: float):
    if name == "sgd":
        return torch.optim.SGD(params, lr=lr, momentum=momentum, weight_decay=weight_decay)
    if name == "lars":
        return LARS(params, lr=lr, momentum=momentum, weight_decay=weight_decay)
    if name == "adamw":
        return torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)
    raise ValueError(f"unknown optimizer '{name}'")


class StageModule(L.LightningModule):
    """A LightningModule with the project's optimiser recipe and a non-finite loss guard.

    Subclasses set ``self.stage`` and ``self.opt_cfg`` (an object with optimizer, lr,
    lr_scale_with_batch, momentum, weight_decay, warmup_fraction) and ``self.batch_size``.
    """

    stage = "stage"

    def effective_lr(self) -> float:
        c = self.opt_cfg
        return c.lr * (self.batch_size / 256.0 if c.lr_scale_with_batch else 1.0)

    def parameters_to_train(self):
        return [p for p in self.parameters() if p.requires_grad]

    def configure_optimizers(self):
        c = self.opt_cfg
        opt = build_optimizer(self.parameters_to_train(), c.optimizer, self.effective_lr(),
                              c.momentum, c.weight_decay)
        total = max(1, int(self.trainer.estimated_stepping_batches))
        warmup = int(round(c.warmup_fraction * total))
        sched = CosineWarmupScheduler(opt, warmup_epochs=warmup, max_epochs=total, end_value=0.0)
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}

    def check_finite(self, value: torch.Tensor, what: str) -> None:
        """Raise NonFiniteError if ``value`` holds NaN or Inf, in every DDP process at once (a
        process's local embeddings can be non-finite alone; the others must not wait forever)."""
        bad = ~torch.isfinite(value).all()
        if world_size() > 1:
            bad = bad.to(torch.int32)
            dist.all_reduce(bad, op=dist.ReduceOp.MAX)
        if bad:
            raise NonFiniteError(
                f"non-finite {what} in stage '{self.stage}' at epoch {self.current_epoch}, step "
                f"{self.global_step}; lower the learning rate or check the inputs"
            )

    def log_loss(self, loss: torch.Tensor, batch_size: int) -> None:
        """Log the loss; under DDP its mean over processes: the global-batch loss both for losses
        computed on the gathered batch (equal everywhere) and for per-process means (NT-Xent)."""
        self.log("train_loss", loss, prog_bar=True, on_step=True, on_epoch=True,
                 batch_size=batch_size, sync_dist=True)
        sched = self.lr_schedulers()
        if sched is not None:
            self.log("lr", sched.get_last_lr()[0], on_step=True, on_epoch=False, batch_size=batch_size)


def steps_for(epochs: float, steps_per_epoch: int) -> int:
    """Optimizer steps for a possibly fractional number of epochs (at least 1)."""
    return max(1, int(math.ceil(epochs * steps_per_epoch)))
