"""kNN monitor: validation kNN accuracy of the model being trained, every N epochs.

``eval.knn_monitor_every: E`` (epochs, fractions allowed; 0 = off) adds :class:`KNNMonitor` to
every training stage (source, teacher continued, transfer). Every ``ceil(E * steps_per_epoch)``
optimizer steps, and once more at the end of the stage, it extracts frozen backbone features
(eval mode, un-augmented images; :func:`linear_eval.extract_features`) of the kNN bank (the
``eval_train`` split: ``data.eval_train_subset`` training images) and of the validation split,
and logs ``val_knn_acc`` = :func:`linear_eval.knn_accuracy` with ``eval.knn_k`` /
``eval.knn_temperature`` into the stage's ``logs/<stage>/metrics.csv``. It only reads the
model: no weight, BatchNorm statistic or random stream of training changes (features are
extracted in eval mode under ``no_grad``; the global RNG state is restored afterwards).

It monitors, it does not select: the test split is never touched, and the pipeline still reports
the final-step model. Under DDP global rank 0 computes and broadcasts the value, so every process
holds it (rank 0's logger writes it).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import lightning as L
import torch
from torch import nn

from linear_eval import extract_features, knn_accuracy


class Cast(nn.Module):
    """Feed float32 loader batches to a model trained in another dtype (trainer.precision 64-true)
    and return float32 outputs (the kNN monitor, the metric stage's checkpoint choice)."""

    def __init__(self, model: nn.Module, dtype: torch.dtype):
        super().__init__()
        self.model, self.dtype = model, dtype

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x.to(self.dtype)).float()


def monitored_backbone(module: nn.Module) -> nn.Module:
    """The backbone whose features are evaluated: the student's in the transfer stage, else the
    SSL module's own."""
    student = getattr(module, "student", None)
    return student.backbone if student is not None else module.backbone


class KNNMonitor(L.Callback):
    """Log ``val_knn_acc`` every ``every_steps`` optimizer steps and at the end of training.

    Args:
        bank_loader: loader of ``(image, label)`` for the kNN bank (un-augmented).
        val_loader: loader of ``(image, label)`` for the validation split.
        every_steps: evaluate when ``global_step`` is a multiple of it (>= 1).
        k, temperature: of :func:`linear_eval.knn_accuracy`.
        backbone_of: maps the LightningModule to the network to evaluate.

    The values go to the trainer's logger only; :func:`read_monitor` reads them back from
    metrics.csv (which also keeps the rows logged before a ``--resume``).
    """

    def __init__(self, bank_loader: Iterable, val_loader: Iterable, every_steps: int, k: int = 200,
                 temperature: float = 0.1, backbone_of: Callable[[nn.Module], nn.Module] = monitored_backbone):
        if every_steps < 1:
            raise ValueError(f"every_steps must be >= 1, got {every_steps}")
        self.bank_loader, self.val_loader = bank_loader, val_loader
        self.every_steps, self.k, self.temperature = every_steps, k, temperature
        self.backbone_of = backbone_of
        self._last_step: int | None = None

    @torch.no_grad()
    def accuracy(self, pl_module: nn.Module) -> float:
        """Validation kNN accuracy of the monitored backbone now (no state changes)."""
        backbone = self.backbone_of(pl_module)
        param = next(backbone.parameters())
        model = backbone if param.dtype == torch.float32 else Cast(backbone, param.dtype)
        rng = torch.get_rng_state()
        try:
            bank_x, bank_y = extract_features(model, self.bank_loader, param.device)
            val_x, val_y = extract_features(model, self.val_loader, param.device)
        finally:
            torch.set_rng_state(rng)
        return float(knn_accuracy(bank_x, bank_y, val_x, val_y, k=self.k, temperature=self.temperature))

    def _evaluate(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        step = int(trainer.global_step)
        if step == self._last_step:
            return
        self._last_step = step
        acc = self.accuracy(pl_module) if trainer.is_global_zero else 0.0
        acc = float(trainer.strategy.broadcast(acc, src=0))
        if trainer.logger is not None:
            trainer.logger.log_metrics({"val_knn_acc": acc}, step=step)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if trainer.global_step > 0 and trainer.global_step % self.every_steps == 0:
            self._evaluate(trainer, pl_module)

    def on_train_end(self, trainer, pl_module) -> None:
        self._evaluate(trainer, pl_module)


def read_monitor(metrics_csv) -> list[dict[str, Any]]:
    """The ``val_knn_acc`` rows of a stage's metrics.csv (step order), [] when there are none."""
    import csv
    from pathlib import Path

    path = Path(metrics_csv)
    if not path.is_file():
        return []
    rows = [r for r in csv.DictReader(path.open()) if r.get("val_knn_acc")]
    return sorted(({"step": int(r["step"]), "val_knn_acc": float(r["val_knn_acc"])} for r in rows),
                  key=lambda r: r["step"])


__all__ = ["KNNMonitor", "monitored_backbone", "read_monitor"]
