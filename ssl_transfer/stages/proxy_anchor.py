"""Source stage of task metric: a Proxy-Anchor teacher, and its control ("teacher continued").

:class:`ProxyAnchorModule` trains an embedding network (a ResNet trunk, ``metric.pooling``, a
linear head to ``metric.embed_dim``; :mod:`ssl_transfer.models.embedding`) with the Proxy-Anchor
loss (:class:`ssl_transfer.losses.ProxyAnchorLoss`, one proxy per training class) on the first
view of every image. As in the paper and its reference code:

- optimiser groups: the network at ``source.optimizer.lr``, the proxies at
  ``metric.proxy_lr_multiplier`` (100) × that rate, one schedule for both;
- warm-up: for the first ``metric.warmup_epochs`` only the head and the proxies learn (the
  backbone's gradients are dropped before every step; one process skips computing them);
- ``metric.bn_freeze``: the backbone's BatchNorm layers keep their running statistics and affine
  parameters (ImageNet's) fixed; ``metric.grad_clip_value``: every gradient element clipped;
- labels: the training classes of the bundle, remapped to 0..C-1 (``label_index``), so the
  validation classes carved out of them get no proxy.

Under DDP the loss sees the gathered global batch (gradients flow back to each process's part).

:class:`ProxyAnchorStage` saves teacher.pt: the trunk + spec, and ``head``, ``embed_dim``,
``pooling``, ``proxies`` and the training ``classes`` (what the control and the transfer stage
need; a teacher trained on other classes than the config's is refused, so that validation
classes are never ones it saw). :class:`ProxyAnchorControl` continues a copy of the teacher for
``transfer.epochs`` with the same loss on the students' batches.
"""

from __future__ import annotations

import copy
import dataclasses
import os
from pathlib import Path

import lightning as L
import numpy as np
import torch

from ..distributed import gather_views, world_size
from ..errors import CheckpointError
from ..io import load_model, save_model
from ..losses.proxy_anchor import ProxyAnchorLoss
from ..models.embedding import build_trunk, embedding_linear, freeze_batchnorm, load_imagenet_weights
from .base import StageContext, StageModule, StageResult, dataset_extra, steps_for
from .metric_select import MetricContext
from .source import transfer_data_seed
from .transfer import Student


def training_classes(bundle) -> np.ndarray:
    """The sorted class labels of the bundle's training images (validation classes excluded)."""
    idx = bundle.train_idx[bundle.train_idx < bundle.raw.count("train")]
    return np.unique(bundle.raw.labels("train")[idx])


class ProxyAnchorModule(StageModule):
    """Embedding network ``net`` (:class:`Student`: ``net.embed(x)`` = head(trunk(x))) + the
    Proxy-Anchor ``criterion`` with one proxy per entry of ``classes``."""

    stage = "source"
    method = "proxy_anchor"

    def __init__(self, cfg, classes, in_channels: int, epochs: float | None = None, pretrained: bool = True):
        src, m = cfg.source, cfg.metric
        super().__init__(src.optimizer, cfg.data.batch_size, epochs or src.epochs)
        self.classes = [int(c) for c in classes]
        self.save_hyperparameters({"source": dataclasses.asdict(src), "metric": dataclasses.asdict(m),
                                   "in_channels": in_channels, "batch_size": cfg.data.batch_size,
                                   "classes": self.classes})
        self.metric = m
        backbone, self.spec = build_trunk(src.backbone, src.stem, in_channels, m.pooling)
        if pretrained and m.imagenet_weights:
            load_imagenet_weights(backbone, self.spec, m.imagenet_weights, "metric.imagenet_weights")
        self.net = Student(backbone, embedding_linear(self.spec.feat_dim, m.embed_dim))
        self.net.spec, self.net.embed_dim = self.spec, m.embed_dim
        self.criterion = ProxyAnchorLoss(len(self.classes), m.embed_dim, margin=m.margin, alpha=m.alpha)
        lookup = torch.full((max(self.classes) + 1,), -1, dtype=torch.long)
        lookup[torch.tensor(self.classes)] = torch.arange(len(self.classes))
        self.register_buffer("label_index", lookup)  # dataset label -> proxy index
        self.warmup_epochs = m.warmup_epochs
        if m.bn_freeze:
            freeze_batchnorm(self.net.backbone)

    def train(self, mode: bool = True):
        super().train(mode)
        if self.metric.bn_freeze:  # train() switched the frozen BatchNorm layers back on
            freeze_batchnorm(self.net.backbone)
        return self

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net.embed(x)

    def parameters_to_train(self):
        """Two groups: the network (frozen BatchNorm parameters excluded) and the proxies at
        ``proxy_lr_multiplier`` × the learning rate."""
        net = [p for p in self.net.parameters() if p.requires_grad]
        proxy_lr = self.effective_lr() * self.metric.proxy_lr_multiplier
        return [{"params": net}, {"params": [self.criterion.proxies], "lr": proxy_lr}]

    def warmup_steps(self) -> int:
        if self.warmup_epochs <= 0:
            return 0
        return steps_for(self.warmup_epochs, int(self.trainer.num_training_batches))

    def in_warmup(self) -> bool:
        return self.global_step < self.warmup_steps()

    def training_step(self, batch, batch_idx):
        x = batch["views"][0]  # one view per image, as the paper's teacher
        labels = self.label_index[batch["label"]]
        with torch.set_grad_enabled(not (self.in_warmup() and world_size() == 1)):
            features = self.net.backbone(x)
        e = self.net.head(features)
        self.check_finite(e, "embedding")
        e, labels = gather_views(e, 1), gather_views(labels, 1)  # the global batch (no-op on 1 process)
        loss = self.criterion(e, labels)
        self.check_finite(loss, "proxy_anchor loss")
        self.log_loss(loss, x.shape[0])
        return loss

    def on_before_optimizer_step(self, optimizer) -> None:
        if self.in_warmup():  # only the head and the proxies learn
            for p in self.net.backbone.parameters():
                p.grad = None
        if self.metric.grad_clip_value:
            grads = [p for p in self.parameters() if p.grad is not None]
            torch.nn.utils.clip_grad_value_(grads, self.metric.grad_clip_value)

    def teacher_state(self) -> dict:
        """What teacher.pt holds besides the trunk (tensors on CPU, plain values)."""
        return {"method": self.method, "head": {k: v.detach().cpu() for k, v in self.net.head.state_dict().items()},
                "head_kind": "linear", "embed_dim": self.metric.embed_dim, "pooling": self.metric.pooling,
                "proxies": self.criterion.proxies.detach().cpu().clone(), "classes": list(self.classes),
                "margin": self.metric.margin, "alpha": self.metric.alpha}


class ProxyAnchorStage:
    """Train (or rebuild) the Proxy-Anchor teacher; ``result.model`` is its :class:`ProxyAnchorModule`."""

    name = "source"
    artifact = "teacher.pt"

    def __init__(self, cfg):
        self.cfg = cfg

    def build(self, bundle, pretrained: bool = True) -> ProxyAnchorModule:
        return ProxyAnchorModule(self.cfg, training_classes(bundle).tolist(), bundle.channels, pretrained=pretrained)

    def train(self, ctx: StageContext) -> StageResult:
        cfg = self.cfg
        loader = ctx.bundle.train_loader(cfg.seed)
        L.seed_everything(cfg.seed, workers=True, verbose=False)  # head and proxies
        module = self.build(ctx.bundle)
        seconds = MetricContext.of(ctx).fit(self.name, module, loader, cfg.source.epochs, cfg.seed)
        return self.save(ctx, module, self.artifact, self.name, seconds)

    def save(self, ctx: StageContext, module: ProxyAnchorModule, artifact: str, name: str,
             seconds: float) -> StageResult:
        module.cpu()
        path = ctx.path(artifact)
        save_model(path, module.net.backbone, module.spec,
                   extra={**module.teacher_state(), **dataset_extra(self.cfg, ctx.bundle)})
        return StageResult(name, module, module.net.backbone, module.spec, seconds, path)

    def load(self, ctx: StageContext) -> StageResult:
        return self.from_file(ctx.run_dir.work / self.artifact, ctx.bundle, name=self.name)

    def from_file(self, path: str | os.PathLike, bundle, name: str = "source") -> StageResult:
        """A Proxy-Anchor teacher.pt (of this task's source stage), checked against the config:
        architecture, pooling, embedding dimension and training classes must match."""
        backbone, payload = load_model(path)
        m = self.cfg.metric
        if payload.get("method") != "proxy_anchor":
            raise CheckpointError(f"teacher '{path}' is not a Proxy-Anchor teacher (method "
                                  f"{payload.get('method', 'unknown')}); task metric transfers the teacher.pt of its "
                                  "own source stage (ssl-transfer pretrain or metric with source.method: proxy_anchor)")
        classes = training_classes(bundle).tolist()
        if payload["classes"] != classes:
            raise CheckpointError(f"teacher '{path}' was trained on {len(payload['classes'])} classes that differ from "
                                  f"this config's {len(classes)} training classes, so validation classes could be ones "
                                  "it saw; use the teacher's data.name, data.val_classes and data.split_seed")
        module = self.build(bundle, pretrained=False)
        found = (payload["spec"], payload["pooling"], payload["embed_dim"])
        wanted = (module.spec.to_dict(), m.pooling, m.embed_dim)
        if found != wanted:
            raise CheckpointError(f"teacher '{path}' is a {found[0]['arch']} with {found[1]} pooling and a {found[2]}-d "
                                  f"embedding, the config asks for a {wanted[0]['arch']} with {wanted[1]} pooling and a "
                                  f"{wanted[2]}-d one; set source.backbone/stem, metric.pooling, metric.embed_dim to match")
        module.net.backbone.load_state_dict(backbone.state_dict())  # the pooling has no parameters
        module.net.head.load_state_dict(payload["head"])
        with torch.no_grad():
            module.criterion.proxies.copy_(payload["proxies"])
        return StageResult(name, module, module.net.backbone, module.spec, 0.0, Path(path))


class ProxyAnchorControl:
    """Teacher continued: a copy of the teacher (network and proxies) trained ``transfer.epochs``
    more with Proxy-Anchor on the students' batches (no warm-up; the ``source.optimizer`` schedule
    restarts, its step milestones scaled to the control's length)."""

    name = "teacher_continued"
    artifact = "teacher_continued.pt"

    def __init__(self, cfg):
        self.cfg = cfg
        self.source = ProxyAnchorStage(cfg)

    def train(self, ctx: StageContext, teacher: StageResult) -> StageResult:
        cfg = self.cfg
        seed = transfer_data_seed(cfg)
        loader = ctx.bundle.train_loader(seed)
        module = copy.deepcopy(teacher.model)
        module.stage, module.warmup_epochs = self.name, 0.0
        seconds = MetricContext.of(ctx).fit(self.name, module, loader, cfg.transfer.epochs, seed)
        return self.source.save(ctx, module, self.artifact, self.name, seconds)

    def load(self, ctx: StageContext, teacher: StageResult) -> StageResult:
        return self.source.from_file(ctx.run_dir.work / self.artifact, ctx.bundle, name=self.name)


__all__ = ["ProxyAnchorControl", "ProxyAnchorModule", "ProxyAnchorStage", "training_classes"]
