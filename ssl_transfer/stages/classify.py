"""Task ``classify``: a supervised student classifier helped by a frozen teacher.

Source: the teacher (SSL with its linear probe, supervised CE, or external weights:
:class:`~ssl_transfer.stages.classify_stages.ClassifySourceStage`); controls: CE only and the
teacher fine-tuned; transfer: the student trained with CE + lambda x relational loss (+ KD)
(:class:`~ssl_transfer.stages.classify_stages.ClassifyStage`); evaluation: each model's own test
top-1 (:mod:`ssl_transfer.evaluation.classify`); report: :mod:`ssl_transfer.report_classify`.
"""

from __future__ import annotations

from ..evaluation.classify import evaluate_classify, top1
from ..report_classify import report_markdown, write_plots
from ..tasks import StagePlan
from .classify_data import check_pools
from .classify_stages import ClassifySourceStage, ClassifyStage, controls


def plan(cfg) -> StagePlan:
    return StagePlan(ClassifySourceStage(cfg), ClassifyStage(cfg, "student"), controls(cfg))


def check(cfg, bundle) -> None:
    """Data checks before the run directory is touched: the labelled pool fills a batch, the
    unlabelled pool is not empty when ``classify.unlabelled``."""
    check_pools(cfg, bundle)


evaluate = evaluate_classify


def evaluate_source(cfg, bundle, teacher) -> dict:
    """The teacher block of ``ssl-transfer pretrain`` for task classify: its own top-1."""
    t = teacher.model
    return {**top1(t.model(), bundle, cfg), "classifier": t.classifier_kind, **({"probe": t.info} if t.info else {})}


__all__ = ["check", "evaluate", "evaluate_source", "plan", "report_markdown", "write_plots"]
