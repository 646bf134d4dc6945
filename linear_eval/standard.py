"""Standard linear probe: a linear layer trained with SGD on top of a frozen backbone.

This is the linear-evaluation protocol of SimCLR / MoCo as implemented by lightly
(``lightly.utils.benchmarking.LinearClassifier``) and solo-learn (``solo/methods/linear.py``):

    logits = W · f(x) + b            f = frozen backbone, x = an augmented image
    loss   = cross_entropy(logits, y)
    SGD(momentum 0.9, nesterov off, weight decay 0 by default)
    lr     = base_lr · global_batch / 256,  global_batch = batch_size · devices · accumulate
    lr(t)  = lr · ½ (1 + cos(π t / T))   per optimizer step t of T, no warm-up
    90 epochs by default

Choices made here (all recorded in the returned ``params``):

- Features enter the linear layer as they are (lightly, solo-learn). ``feature_bn=True`` puts a
  non-affine ``BatchNorm1d(feat_dim, affine=False, eps=1e-6)`` in front of it, as MAE does for
  its probe; it only standardises the features with statistics learned on the training set, so
  the probe stays linear in f(x) at test time. Off by default.
- The linear layer starts at W ~ N(0, 0.01²), b = 0 (MoCo / MAE), so runs depend on ``seed``
  only through the data order and augmentations.
- Augmentation is the caller's: ``train_loader`` should apply RandomResizedCrop + horizontal
  flip, ``val_loader`` / ``test_loader`` a deterministic resize + centre crop.
  :func:`standard_transforms` builds that pair.

Frozen backbone: its parameters get ``requires_grad=False`` and its forward pass runs under
``torch.no_grad``; it is kept in eval mode throughout (``train()`` of the module never switches it
back), so BatchNorm running statistics, ``num_batches_tracked`` and dropout stay as they are.
Its requires-grad flags, per-module train/eval modes and device are restored on return.

Selection (never on test): ``select="val"`` evaluates top-1 on ``val_loader`` after every
epoch, keeps a copy of the head with the best val top-1 (first epoch on ties) and, when
training is over, evaluates that one head on ``test_loader`` exactly once.
``select="last"`` evaluates the final head once. ``test_loader`` is passed to nothing before
``trainer.fit`` has returned.

Everything runs through one Lightning ``Trainer`` (``trainer_kwargs`` go to it: accelerator,
devices, strategy="ddp", precision, callbacks, logger), so it runs on GPUs / DDP unchanged.
Under DDP the per-epoch counts are summed over processes; Lightning's DistributedSampler pads
the val / test set to a multiple of the number of processes, so a handful of items may be
counted twice (run the final test on one device for exact numbers). Use strategy="ddp"
(processes launched by torchrun or Lightning), not "ddp_spawn": the selected head lives in
the memory of the calling process.

Example:
    >>> train_tf, eval_tf = standard_transforms(224)
    >>> r = standard_linear_probe(backbone, train_loader, val_loader, test_loader,
    ...                           num_classes=1000, feat_dim=2048, epochs=90, lr=0.1,
    ...                           trainer_kwargs={"accelerator": "gpu", "devices": 8,
    ...                                           "strategy": "ddp", "precision": "bf16-mixed"})
    >>> r["test_acc"], r["test_top5"], r["chosen_epoch"], r["val_curve"]
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any

import lightning as L
import torch
import torch.nn.functional as F
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


class LinearProbeModule(L.LightningModule):
    """Frozen ``backbone`` → optional non-affine BatchNorm1d → ``nn.Linear(feat_dim, num_classes)``.

    Only ``self.head`` is trained. Per-epoch val top-1 goes to ``val_curve``; the best head is
    kept in ``best_state`` (CPU copy) with its 0-based epoch in ``best_epoch``.
    """

    def __init__(self, backbone: nn.Module, feat_dim: int, num_classes: int, lr: float,
                 batch_size: int, momentum: float = 0.9, weight_decay: float = 0.0,
                 feature_bn: bool = False) -> None:
        super().__init__()
        self.backbone = backbone
        for p in self.backbone.parameters():
            p.requires_grad_(False)
        self.backbone.eval()
        classifier = nn.Linear(feat_dim, num_classes)
        nn.init.normal_(classifier.weight, std=0.01)
        nn.init.zeros_(classifier.bias)
        norm = nn.BatchNorm1d(feat_dim, affine=False, eps=1e-6) if feature_bn else nn.Identity()
        self.head = nn.Sequential(norm, classifier)
        self.feat_dim, self.num_classes = feat_dim, num_classes
        self.base_lr, self.batch_size = lr, batch_size
        self.momentum, self.weight_decay = momentum, weight_decay
        self.topk = 5 if num_classes > 10 else None
        self.val_curve: list[float] = []
        self.train_loss: list[float] = []
        self.best_state: dict[str, torch.Tensor] | None = None
        self.best_epoch: int | None = None
        self.test_result: dict[str, float] | None = None
        self.effective_lr: float | None = None
        self.total_steps: int | None = None
        self._counts: dict[str, torch.Tensor] = {}

    # the backbone never leaves eval mode, whatever Lightning does to the module: train() does
    # not reach it, and every training batch re-asserts it (Lightning's evaluation loops restore
    # submodule modes by attribute, bypassing train())
    def train(self, mode: bool = True):
        super().train(mode)
        self.backbone.eval()
        return self

    def on_train_batch_start(self, batch, batch_idx) -> None:
        self.backbone.eval()

    def features(self, x: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            f = self.backbone(x).flatten(1)  # (b, feat_dim)
        if f.shape[1] != self.feat_dim:
            raise ValueError(f"the backbone outputs {f.shape[1]}-d features but feat_dim={self.feat_dim}; "
                             "pass the backbone's feature dimension")
        return f.detach()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))  # (b, num_classes)

    # ---------------------------------------------------------------- counting
    def _add(self, name: str, value: torch.Tensor) -> None:
        # counts as int64 (exact), loss sums as float32 (float64 is not available everywhere, e.g. MPS)
        value = value.detach().to(torch.float32 if value.is_floating_point() else torch.int64)
        self._counts[name] = self._counts[name] + value if name in self._counts else value

    def _take(self, prefix: str) -> dict[str, float]:
        """Sum the counters of ``prefix`` over processes and reset them."""
        out = {}
        for name in [k for k in self._counts if k.startswith(prefix)]:
            out[name[len(prefix):]] = float(self.trainer.strategy.reduce(self._counts.pop(name), reduce_op="sum"))
        return out

    def _evaluate_batch(self, batch, prefix: str) -> None:
        x, y = batch[0], batch[1]
        logits = self(x)
        self._add(prefix + "n", torch.tensor(y.shape[0], device=logits.device))
        self._add(prefix + "top1", (logits.argmax(1) == y).sum())
        if self.topk:
            self._add(prefix + "top5", (logits.topk(self.topk, dim=1).indices == y[:, None]).any(1).sum())

    # ---------------------------------------------------------------- training
    def training_step(self, batch, batch_idx):
        x, y = batch[0], batch[1]
        loss = F.cross_entropy(self(x), y)
        self._add("train/loss", loss * y.shape[0])
        self._add("train/n", torch.tensor(y.shape[0], device=loss.device))
        self.log("train_loss", loss, on_step=False, on_epoch=True, sync_dist=True, batch_size=y.shape[0])
        return loss

    def on_train_epoch_end(self) -> None:
        c = self._take("train/")
        if c:
            self.train_loss.append(c["loss"] / max(c["n"], 1.0))

    def validation_step(self, batch, batch_idx):
        self._evaluate_batch(batch, "val/")

    def on_validation_epoch_end(self) -> None:
        c = self._take("val/")
        if self.trainer.sanity_checking or not c:
            return
        top1 = c["top1"] / max(c["n"], 1.0)
        self.val_curve.append(top1)
        self.log("val_top1", top1, sync_dist=False)
        if self.best_epoch is None or top1 > self.val_curve[self.best_epoch]:
            self.best_epoch = len(self.val_curve) - 1
            self.best_state = {k: v.detach().cpu().clone() for k, v in self.head.state_dict().items()}

    def test_step(self, batch, batch_idx):
        self._evaluate_batch(batch, "test/")

    def on_test_epoch_end(self) -> None:
        c = self._take("test/")
        n = max(c.get("n", 0.0), 1.0)
        self.test_result = {"top1": c.get("top1", 0.0) / n,
                            "top5": c["top5"] / n if "top5" in c else None, "n": int(c.get("n", 0))}

    def configure_optimizers(self):
        t = self.trainer
        global_batch = self.batch_size * t.world_size * t.accumulate_grad_batches
        self.effective_lr = self.base_lr * global_batch / 256
        self.total_steps = max(1, int(t.estimated_stepping_batches))
        opt = torch.optim.SGD(self.head.parameters(), lr=self.effective_lr, momentum=self.momentum,
                              weight_decay=self.weight_decay)
        total = self.total_steps
        sched = torch.optim.lr_scheduler.LambdaLR(
            opt, lambda step: 0.5 * (1.0 + math.cos(math.pi * min(step, total) / total)))
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}


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
        seed: passed to ``lightning.seed_everything`` (None: leave the RNGs alone).
        trainer_kwargs: extra ``lightning.Trainer`` arguments (accelerator, devices, strategy,
            precision, callbacks, logger, ...); the epoch count is set by ``epochs`` only.

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
        L.seed_everything(seed, workers=True, verbose=False)

    # what we change on the caller's backbone, to put back afterwards
    grads = [(p, p.requires_grad) for p in backbone.parameters()]
    modes = [(m, m.training) for m in backbone.modules()]
    device = next((p.device for p in backbone.parameters()), None)

    module = LinearProbeModule(backbone, feat_dim, num_classes, lr, batch_size, momentum,
                               weight_decay, feature_bn)
    kwargs = {"logger": False, "enable_checkpointing": False, "enable_progress_bar": False,
              "enable_model_summary": False, "num_sanity_val_steps": 0, **trainer_kwargs,
              "max_epochs": epochs}
    trainer = L.Trainer(**kwargs)
    try:
        trainer.fit(module, train_dataloaders=train_loader, val_dataloaders=val_loader)
        epochs_run = len(module.train_loss)
        if select == "val":
            if module.best_state is None:
                raise ValueError("the val_loader yielded no batches, so no epoch can be selected")
            module.head.load_state_dict(module.best_state)
            chosen = module.best_epoch
        else:
            chosen = epochs_run - 1
        # selection is final; the test split is read once, here
        if test_loader is not None:
            trainer.test(module, dataloaders=test_loader, verbose=False)
    finally:
        for p, flag in grads:
            p.requires_grad_(flag)
        for m, mode in modes:
            m.training = mode
        if device is not None:
            backbone.to(device)

    test = module.test_result or {}
    return {
        "protocol": "standard",
        "test_acc": test.get("top1"),
        "test_top5": test.get("top5"),
        "val_acc_best": module.val_curve[chosen] if 0 <= chosen < len(module.val_curve) else None,
        "val_curve": list(module.val_curve),
        "train_loss": list(module.train_loss),
        "chosen_epoch": chosen,
        "select": select,
        "params": {
            "epochs": epochs, "epochs_run": epochs_run, "base_lr": lr, "lr": module.effective_lr,
            "lr_scaling": "base_lr * global_batch / 256", "batch_size": batch_size,
            "world_size": trainer.world_size, "accumulate_grad_batches": trainer.accumulate_grad_batches,
            "global_batch_size": batch_size * trainer.world_size * trainer.accumulate_grad_batches,
            "optimizer": "sgd", "momentum": momentum, "nesterov": False, "weight_decay": weight_decay,
            "schedule": "cosine per step to 0, no warm-up", "total_steps": module.total_steps,
            "feature_bn": "BatchNorm1d(affine=False, eps=1e-6)" if feature_bn else None,
            "classifier_init": "W ~ N(0, 0.01^2), b = 0", "num_classes": num_classes, "feat_dim": feat_dim,
            "select": select, "seed": seed, "precision": str(trainer.precision),
            "n_train": _size(train_loader), "n_val": _size(val_loader) if val_loader is not None else None,
            "n_test": test.get("n"),
        },
    }
