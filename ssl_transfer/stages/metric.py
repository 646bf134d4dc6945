"""Task ``metric``: the paper's metric-learning protocol as stages of the runner.

=============  ===============================================================================
source         Proxy-Anchor teacher on the training classes (:mod:`.proxy_anchor`): a ResNet
               trunk, ``metric.pooling``, a linear head to ``metric.embed_dim``
control        teacher continued: the teacher trained ``transfer.epochs`` more with Proxy-Anchor
               on the students' batches (``controls.teacher_continued``)
transfer       the transfer stage (:class:`~ssl_transfer.stages.transfer.TransferStage`) on the
               teacher's *embedding* (trunk + head, frozen), class-balanced batches
               (``data.images_per_class``), ``data.views`` views per image; the student is an
               embedding network of the same form (``transfer.student_backbone``, its own
               ``transfer.embed_dim``)
evaluate       Recall@K (``eval.recall_ks``), MAP@R, R-precision, NMI of every model's embedding
               on the test classes, after the same on the validation classes
               (:mod:`.metric_select`)
=============  ===============================================================================

The student (:func:`build_metric_student`): ``transfer.student_init: teacher`` copies the
teacher's trunk, and its head too when the student's head is linear of the teacher's width (the
student then starts exactly at the teacher's embedding); ``scratch`` starts the trunk from
ImageNet weights when ``metric.student_imagenet_weights`` (or, for the teacher's architecture,
``metric.imagenet_weights``) names a file, as LabelRelaxation's students do, else from random
weights. The head is orthogonally initialised. Weights of every stage: final, or chosen on the
validation classes (``metric.select_every``); the test classes are read once per model, last.
"""

from __future__ import annotations

import time

from ..config.metric import check_weights_file
from ..models import embedding_head, head_out_dim
from ..models.embedding import build_trunk, embedding_linear, load_imagenet_weights
from ..runtime import eval_device
from ..tasks import StagePlan
from .base import StageContext, StageResult
from .metric_report import report_markdown, write_plots
from .metric_select import MetricContext, embedding_net, read_selection, split_metrics
from .proxy_anchor import ProxyAnchorControl, ProxyAnchorStage
from .transfer import FrozenTeacher, Student, TransferStage

#: Keys of a retrieval block that describe the split rather than measure it.
_SPLIT_FACTS = ("n", "classes", "embed_dim")


def build_metric_student(cfg, teacher_net: Student, in_channels: int, pretrained: bool = True) -> Student:
    """The student embedding network (see the module docstring); ``pretrained=False`` skips
    reading ImageNet weights (the student is about to be loaded from its file)."""
    tc, m = cfg.transfer, cfg.metric
    arch, stem = tc.student_backbone or teacher_net.spec.arch, tc.student_stem or teacher_net.spec.stem
    backbone, spec = build_trunk(arch, stem, in_channels, m.pooling)
    if tc.student_init == "teacher":
        backbone.load_state_dict(teacher_net.backbone.state_dict())
    elif pretrained:
        key = "metric.student_imagenet_weights"
        weights = m.student_imagenet_weights
        if weights is None and arch == cfg.source.backbone:
            key, weights = "metric.imagenet_weights", m.imagenet_weights
        if weights:
            load_imagenet_weights(backbone, spec, weights, key)
    linear = tc.student_head == "linear"
    head = embedding_linear(spec.feat_dim, tc.embed_dim) if linear else embedding_head(tc.student_head, spec.feat_dim,
                                                                                        tc.embed_dim)
    if tc.student_init == "teacher" and linear and tc.embed_dim == teacher_net.embed_dim:
        head.load_state_dict(teacher_net.head.state_dict())
    student = Student(backbone, head)
    student.spec, student.embed_dim = spec, head_out_dim(tc.student_head, spec.feat_dim, tc.embed_dim)
    return student


class MetricTransferStage(TransferStage):
    """:class:`TransferStage` with the teacher's embedding (trunk + head) as the frozen teacher,
    :func:`build_metric_student` as the student, and weights chosen by :class:`MetricContext`."""

    def __init__(self, cfg):
        super().__init__(cfg)
        self._pretrained = True

    def frozen_teacher(self, teacher: StageResult) -> FrozenTeacher:
        net = teacher.model.net
        return FrozenTeacher(net.backbone, net.spec.feat_dim, net.head, net.embed_dim)

    def build_student(self, teacher: StageResult, bundle) -> Student:
        return build_metric_student(self.cfg, teacher.model.net, bundle.channels, self._pretrained)

    def train(self, ctx: StageContext, teacher: StageResult, name: str | None = None) -> StageResult:
        return super().train(MetricContext.of(ctx), teacher, name)

    def from_file(self, path, teacher: StageResult, bundle) -> StageResult:
        self._pretrained = False
        try:
            return super().from_file(path, teacher, bundle)
        finally:
            self._pretrained = True


def plan(cfg) -> StagePlan:
    """The stages of a task-metric run; the named ImageNet weights files must exist (checked here,
    before the run directory is touched)."""
    for key in ("imagenet_weights", "student_imagenet_weights"):
        check_weights_file(getattr(cfg.metric, key), f"metric.{key}")
    controls = [ProxyAnchorControl(cfg)] if cfg.controls.teacher_continued else []
    return StagePlan(ProxyAnchorStage(cfg), MetricTransferStage(cfg), controls)


def evaluate_model(result: StageResult, bundle, cfg, test: bool = True, val: bool = True) -> dict:
    """One model block: ``val_<metric>`` on the validation classes, then (``test``) ``<metric>``
    on the test classes (fractions), the split sizes, the selection record and ``eval_s``.
    ``test=False`` reads no test image (choosing); ``val=False`` skips the validation classes
    (a benchmark's final step, whose validation numbers were recorded while choosing)."""
    start = time.perf_counter()
    dev = eval_device(cfg)
    net = embedding_net(result.model).to(dev)
    block: dict = {}
    if val:
        found = split_metrics(net, bundle, cfg, "val", device=dev)
        block.update({f"val_{k}": v for k, v in found.items() if k not in _SPLIT_FACTS})
        block.update(embed_dim=found["embed_dim"], val_images=found["n"], val_classes=found["classes"])
    if test:
        found = split_metrics(net, bundle, cfg, "test", device=dev)
        block.update({k: v for k, v in found.items() if k not in _SPLIT_FACTS})
        block.update(embed_dim=found["embed_dim"], test_images=found["n"], test_classes=found["classes"])
    selection = read_selection(result)
    block["selection"] = ({k: selection[k] for k in ("metric", "chosen_step", "chosen_epoch", "chosen_score")}
                          if selection else "final weights")
    block["eval_s"] = time.perf_counter() - start
    return block


def evaluate(cfg, bundle, teacher: StageResult, student: StageResult, controls: dict) -> dict:
    """The model blocks of results.json: teacher, controls, student (each its embedding), plus
    the protocol; ``eval_s`` sums their evaluation times."""
    results = {"teacher": evaluate_model(teacher, bundle, cfg),
               "controls": {name: evaluate_model(r, bundle, cfg) for name, r in controls.items()},
               "student": evaluate_model(student, bundle, cfg)}
    results["protocol"] = protocol(cfg)
    blocks = [results["teacher"], results["student"], *results["controls"].values()]
    results["eval_s"] = sum(b["eval_s"] for b in blocks)
    return results


def evaluate_source(cfg, bundle, teacher: StageResult) -> dict:
    """The teacher block of ``ssl-transfer pretrain`` for task metric."""
    return {**evaluate_model(teacher, bundle, cfg), "protocol": protocol(cfg)}


def protocol(cfg) -> dict:
    return {"features": "embedding (trunk + head)", "similarity": "cosine", "ks": list(cfg.eval.recall_ks),
            "val": f"{cfg.data.val_classes} whole training classes (data.val_classes)",
            "test": "the test classes, never trained on, read once per model after every choice",
            "weights": (f"chosen on val {cfg.metric.select_metric} every {cfg.metric.select_every:g} epochs"
                        if cfg.metric.select_every > 0 else "final")}


__all__ = ["MetricTransferStage", "build_metric_student", "evaluate", "evaluate_model", "evaluate_source", "plan",
           "report_markdown", "write_plots"]
