"""Source stage: SSL teachers built from lightly's parts, one short LightningModule per method.

=========  ==================================================================================
SimCLR     backbone → ``SimCLRProjectionHead`` → ``NTXentLoss`` over the stacked views
           (in-batch negatives gathered across processes under DDP).
MoCo v2    query encoder (backbone → ``MoCoProjectionHead``) and a momentum key encoder (a deep
           copy with gradients off, EMA-updated by ``update_momentum`` with momentum following
           ``cosine_schedule`` from ``source.moco_momentum`` to 1); negatives from a FIFO queue
           of past keys (``NTXentLoss(memory_bank_size=(moco_queue_size, proj_out_dim),
           gather_distributed=True)``: every process enqueues the keys of all processes, so the
           queue does not depend on the device count); batch-shuffle BN for the keys.
=========  ==================================================================================

Both share :class:`SSLModule`: the backbone and its spec, ``projection_head`` (what the transfer
stage may use as teacher output), the optimiser recipe of :class:`StageModule`, and an optional
online linear classifier on detached backbone features (monitoring only; it never changes the
backbone).

``build_ssl_module(source, data, in_channels, num_classes)`` picks the class from
``source.method``; :meth:`SSLModule.teacher_state` / :meth:`SSLModule.load_teacher_state` carry
the method-specific state (projection head; MoCo: key encoder and queue) through teacher.pt.
Training, saving and loading teachers is the source stage's (:mod:`ssl_transfer.stages.source`).
"""

from __future__ import annotations

import copy
import dataclasses
from typing import Any

import torch
from lightly.loss import NTXentLoss
from lightly.models.modules.heads import MoCoProjectionHead, SimCLRProjectionHead
from lightly.models.utils import batch_shuffle, batch_unshuffle, deactivate_requires_grad, update_momentum
from lightly.utils.benchmarking import OnlineLinearClassifier
from lightly.utils.scheduler import cosine_schedule

from ..config import DataConfig, SourceConfig
from ..distributed import world_size
from ..models import build_backbone
from .base import StageModule


class SSLModule(StageModule):
    """Base of the source-stage methods: backbone + ``projection_head`` + optional online probe.

    Subclasses build ``self.projection_head`` and ``self.criterion`` in ``build_method`` and
    implement ``ssl_loss(batch) -> (loss, backbone features of the first view)``.
    """

    stage = "source"
    method = "ssl"

    def __init__(self, cfg: SourceConfig, data: DataConfig, in_channels: int, num_classes: int | None = None,
                 epochs: float | None = None):
        super().__init__(cfg.optimizer, data.batch_size, epochs or cfg.epochs)
        self.save_hyperparameters({"source": dataclasses.asdict(cfg), "in_channels": in_channels,
                                   "batch_size": data.batch_size, "num_classes": num_classes})
        self.source = cfg
        self.backbone, self.spec = build_backbone(cfg.backbone, cfg.stem, in_channels)
        self.build_method(cfg)
        self.online_classifier = None
        if cfg.online_classifier and num_classes:
            # lightly's module subclasses pytorch_lightning.LightningModule; used here only as an
            # nn.Module child (its training_step is called by this module, which does the logging)
            self.online_classifier = OnlineLinearClassifier(self.spec.feat_dim, num_classes, topk=(1,))

    def build_method(self, cfg: SourceConfig) -> None:
        raise NotImplementedError

    def ssl_loss(self, batch: dict[str, Any]) -> tuple[torch.Tensor, torch.Tensor]:
        raise NotImplementedError

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.backbone(x)

    def project(self, x: torch.Tensor) -> torch.Tensor:
        return self.projection_head(self.backbone(x))

    def parameters_to_train(self):
        """Trainable parameters; the online classifier in its own group without weight decay
        (as in lightly's benchmarks), so it cannot influence the backbone's optimisation."""
        if self.online_classifier is None:
            return super().parameters_to_train()
        probe = {id(p) for p in self.online_classifier.parameters()}
        main = [p for p in self.parameters() if p.requires_grad and id(p) not in probe]
        return [{"params": main}, {"params": list(self.online_classifier.parameters()), "weight_decay": 0.0}]

    def training_step(self, batch, batch_idx):
        loss, features = self.ssl_loss(batch)
        self.check_finite(loss, f"{self.method} loss")
        b = batch["views"][0].shape[0]
        self.log_loss(loss, b)
        if self.online_classifier is not None:
            loss = loss + self.online_step(features, batch["label"], batch_idx)
        return loss

    def online_step(self, features: torch.Tensor, labels: torch.Tensor, batch_idx: int) -> torch.Tensor:
        """Cross-entropy of the online classifier on detached features of labelled images
        (STL-10's unlabeled images, label -1, are skipped)."""
        keep = labels >= 0
        if not bool(keep.any()):
            return features.new_zeros(())
        cls_loss, log_dict = self.online_classifier.training_step((features.detach()[keep], labels[keep]), batch_idx)
        self.log_dict(log_dict, on_step=True, on_epoch=True, batch_size=int(keep.sum()), sync_dist=False)
        return cls_loss

    # -- teacher.pt ---------------------------------------------------------------------------

    def teacher_state(self) -> dict[str, Any]:
        """Method state saved in teacher.pt next to the backbone (all tensors, CPU)."""
        return {"method": self.method, "projection_head": _cpu(self.projection_head.state_dict())}

    def load_teacher_state(self, payload: dict[str, Any]) -> None:
        """Restore what :meth:`teacher_state` saved (missing entries keep their fresh values)."""
        if "projection_head" in payload:
            self.projection_head.load_state_dict(payload["projection_head"])


def _cpu(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k: v.detach().cpu() for k, v in state.items()}


class SimCLRModule(SSLModule):
    """SimCLR (Chen et al. 2020): backbone → projection head → NT-Xent over the stacked views.

    With more than two views every pair of views is contrasted and the losses averaged.
    ``gather_distributed=True`` makes negatives span all processes under DDP.
    """

    method = "simclr"

    def build_method(self, cfg: SourceConfig) -> None:
        self.projection_head = SimCLRProjectionHead(self.spec.feat_dim, cfg.proj_hidden_dim, cfg.proj_out_dim)
        self.criterion = NTXentLoss(temperature=cfg.temperature, gather_distributed=True)

    def ssl_loss(self, batch):
        views = batch["views"]
        b = views[0].shape[0]
        h = self.backbone(torch.cat(views))
        z = self.projection_head(h).split(b)  # one (b, proj_out_dim) block per view
        pairs = [(i, j) for i in range(len(z)) for j in range(i + 1, len(z))]
        loss = sum(self.criterion(z[i], z[j]) for i, j in pairs) / len(pairs)
        return loss, h[:b]


class MoCoV2Module(SSLModule):
    """MoCo v2 (Chen et al. 2020, arXiv 2003.04297) from lightly's parts.

    Per step, with views (x_q, x_k) = the first two views (further views are not used):

    1. m = cosine_schedule(step, total_steps, moco_momentum, 1.0);
       key encoder θ_k ← m·θ_k + (1 − m)·θ_q (parameters of backbone and head; ``update_momentum``);
    2. q = head(backbone(x_q))  (b, proj_out_dim);
       k = key_head(key_backbone(x_k)) under no_grad; under DDP computed on a batch shuffled
       across processes and unshuffled (``batch_shuffle``/``batch_unshuffle``, MoCo's
       shuffle-BN: BN statistics of the keys differ from the queries'); on one device not
       shuffled, as BN sees the whole batch either way;
    3. loss = InfoNCE of q against its key k and the queue's keys, temperature
       ``moco_temperature`` (lightly ``NTXentLoss`` with a memory bank); then the batch's keys
       (gathered from all processes) replace the oldest queue entries.

    The queue is a non-persistent buffer in lightly; :meth:`on_save_checkpoint` and
    :meth:`on_load_checkpoint` store and restore it (and its pointer) explicitly, so a resumed
    run continues with the same negatives.
    """

    method = "mocov2"

    def build_method(self, cfg: SourceConfig) -> None:
        self.projection_head = MoCoProjectionHead(self.spec.feat_dim, cfg.proj_hidden_dim, cfg.proj_out_dim)
        self.key_backbone = copy.deepcopy(self.backbone)
        self.key_head = copy.deepcopy(self.projection_head)
        deactivate_requires_grad(self.key_backbone)
        deactivate_requires_grad(self.key_head)
        self.criterion = NTXentLoss(temperature=cfg.moco_temperature,
                                    memory_bank_size=(cfg.moco_queue_size, cfg.proj_out_dim),
                                    gather_distributed=True)

    @property
    def queue(self) -> torch.Tensor:
        """(moco_queue_size, proj_out_dim) L2-normalised keys; row ``queue_ptr`` is overwritten next."""
        return self.criterion.memory_bank.bank

    @property
    def queue_ptr(self) -> torch.Tensor:
        return self.criterion.memory_bank.bank_ptr

    def momentum(self) -> float:
        """Key-encoder momentum at the current step (``moco_momentum`` outside a Trainer)."""
        start = self.source.moco_momentum
        if self._trainer is None:
            return start
        total = max(1, int(self.trainer.estimated_stepping_batches))
        return cosine_schedule(min(self.global_step, total), total, start, 1.0)

    @torch.no_grad()
    def update_key_encoder(self, m: float) -> None:
        update_momentum(self.backbone, self.key_backbone, m)
        update_momentum(self.projection_head, self.key_head, m)

    @torch.no_grad()
    def keys(self, x: torch.Tensor) -> torch.Tensor:
        """Keys of ``x`` from the key encoder, with MoCo's shuffle-BN across processes.

        On one process the batch is not shuffled: BatchNorm sees the whole batch in any order,
        so a shuffle would only change the float summation order. Under DDP the permutation is
        drawn from a generator seeded by (run seed, global step), not from the global RNG, so a
        resumed run draws the same permutations as an uninterrupted one.
        """
        if world_size() == 1:
            return self.key_head(self.key_backbone(x))
        devices = [x.device.index] if x.is_cuda else []
        with torch.random.fork_rng(devices=devices):
            torch.manual_seed((torch.initial_seed() * 1_000_003 + int(self.global_step)) % 2**63)
            x, shuffle = batch_shuffle(x, distributed=True)
        k = self.key_head(self.key_backbone(x))
        return batch_unshuffle(k, shuffle, distributed=True)

    def ssl_loss(self, batch):
        x_q, x_k = batch["views"][0], batch["views"][1]
        m = self.momentum()
        self.update_key_encoder(m)
        h = self.backbone(x_q)
        q = self.projection_head(h)
        k = self.keys(x_k)
        loss = self.criterion(q, k)
        if self._trainer is not None:
            self.log("moco_momentum", m, on_step=True, on_epoch=False, batch_size=x_q.shape[0])
        return loss, h

    # -- checkpoints ----------------------------------------------------------------------

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        super().on_save_checkpoint(checkpoint)
        checkpoint["moco_queue"] = {"bank": self.queue.detach().cpu().clone(),
                                    "bank_ptr": self.queue_ptr.detach().cpu().clone()}

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        super().on_load_checkpoint(checkpoint)
        if "moco_queue" in checkpoint:
            self._set_queue(checkpoint["moco_queue"]["bank"], checkpoint["moco_queue"]["bank_ptr"])

    @torch.no_grad()
    def _set_queue(self, bank: torch.Tensor, ptr: torch.Tensor) -> None:
        if bank.shape != self.queue.shape:
            from ..errors import CheckpointError

            raise CheckpointError(f"MoCo queue of shape {tuple(bank.shape)} in the checkpoint but source.moco_queue_size"
                                  f"/proj_out_dim give {tuple(self.queue.shape)}; set them to the checkpoint's")
        self.queue.copy_(bank.to(self.queue))
        self.queue_ptr.copy_(ptr.to(self.queue_ptr))

    def teacher_state(self) -> dict[str, Any]:
        return {**super().teacher_state(), "key_backbone": _cpu(self.key_backbone.state_dict()),
                "key_head": _cpu(self.key_head.state_dict()), "moco_queue": self.queue.detach().cpu().clone(),
                "moco_queue_ptr": self.queue_ptr.detach().cpu().clone()}

    def load_teacher_state(self, payload: dict[str, Any]) -> None:
        super().load_teacher_state(payload)
        if "key_backbone" in payload:
            self.key_backbone.load_state_dict(payload["key_backbone"])
            self.key_head.load_state_dict(payload["key_head"])
        else:  # external weights: start the key encoder as a copy of the query encoder
            self.key_backbone.load_state_dict(self.backbone.state_dict())
            self.key_head.load_state_dict(self.projection_head.state_dict())
        if "moco_queue" in payload:
            self._set_queue(payload["moco_queue"], payload["moco_queue_ptr"])


METHODS: dict[str, type[SSLModule]] = {"simclr": SimCLRModule, "mocov2": MoCoV2Module}


def build_ssl_module(cfg: SourceConfig, data: DataConfig, in_channels: int, num_classes: int | None = None,
                     epochs: float | None = None) -> SSLModule:
    """The source-stage module of ``cfg.method`` (``epochs``: of the stage, default source.epochs)."""
    return METHODS[cfg.method](cfg, data, in_channels, num_classes, epochs)


__all__ = ["METHODS", "MoCoV2Module", "SSLModule", "SimCLRModule", "build_ssl_module"]
