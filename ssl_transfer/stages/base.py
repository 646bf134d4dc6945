"""What every training stage shares: the stage contract, the optimiser recipe, the loss guard.

**The stage contract.** A task is a sequence of stages run by ``ssl_transfer.pipeline``; a new
task adds a stage module and a config section, nothing more. A stage is a class with

- ``name``: its key in run.json and the folder of its logs and checkpoints
  (``logs/<name>/``, ``checkpoints/<name>/``);
- ``artifact``: the file its trained model is saved to (``teacher.pt``, ``student.pt``, ...);
- ``__init__(cfg)``: it keeps the :class:`~ssl_transfer.config.RunConfig` and reads its own
  section (and ``data`` / ``seed``); nothing is precomputed for it by the runner;
- ``train(ctx, **inputs) -> StageResult``: builds its LightningModule (a :class:`StageModule`),
  trains it with ``ctx.fit`` (resumable, logged, checkpointed), saves the model to
  ``ctx.path(artifact)`` and returns it;
- ``load(ctx, **inputs) -> StageResult``: rebuilds the saved model (``--resume`` after the
  stage finished; ``ssl-transfer transfer`` from a saved teacher).

``inputs`` are earlier stages' results (e.g. ``teacher=``). Every stage returns the same kind of
result, :class:`StageResult`: the model the next stages consume, the backbone evaluation reads,
its spec, the training time and where it was saved.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import lightning as L
import torch
import torch.distributed as dist
from lightly.utils.lars import LARS
from lightly.utils.scheduler import CosineWarmupScheduler
from torch import nn

from ..config import OptimizerConfig, RunConfig
from ..distributed import world_size
from ..errors import NonFiniteError
from ..runtime import fit, stage_outputs, steps_for


@dataclass
class StageResult:
    """What a stage hands on: ``model`` (for later stages), ``backbone`` (what is evaluated on
    frozen features), ``spec`` (its BackboneSpec), ``seconds`` of training (0 when loaded) and
    ``path``, the saved model file."""

    name: str
    model: Any
    backbone: nn.Module
    spec: Any
    seconds: float
    path: Path | None


@dataclass
class StageContext:
    """What the runner gives every stage: config, data, the run directory, resume or not."""

    cfg: RunConfig
    bundle: Any  # ssl_transfer.data.DataBundle
    run_dir: Any  # ssl_transfer.runs.RunDirectory
    resume: bool = False

    def path(self, rel: str) -> Path:
        """Where the stage writes ``rel`` (registered in the run's manifest first)."""
        return self.run_dir.path(rel)

    def fit(self, stage: str, module: L.LightningModule, loader, epochs: float, seed: int) -> float:
        """Train ``module`` for ``epochs`` through :func:`ssl_transfer.runtime.fit` (with the kNN
        monitor when ``eval.knn_monitor_every`` > 0); returns the training time."""
        cfg = self.cfg
        self.run_dir.register(*stage_outputs(stage))
        monitor = None
        if cfg.eval.knn_monitor_every > 0:
            from ..monitor import KNNMonitor

            monitor = KNNMonitor(self.bundle.eval_loader("eval_train"), self.bundle.eval_loader("val"),
                                 steps_for(cfg.eval.knn_monitor_every, len(loader)),
                                 k=cfg.eval.knn_k, temperature=cfg.eval.knn_temperature)
        return fit(cfg, self.run_dir.work, stage, module, loader, epochs, seed, self.resume, monitor)


def build_optimizer(params, cfg: OptimizerConfig, lr: float):
    if cfg.name == "sgd":
        return torch.optim.SGD(params, lr=lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
    if cfg.name == "lars":
        return LARS(params, lr=lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
    return torch.optim.AdamW(params, lr=lr, weight_decay=cfg.weight_decay)


class StageModule(L.LightningModule):
    """A LightningModule with the project's optimiser recipe and a non-finite loss guard.

    Args: ``optim`` (the stage's :class:`OptimizerConfig`), ``batch_size`` (the global batch, for
    ``lr_scale_with_batch``), ``epochs`` (of the stage, for ``schedule: step`` milestones).
    """

    stage = "stage"

    def __init__(self, optim: OptimizerConfig, batch_size: int, epochs: float):
        super().__init__()
        self.optim, self.batch_size, self.epochs = optim, batch_size, epochs

    def effective_lr(self) -> float:
        c = self.optim
        return c.lr * (self.batch_size / 256.0 if c.lr_scale_with_batch else 1.0)

    def parameters_to_train(self):
        return [p for p in self.parameters() if p.requires_grad]

    def configure_optimizers(self):
        c = self.optim
        opt = build_optimizer(self.parameters_to_train(), c, self.effective_lr())
        total = max(1, int(self.trainer.estimated_stepping_batches))
        warmup = int(round(c.warmup_fraction * total))
        if c.schedule == "cosine":
            sched = CosineWarmupScheduler(opt, warmup_epochs=warmup, max_epochs=total, end_value=0.0)
        else:  # step: linear warm-up, then x gamma at each milestone (epochs of the stage -> steps)
            drops = [round(m / self.epochs * total) for m in c.milestones]

            def factor(step: int) -> float:
                warm = min(1.0, (step + 1) / warmup) if warmup else 1.0
                return warm * c.gamma ** sum(step >= d for d in drops)

            sched = torch.optim.lr_scheduler.LambdaLR(opt, factor)
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}

    # -- checkpoints: frozen submodules are not saved again -----------------------------------

    def _unsaved_prefixes(self) -> tuple[str, ...]:
        """State-dict prefixes of submodules marked ``saved_in_checkpoints = False``: the frozen
        teacher, which is teacher.pt (or the --teacher file) and is rebuilt before a resume."""
        return tuple(f"{name}." for name, m in self.named_modules()
                     if name and getattr(m, "saved_in_checkpoints", True) is False)

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        """last.ckpt without the frozen teacher's weights (a quarter of a ResNet-18 transfer
        checkpoint: 182 -> 137 MB; the student, its optimizer state and the memory stay)."""
        prefixes = self._unsaved_prefixes()  # str.startswith(()) is False: nothing to leave out
        state = checkpoint["state_dict"]
        for key in [k for k in state if k.startswith(prefixes)]:
            del state[key]

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        """Put back the frozen teacher's weights, as rebuilt for this run (older checkpoints, which
        hold them, load as they are)."""
        prefixes = self._unsaved_prefixes()
        state = checkpoint["state_dict"]
        for key, value in self.state_dict().items():
            if key.startswith(prefixes) and key not in state:
                state[key] = value

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


def dataset_extra(cfg: RunConfig, bundle) -> dict[str, Any]:
    """Dataset facts saved in every model file (normalisation, input size)."""
    return {"dataset": cfg.data.name, "mean": bundle.raw.mean, "std": bundle.raw.std, "image_size": bundle.image_size}


__all__ = ["StageContext", "StageModule", "StageResult", "build_optimizer", "dataset_extra", "steps_for"]
