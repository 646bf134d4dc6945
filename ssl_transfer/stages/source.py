"""The source stage (the SSL teacher) and its control ("teacher continued").

:class:`SourceStage` trains a ``source.method`` teacher (SimCLR or MoCo v2,
:mod:`ssl_transfer.stages.pretrain`) for ``source.epochs`` and saves it as teacher.pt (backbone +
spec, and the method's state: projection head; MoCo v2 also key encoder and queue). It also
rebuilds teachers: its own teacher.pt (``load``) or any file given as ``--teacher``
(:meth:`SourceStage.from_file`: a run's teacher.pt, or external backbone weights of lightly,
solo-learn, MoCo or torchvision into ``source.backbone/stem``).

:class:`ControlStage` is the fair control of the transfer stage: a copy of the teacher trained
``transfer.epochs`` more with its own SSL loss, on the same batches as every student (same data
seed), saved as teacher_continued.pt, so a student's gain is not just more training.
"""

from __future__ import annotations

import copy
import logging
import os

import lightning as L

from ..errors import CheckpointError
from ..io import load_model, read_checkpoint, save_model
from ..models.weights import is_project_model, load_backbone_weights
from .base import StageContext, StageResult, dataset_extra
from .pretrain import SSLModule, build_ssl_module

log = logging.getLogger("ssl_transfer")


def transfer_data_seed(cfg) -> int:
    """The batch order and augmentation seed shared by the control and every student (the
    teacher draws with ``seed``): paired comparisons see the same images in the same order, with
    the same augmentations."""
    return cfg.seed + 1


class SourceStage:
    """Train (or rebuild) the SSL teacher; ``result.model`` is its :class:`SSLModule`."""

    name = "source"
    artifact = "teacher.pt"

    def __init__(self, cfg):
        self.cfg = cfg

    def build(self, bundle, epochs: float | None = None) -> SSLModule:
        return build_ssl_module(self.cfg.source, self.cfg.data, bundle.channels, bundle.num_classes, epochs)

    def train(self, ctx: StageContext) -> StageResult:
        cfg = self.cfg
        loader = ctx.bundle.train_loader(cfg.seed)
        L.seed_everything(cfg.seed, workers=True, verbose=False)
        module = self.build(ctx.bundle)
        seconds = ctx.fit(self.name, module, loader, cfg.source.epochs, cfg.seed)
        return self.save(ctx, module, self.artifact, self.name, seconds)

    def save(self, ctx: StageContext, module: SSLModule, artifact: str, name: str, seconds: float) -> StageResult:
        module.cpu()
        path = ctx.path(artifact)
        save_model(path, module.backbone, module.spec, extra={**module.teacher_state(),
                                                                **dataset_extra(self.cfg, ctx.bundle)})
        return StageResult(name, module, module.backbone, module.spec, seconds, path)

    def load(self, ctx: StageContext) -> StageResult:
        return self.from_file(ctx.run_dir.work / self.artifact, ctx.bundle, name=self.name)

    def from_file(self, path: str | os.PathLike, bundle, name: str = "source") -> StageResult:
        """A teacher from a file: this project's teacher.pt (its SSL method must equal
        source.method, so the control trains it with its own loss), or external backbone weights
        (fresh projection head; MoCo v2: key encoder a copy of the backbone, a fresh queue)."""
        cfg = self.cfg
        module = self.build(bundle)
        if not is_project_model(read_checkpoint(path)):
            if cfg.transfer.teacher_output == "projection":
                raise CheckpointError(f"teacher '{path}' holds backbone weights only, no projection head; set "
                                      "transfer.teacher_output: backbone")
            info = load_backbone_weights(path, module.backbone, module.spec, prefix=cfg.source.weights_prefix)
            module.load_teacher_state({})
            log.info("teacher weights from '%s' (prefix '%s', dropped %s)", path, info["prefix"], info["dropped"])
            return StageResult(name, module, module.backbone, module.spec, 0.0, None)
        backbone, payload = load_model(path)
        method = payload.get("method", "simclr")
        if method != cfg.source.method:
            raise CheckpointError(f"teacher '{path}' was trained with {method} but source.method = "
                                  f"{cfg.source.method}; pass --set source.method={method}")
        if payload["spec"]["in_channels"] != module.spec.in_channels:
            raise CheckpointError(f"teacher '{path}' takes {payload['spec']['in_channels']} input channels but "
                                  f"{cfg.data.name} has {module.spec.in_channels}; use a teacher of this dataset")
        if payload["spec"] != module.spec.to_dict():
            raise CheckpointError(f"teacher '{path}' has backbone {payload['spec']} but the config asks for "
                                  f"{module.spec.to_dict()}; set source.backbone/stem to match")
        module.backbone.load_state_dict(backbone.state_dict())
        try:
            module.load_teacher_state(payload)
        except RuntimeError:
            raise CheckpointError(f"teacher '{path}' has a projection head of another size than "
                                  "source.proj_hidden_dim/proj_out_dim; set them to the teacher's") from None
        return StageResult(name, module, module.backbone, module.spec, 0.0, path)


class ControlStage:
    """Teacher continued: the teacher trained ``transfer.epochs`` more with its own SSL loss (MoCo
    v2 keeps its key encoder and queue; the momentum and learning-rate schedules restart)."""

    name = "teacher_continued"
    artifact = "teacher_continued.pt"

    def __init__(self, cfg):
        self.cfg = cfg
        self.source = SourceStage(cfg)

    def train(self, ctx: StageContext, teacher: StageResult) -> StageResult:
        cfg = self.cfg
        seed = transfer_data_seed(cfg)
        loader = ctx.bundle.train_loader(seed)
        module = copy.deepcopy(teacher.model)  # backbone, heads and (MoCo) key encoder and queue
        module.stage, module.epochs = self.name, cfg.transfer.epochs
        seconds = ctx.fit(self.name, module, loader, cfg.transfer.epochs, seed)
        return self.source.save(ctx, module, self.artifact, self.name, seconds)

    def load(self, ctx: StageContext, teacher: StageResult) -> StageResult:
        return self.source.from_file(ctx.run_dir.work / self.artifact, ctx.bundle, name=self.name)


__all__ = ["ControlStage", "SourceStage", "transfer_data_seed"]
