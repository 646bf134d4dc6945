"""Standard linear probe: a linear layer trained with SGD on top of a frozen backbone.

The linear-evaluation protocol of SimCLR / MoCo, run by lightly's own module
(``lightly.utils.benchmarking.LinearClassifier``, as in lightly's ``benchmarks/imagenet``):

    logits = W · f(x) + b            f = frozen backbone, x = an augmented image
    loss   = cross_entropy(logits, y)
    SGD(momentum 0.9, nesterov off, weight decay 0 by default)
    lr     = base_lr · global_batch / 256,  global_batch = batch_size · devices · accumulate
    lr(t)  = lr · (0.001 + 0.999 · ½ (1 + cos(π t / (T - 1))))  per optimizer step t of T
             (lightly's CosineWarmupScheduler, no warm-up), 90 epochs by default

What :class:`StandardProbe` changes in lightly's ``LinearClassifier`` (all recorded in ``params``):

- The linear layer starts at W ~ N(0, 0.01²), b = 0 (MoCo / MAE), so runs depend on ``seed``
  only through the data order and augmentations. lightly keeps PyTorch's default init.
- ``feature_bn=True`` puts a non-affine ``BatchNorm1d(feat_dim, affine=False, eps=1e-6)`` in
  front of the linear layer, as MAE does for its probe; it only standardises the features with
  statistics learned on the training set, so the probe stays linear in f(x). Off by default.
- ``lr`` scaling counts gradient accumulation (lightly's counts devices only); ``momentum`` and
  ``weight_decay`` can be changed (lightly fixes 0.9 and 0).
- The backbone gets ``requires_grad=False`` (DDP then has no unused parameters) and stays in
  eval mode throughout: ``train()`` never reaches it, on top of lightly's ``model.eval()`` at
  every training epoch start. BatchNorm statistics, ``num_batches_tracked`` and dropout stay as
  they are. A backbone whose output is not ``feat_dim`` wide raises a one-line ValueError.
- It records the val top-1 after every epoch (lightly's logged ``val_top1``, averaged over all
  val items and processes), keeps a CPU copy of the head of the best epoch, records the mean
  training loss per epoch and has a ``test_step``.

Augmentation is the caller's: ``train_loader`` should apply RandomResizedCrop + horizontal flip,
``val_loader`` / ``test_loader`` a deterministic resize + centre crop; :func:`standard_transforms`
builds that pair.

Selection (never on test): ``select="val"`` keeps the head with the best val top-1 (first
epoch on ties) and, when training is over, evaluates that one head on ``test_loader`` exactly
once. ``select="last"`` evaluates the final head once. ``test_loader`` is passed to nothing
before ``trainer.fit`` has returned.

Why ``pytorch_lightning`` and not ``lightning``: lightly's ``LinearClassifier`` subclasses
``pytorch_lightning.LightningModule`` (installed with lightly), which only a
``pytorch_lightning.Trainer`` accepts. So this protocol alone runs on ``pytorch_lightning``;
``trainer_kwargs`` go to that Trainer (accelerator, devices, strategy="ddp", precision, and
callbacks / loggers, which must come from ``pytorch_lightning`` too). Under DDP the epoch
accuracies are averaged over processes; Lightning's DistributedSampler pads val / test to a
multiple of the number of processes, so a handful of items may be counted twice (run the final
test on one device for exact numbers). Use strategy="ddp", not "ddp_spawn": the selected head
lives in the memory of the calling process.

Example:
    >>> train_tf, eval_tf = standard_transforms(224)
    >>> r = standard_linear_probe(backbone, train_loader, val_loader, test_loader,
    ...                           num_classes=1000, feat_dim=2048, epochs=90, lr=0.1,
    ...                           trainer_kwargs={"accelerator": "gpu", "devices": 8,
    ...                                           "strategy": "ddp", "precision": "bf16-mixed"})
    >>> r["test_acc"], r["test_top5"], r["chosen_epoch"], r["val_curve"]
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import pytorch_lightning as pl
import torch
from lightly.utils.benchmarking import LinearClassifier
from torch import nn

SELECT = ("val", "last")
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
_RESERVED = ("max_epochs", "max_steps", "min_epochs", "min_steps")


def standard_transforms(image_size: int = 224, mean=IMAGENET_MEAN, std=IMAGENET_STD,
                        crop_scale: tuple[float, float] = (0.08, 1.0)):
    """``(train_transform, eval_transform)`` of the standard protocol, for PIL images.

    train: RandomResizedCrop(image_size, scale=crop_scale) + RandomHorizontalFlip + ToTensor
    + Normalize. eval: Resize(round(image_size / 0.875)) + CenterCrop(image_size) for
    image_size >= 128 (224 -> 256 -> 224); below that Resize(image_size) + CenterCrop (the
    CIFAR / STL convention: no border is cut off) + ToTensor + Normalize.
    """
    from torchvision import transforms as T

    resize = round(image_size / 0.875) if image_size >= 128 else image_size
    train = T.Compose([T.RandomResizedCrop(image_size, scale=crop_scale), T.RandomHorizontalFlip(),
                       T.ToTensor(), T.Normalize(mean, std)])
    evaluation = T.Compose([T.Resize(resize), T.CenterCrop(image_size), T.ToTensor(), T.Normalize(mean, std)])
    return train, evaluation


class StandardProbe(LinearClassifier):
    """lightly's ``LinearClassifier`` with the changes listed in the module docstring.

    ``self.model`` is the frozen backbone, ``self.classification_head`` the trained part
    (``nn.Linear``, or ``nn.Sequential(BatchNorm1d(affine=False), nn.Linear)`` with
    ``feature_bn``). After ``fit``: ``val_curve`` (val top-1 per epoch), ``train_loss`` (mean
    per epoch), ``best_state`` / ``best_epoch`` (0-based) of the best val epoch.
    """

    def __init__(self, model: nn.Module, batch_size_per_device: int, lr: float, feature_dim: int,
                 num_classes: int, momentum: float = 0.9, weight_decay: float = 0.0,
                 feature_bn: bool = False) -> None:
        super().__init__(model, batch_size_per_device, lr=lr, feature_dim=feature_dim,
                         num_classes=num_classes, topk=(1, 5) if num_classes > 10 else (1,))
        for p in self.model.parameters():
            p.requires_grad_(False)
        self.model.eval()
        linear = self.classification_head
        nn.init.normal_(linear.weight, std=0.01)
        nn.init.zeros_(linear.bias)
        if feature_bn:
            self.classification_head = nn.Sequential(nn.BatchNorm1d(feature_dim, affine=False, eps=1e-6), linear)
        self.momentum, self.weight_decay = momentum, weight_decay
        self.val_curve: list[float] = []
        self.train_loss: list[float] = []
        self.best_state: dict[str, torch.Tensor] | None = None
        self.best_epoch: int | None = None
        self.total_steps: int | None = None
        self._loss_sum: list[torch.Tensor] = []

    # the backbone never leaves eval mode, whatever Lightning does to the module
    def train(self, mode: bool = True):
        super().train(mode)
        self.model.eval()
        return self

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            features = self.model(images).flatten(start_dim=1)  # (b, feat_dim)
        if features.shape[1] != self.feature_dim:
            raise ValueError(f"the backbone outputs {features.shape[1]}-d features but feat_dim={self.feature_dim}; "
                             "pass the backbone's feature dimension")
        return self.classification_head(features)  # (b, num_classes)

    def get_effective_lr(self) -> float:
        return self.lr * self.batch_size_per_device * self.trainer.world_size * self.trainer.accumulate_grad_batches / 256

    def configure_optimizers(self):
        optimizers, schedulers = super().configure_optimizers()
        for group in optimizers[0].param_groups:
            group["momentum"], group["weight_decay"] = self.momentum, self.weight_decay
        self.total_steps = int(self.trainer.estimated_stepping_batches)
        return optimizers, schedulers

    # ---------------------------------------------------------------- records
    def on_train_batch_end(self, outputs, batch, batch_idx) -> None:
        loss = outputs["loss"] if isinstance(outputs, dict) else outputs
        n = len(batch[1])
        self._loss_sum.append(torch.stack([loss.detach().float() * n, loss.new_tensor(float(n))]))

    def on_train_epoch_end(self) -> None:
        if self._loss_sum:
            total = self.trainer.strategy.reduce(torch.stack(self._loss_sum).sum(0), reduce_op="sum")
            self.train_loss.append(float(total[0] / total[1].clamp_min(1.0)))
        self._loss_sum = []

    def on_validation_end(self) -> None:  # after lightly's val_top1 is reduced over the epoch
        top1 = self.trainer.callback_metrics.get("val_top1")
        if self.trainer.sanity_checking or top1 is None:
            return
        self.val_curve.append(float(top1))
        if self.best_epoch is None or self.val_curve[-1] > self.val_curve[self.best_epoch]:
            self.best_epoch = len(self.val_curve) - 1
            self.best_state = {k: v.detach().cpu().clone() for k, v in self.classification_head.state_dict().items()}

    def test_step(self, batch, batch_idx) -> None:
        _, topk = self.shared_step(batch=batch, batch_idx=batch_idx)
        self.log_dict({f"test_top{k}": acc for k, acc in topk.items()}, sync_dist=True, batch_size=len(batch[1]))


def _size(loader) -> int | None:
    try:
        return len(loader.dataset)  # type: ignore[attr-defined]
    except (AttributeError, TypeError):
        return None


def standard_linear_probe(
    backbone: nn.Module, train_loader: Iterable, val_loader: Iterable | None, test_loader: Iterable | None,
    num_classes: int, feat_dim: int, *, epochs: int = 90, lr: float = 0.1, batch_size: int | None = None,
    momentum: float = 0.9, weight_decay: float = 0.0, feature_bn: bool = False, select: str = "val",
    seed: int | None = 0, trainer_kwargs: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Train a linear classifier on the frozen ``backbone``; select on val; test the chosen head once.

    Args:
        backbone: maps an image batch to (b, feat_dim) features (e.g. from ``load_backbone``).
        train_loader: augmented training batches ``(x, y, ...)`` (RandomResizedCrop + flip).
        val_loader: validation batches (deterministic transform); required for ``select="val"``,
            optional (then only recorded as a curve) for ``select="last"``.
        test_loader: test batches, evaluated once after training; None skips the test.
        num_classes, feat_dim: classifier shape.
        epochs: training epochs (90). lr: base learning rate per 256 images (0.1).
        batch_size: per-device batch size used to scale lr (default: ``train_loader.batch_size``).
        momentum, weight_decay: SGD settings (0.9, 0.0). feature_bn: non-affine BatchNorm1d in
            front of the linear layer (MAE's choice; off).
        select: ``"val"`` (best val top-1 epoch) or ``"last"`` (final epoch).
        seed: passed to ``pytorch_lightning.seed_everything`` (None: leave the RNGs alone).
        trainer_kwargs: extra ``pytorch_lightning.Trainer`` arguments (accelerator, devices,
            strategy, precision, callbacks, logger, ...); the epoch count is set by ``epochs`` only.

    Returns:
        ``{"protocol": "standard", "test_acc", "test_top5" (None unless > 10 classes; both None
        without test_loader), "val_acc_best" (val top-1 of the chosen epoch, None without val),
        "val_curve" [val top-1 per epoch], "train_loss" [mean loss per epoch],
        "chosen_epoch" (0-based), "select", "params": {every hyper-parameter and size}}``.
    """
    if select not in SELECT:
        raise ValueError(f"select must be 'val' or 'last', got {select!r}; selection never uses the test split")
    if select == "val" and val_loader is None:
        raise ValueError("select='val' needs a val_loader; pass one or use select='last'")
    if epochs < 1 or lr <= 0 or num_classes < 2 or feat_dim < 1:
        raise ValueError(f"need epochs >= 1, lr > 0, num_classes >= 2, feat_dim >= 1; got epochs={epochs}, "
                         f"lr={lr}, num_classes={num_classes}, feat_dim={feat_dim}")
    batch_size = batch_size or getattr(train_loader, "batch_size", None)
    if not batch_size:
        raise ValueError("cannot read train_loader.batch_size; pass batch_size= (per device) to scale lr")
    trainer_kwargs = dict(trainer_kwargs or {})
    clash = [k for k in _RESERVED if k in trainer_kwargs]
    if clash:
        raise ValueError(f"trainer_kwargs sets {', '.join(clash)}; the length of training is epochs=")
    if seed is not None:
        pl.seed_everything(seed, workers=True, verbose=False)

    # what we change on the caller's backbone, to put back afterwards
    grads = [(p, p.requires_grad) for p in backbone.parameters()]
    modes = [(m, m.training) for m in backbone.modules()]
    device = next((p.device for p in backbone.parameters()), None)

    module = StandardProbe(backbone, batch_size, lr, feat_dim, num_classes, momentum, weight_decay, feature_bn)
    kwargs = {"logger": False, "enable_checkpointing": False, "enable_progress_bar": False,
              "enable_model_summary": False, "num_sanity_val_steps": 0, **trainer_kwargs,
              "max_epochs": epochs}
    trainer = pl.Trainer(**kwargs)
    test: dict[str, float] = {}
    try:
        trainer.fit(module, train_dataloaders=train_loader, val_dataloaders=val_loader)
        epochs_run = len(module.train_loss)
        if select == "val":
            if module.best_state is None:
                raise ValueError("the val_loader yielded no batches, so no epoch can be selected")
            module.classification_head.load_state_dict(module.best_state)
            chosen = module.best_epoch
        else:
            chosen = epochs_run - 1
        # selection is final; the test split is read once, here
        if test_loader is not None:
            test = trainer.test(module, dataloaders=test_loader, verbose=False)[0]
    finally:
        for p, flag in grads:
            p.requires_grad_(flag)
        for m, mode in modes:
            m.training = mode
        if device is not None:
            backbone.to(device)

    global_batch = batch_size * trainer.world_size * trainer.accumulate_grad_batches
    return {
        "protocol": "standard",
        "test_acc": float(test["test_top1"]) if "test_top1" in test else None,
        "test_top5": float(test["test_top5"]) if "test_top5" in test else None,
        "val_acc_best": module.val_curve[chosen] if 0 <= chosen < len(module.val_curve) else None,
        "val_curve": list(module.val_curve),
        "train_loss": list(module.train_loss),
        "chosen_epoch": chosen,
        "select": select,
        "params": {
            "module": "lightly.utils.benchmarking.LinearClassifier", "trainer": "pytorch_lightning.Trainer",
            "epochs": epochs, "epochs_run": epochs_run, "base_lr": lr, "lr": lr * global_batch / 256,
            "lr_scaling": "base_lr * global_batch / 256", "batch_size": batch_size,
            "world_size": trainer.world_size, "accumulate_grad_batches": trainer.accumulate_grad_batches,
            "global_batch_size": global_batch, "optimizer": "sgd", "momentum": momentum, "nesterov": False,
            "weight_decay": weight_decay, "schedule": "cosine per step to 0.001 * lr, no warm-up (lightly)",
            "total_steps": module.total_steps,
            "feature_bn": "BatchNorm1d(affine=False, eps=1e-6)" if feature_bn else None,
            "classifier_init": "W ~ N(0, 0.01^2), b = 0", "num_classes": num_classes, "feat_dim": feat_dim,
            "select": select, "seed": seed, "precision": str(trainer.precision),
            "n_train": _size(train_loader), "n_val": _size(val_loader) if val_loader is not None else None,
            "n_test": _size(test_loader) if test_loader is not None else None,
        },
    }
