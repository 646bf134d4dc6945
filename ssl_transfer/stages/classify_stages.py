"""The stages of task ``classify``: the teacher (source), the student and its two controls.

=====================  ================================================================================
``source``             :class:`ClassifySourceStage` -> teacher.pt. ``source.method: simclr | mocov2``: the
                       SSL source stage (:class:`~ssl_transfer.stages.source.SourceStage`), its classifier
                       the linear probe fitted on the labelled training images (:func:`fit_probe`);
                       ``supervised``: backbone + linear classifier trained with CE on the labelled images
                       for ``source.epochs`` (``source.optimizer``); ``--teacher FILE``: a teacher.pt, or
                       external backbone weights (a supervised file's ``fc`` becomes the classifier, else
                       the probe).
``transfer``           :class:`ClassifyStage` -> student.pt: CE + λ · ``classify.loss`` (+ KD) against the
                       frozen teacher, for ``classify.epochs`` passes over the labelled images.
``ce_only``            the same student (architecture, initialisation, optimiser, steps, labelled batches)
                       trained with CE alone -> ce_only.pt.
``teacher_finetuned``  the teacher's backbone with a fresh linear classifier, trained with CE for the same
                       steps -> teacher_finetuned.pt; only when the student has the teacher's architecture and
                       starts from scratch (from the teacher, ``ce_only`` *is* the teacher fine-tuned).
=====================  ================================================================================

The student and both controls draw their batches with ``transfer_data_seed(cfg)`` (the same
labelled images and augmentations, step for step) and are initialised with ``seed + 2``.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from typing import Any

import lightning as L
from torch import nn

from ..errors import CheckpointError
from ..io import load_model, read_checkpoint, save_model
from ..models import build_backbone
from ..models.weights import flat_state_dict, is_project_model, load_backbone_weights
from .base import StageContext, StageResult, dataset_extra
from .classifier import Classifier, ClassifyModule, FrozenClassifierTeacher, fit_probe
from .classify_data import classify_loader, pools
from .source import SourceStage, transfer_data_seed

log = logging.getLogger("ssl_transfer")
SSL_METHODS = ("simclr", "mocov2")


@dataclass
class ClassifyTeacher:
    """What the classification stages read from the teacher: ``backbone`` and its ``spec``, its
    ``classifier`` (Linear(feat_dim, classes)), ``classifier_kind`` (``supervised``, ``probe``
    or ``external fc``), ``projection`` (SSL teachers' projection head) and ``info`` (probe's C)."""

    backbone: nn.Module
    spec: Any
    classifier: nn.Module
    classifier_kind: str
    method: str
    projection: nn.Module | None = None
    info: dict | None = None

    def model(self) -> nn.Module:
        """Logits (n, classes) of the teacher: backbone then classifier."""
        return nn.Sequential(self.backbone, self.classifier)


def _classifier_state(layer: nn.Module) -> dict:
    return {k: v.detach().cpu() for k, v in layer.state_dict().items()}


class ClassifySourceStage:
    """Train (or rebuild) the teacher of task classify; ``result.model`` is a :class:`ClassifyTeacher`."""

    name = "source"
    artifact = "teacher.pt"

    def __init__(self, cfg):
        self.cfg = cfg
        self.ssl = SourceStage(cfg) if cfg.source.method in SSL_METHODS else None

    def _probe(self, backbone: nn.Module, bundle) -> tuple[nn.Linear, dict]:
        return fit_probe(backbone, bundle, self.cfg, pools(bundle)[0])

    def _ssl_result(self, result: StageResult, bundle, name: str) -> StageResult:
        """An SSL teacher with its probe (fitted anew: it depends on the run's labelled images)."""
        head, info = self._probe(result.backbone, bundle)
        log.info("teacher probe on %d labelled images: C %g, val top-1 %.4f", info["n_labelled"], info["C"],
                 info["probe_val_acc"])
        teacher = ClassifyTeacher(result.backbone, result.spec, head, "probe", self.cfg.source.method,
                                  result.model.projection_head, info)
        return StageResult(name, teacher, result.backbone, result.spec, result.seconds, result.path)

    def train(self, ctx: StageContext) -> StageResult:
        cfg, bundle = self.cfg, ctx.bundle
        if self.ssl is not None:
            return self._ssl_result(self.ssl.train(ctx), bundle, self.name)
        L.seed_everything(cfg.seed, workers=True, verbose=False)
        backbone, spec = build_backbone(cfg.source.backbone, cfg.source.stem, bundle.channels)
        net = Classifier(backbone, spec, bundle.num_classes)
        module = ClassifyModule(net, cfg.source.optimizer, cfg.data.batch_size, cfg.source.epochs, stage=self.name)
        seconds = ctx.fit(self.name, module, classify_loader(cfg, bundle, cfg.seed, cfg.data.batch_size),
                          cfg.source.epochs, cfg.seed)
        net.cpu()
        path = ctx.path(self.artifact)
        save_model(path, backbone, spec, extra={"method": "supervised", "classifier": _classifier_state(net.classifier),
                                                "num_classes": bundle.num_classes, **dataset_extra(cfg, bundle)})
        teacher = ClassifyTeacher(backbone, spec, net.classifier, "supervised", "supervised")
        return StageResult(self.name, teacher, backbone, spec, seconds, path)

    def load(self, ctx: StageContext) -> StageResult:
        return self.from_file(ctx.run_dir.work / self.artifact, ctx.bundle, name=self.name)

    def from_file(self, path: str | os.PathLike, bundle, name: str = "source") -> StageResult:
        """A teacher from a file: a teacher.pt of this project (SSL: through the SSL source stage's
        checks, then the probe; supervised: its classifier), or external backbone weights."""
        cfg = self.cfg
        if self.ssl is not None:
            if cfg.classify.teacher_output == "projection" and not is_project_model(read_checkpoint(path)):
                raise CheckpointError(f"teacher '{path}' holds backbone weights only, no projection head; set "
                                      "classify.teacher_output: backbone")
            result = self.ssl.from_file(path, bundle, name=name)
            result.path = result.path or path
            return self._ssl_result(result, bundle, name)
        payload = read_checkpoint(path)
        backbone, spec = build_backbone(cfg.source.backbone, cfg.source.stem, bundle.channels)
        if is_project_model(payload):
            if payload.get("method") != "supervised" or "classifier" not in payload:
                raise CheckpointError(f"teacher '{path}' is a {payload.get('method', 'simclr')} teacher, not a supervised "
                                      f"one; pass --set source.method={payload.get('method', 'simclr')}")
            saved, _ = load_model(path)
            if payload["spec"] != spec.to_dict():
                raise CheckpointError(f"teacher '{path}' has backbone {payload['spec']} but the config asks for "
                                      f"{spec.to_dict()}; set source.backbone/stem to match")
            backbone.load_state_dict(saved.state_dict())
            head = nn.Linear(spec.feat_dim, bundle.num_classes)
            self._load_head(head, payload["classifier"], path)
            return StageResult(name, ClassifyTeacher(backbone, spec, head, "supervised", "supervised"), backbone,
                               spec, 0.0, path)
        info = load_backbone_weights(path, backbone, spec, prefix=cfg.source.weights_prefix)
        state = flat_state_dict(payload, path)
        fc = {k[len(info["prefix"]) + 3:]: v for k, v in state.items() if k.startswith(info["prefix"] + "fc.")}
        head = nn.Linear(spec.feat_dim, bundle.num_classes)
        if set(fc) == {"weight", "bias"} and tuple(fc["weight"].shape) == tuple(head.weight.shape):
            self._load_head(head, fc, path)
            kind, extra = "external fc", None
        else:
            head, extra = self._probe(backbone, bundle)
            kind = "probe"
        log.info("teacher weights from '%s' (prefix '%s'), classifier: %s", path, info["prefix"], kind)
        return StageResult(name, ClassifyTeacher(backbone, spec, head, kind, "supervised", info=extra), backbone,
                           spec, 0.0, path)

    @staticmethod
    def _load_head(head: nn.Linear, state: dict, path) -> None:
        try:
            head.load_state_dict(state)
        except RuntimeError:
            raise CheckpointError(f"the classifier in '{path}' has another number of classes than the dataset "
                                  f"({head.out_features}); use a teacher of this dataset") from None


#: role -> (stage name, artifact)
ROLES = {"student": ("transfer", "student.pt"), "ce_only": ("ce_only", "ce_only.pt"),
         "teacher_finetuned": ("teacher_finetuned", "teacher_finetuned.pt")}


class ClassifyStage:
    """The student (``role: student``) or a control (``ce_only``, ``teacher_finetuned``);
    ``result.model`` is its :class:`Classifier`, ``result.backbone`` its backbone."""

    def __init__(self, cfg, role: str = "student"):
        self.cfg, self.role = cfg, role
        self.name, self.artifact = ROLES[role]

    def build(self, teacher: StageResult, bundle) -> Classifier:
        """The classifier of this role, initialised (with ``seed + 2`` for random parts)."""
        cc = self.cfg.classify
        L.seed_everything(self.cfg.seed + 2, workers=True, verbose=False)
        t = teacher.model
        from_teacher = self.role == "teacher_finetuned" or cc.student_init == "teacher"
        arch = t.spec.arch if self.role == "teacher_finetuned" else cc.student_backbone or t.spec.arch
        stem = t.spec.stem if self.role == "teacher_finetuned" else cc.student_stem or t.spec.stem
        backbone, spec = build_backbone(arch, stem, bundle.channels)
        head = cc.student_head if self.role == "student" else "none"
        net = Classifier(backbone, spec, bundle.num_classes, head, cc.embed_dim)
        if from_teacher:  # the backbone; the classifier starts fresh, as in standard fine-tuning (the
            # probe folded onto raw features has weights / feature std: its gradients wreck the backbone)
            backbone.load_state_dict(t.backbone.state_dict())
        return net

    def frozen_teacher(self, teacher: StageResult) -> FrozenClassifierTeacher:
        t, cc = teacher.model, self.cfg.classify
        projection = t.projection if cc.teacher_output == "projection" else None
        return FrozenClassifierTeacher(t.backbone, t.spec.feat_dim, t.classifier, projection,
                                       self.cfg.source.proj_out_dim)

    def module(self, net: Classifier, teacher: StageResult) -> ClassifyModule:
        cfg, cc = self.cfg, self.cfg.classify
        common = dict(optim=cc.optimizer, batch_size=cc.student_batch(cfg), epochs=cc.epochs, stage=self.name)
        if self.role != "student":
            return ClassifyModule(net, **common)
        return ClassifyModule(net, teacher=self.frozen_teacher(teacher), ce_weight=cc.ce_weight, loss=cc.loss,
                              loss_args=cc.loss_args, loss_weight=cc.loss_weight, kd_weight=cc.kd_weight,
                              kd_temperature=cc.kd_temperature, **common)

    def train(self, ctx: StageContext, teacher: StageResult) -> StageResult:
        cfg, bundle = self.cfg, ctx.bundle
        seed = transfer_data_seed(cfg)  # every role: the same labelled batches and augmentations
        loader = classify_loader(cfg, bundle, seed, cfg.classify.student_batch(cfg),
                                 unlabelled=cfg.classify.unlabelled and self.role == "student")
        net = self.build(teacher, bundle)
        module = self.module(net, teacher)
        seconds = ctx.fit(self.name, module, loader, cfg.classify.epochs, seed)
        module.cpu()
        path = ctx.path(self.artifact)
        save_model(path, net.backbone, net.spec, extra={
            "classifier": _classifier_state(net.classifier), "head": _classifier_state(net.head),
            "head_kind": net.head_kind, "embed_dim": net.embed_dim, "num_classes": bundle.num_classes,
            "role": self.role, **dataset_extra(cfg, bundle)})
        return StageResult(self.name, net, net.backbone, net.spec, seconds, path)

    def load(self, ctx: StageContext, teacher: StageResult) -> StageResult:
        return self.from_file(ctx.run_dir.work / self.artifact, teacher, ctx.bundle)

    def from_file(self, path, teacher: StageResult, bundle) -> StageResult:
        """A saved student or control, checked against the config's architecture."""
        backbone, payload = load_model(path)
        net = self.build(teacher, bundle)
        if payload["spec"] != net.spec.to_dict() or payload.get("embed_dim") != net.embed_dim:
            raise CheckpointError(f"'{path}' is a {payload['spec']['arch']} but the config asks for a {net.spec.arch}; "
                                  "fix classify.student_* to match")
        net.backbone.load_state_dict(backbone.state_dict())
        net.classifier.load_state_dict(payload["classifier"])
        net.head.load_state_dict(payload["head"])
        return StageResult(self.name, net, net.backbone, net.spec, 0.0, path)


def controls(cfg) -> list[ClassifyStage]:
    """The control stages of ``cfg`` (module docstring): CE only; the teacher fine-tuned when the
    student has the teacher's architecture and does not already start from the teacher."""
    cc, src = cfg.classify, cfg.source
    out = [ClassifyStage(cfg, "ce_only")] if cc.ce_only else []
    same_arch = cc.student_backbone in (None, src.backbone) and cc.student_stem in (None, src.stem)
    if cc.teacher_finetuned and same_arch and cc.student_init == "scratch":
        out.append(ClassifyStage(cfg, "teacher_finetuned"))
    return out


__all__ = ["ClassifySourceStage", "ClassifyStage", "ClassifyTeacher", "controls"]
