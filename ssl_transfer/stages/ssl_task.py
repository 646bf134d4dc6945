"""Task ``ssl``: an SSL teacher (SimCLR / MoCo v2), "teacher continued" as the control, a student
trained by the transfer loss alone; linear probe and kNN on frozen features."""

from __future__ import annotations

from ..evaluation.frozen import evaluate_run
from ..tasks import StagePlan
from .source import ControlStage, SourceStage
from .transfer import TransferStage


def plan(cfg) -> StagePlan:
    return StagePlan(SourceStage(cfg), TransferStage(cfg), [ControlStage(cfg)] if cfg.controls.teacher_continued else [])


evaluate = evaluate_run
