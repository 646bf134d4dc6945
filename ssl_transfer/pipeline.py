"""The runner: source → control → transfer → evaluate → report, as the paper reads.

1. **source**: pretrain an SSL teacher (``source.method``: SimCLR or MoCo v2), or read one
   (``ssl-transfer transfer --teacher FILE``);
2. **control**: the teacher trained for the transfer stage's steps with its own SSL loss
   ("teacher continued"), so a student's gain is not just more training;
3. **transfer**: a student trained only by the transfer loss on the frozen teacher;
4. **evaluate** teacher, control and student on frozen features: every selection on the
   validation split, the test split once per model, last;
5. **report**: results.json, report.md and plots/.

The runner owns the run directory (:class:`ssl_transfer.runs.RunDirectory`: checks before any
write, lock, manifest, replace-on-completion) and the run state (run.json, ``--resume``); each
stage owns its model (the contract: :mod:`ssl_transfer.stages.base`).
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

from .config import RunConfig
from .data import DataBundle
from .distributed import is_global_zero
from .errors import NonFiniteError
from .evaluation.frozen import evaluate
from .io import atomic_write_text
from .runs import RunDirectory, RunState, run_metadata
from .runtime import setup_processes, setup_runtime
from .stages.base import StageContext, StageResult
from .tasks import get_task


def prepare(cfg: RunConfig, bundle: DataBundle | None = None) -> DataBundle:
    """Everything that can fail on bad input before the run directory is touched: the data (and
    the batch size against it), threads, the process layout."""
    views = cfg.source.method if cfg.source.method in ("simclr", "mocov2") else "simclr"  # augmentation preset
    bundle = bundle or DataBundle.from_config(cfg.data, cfg.seed, method=views)
    bundle.train_loader(cfg.seed)  # validates the batch size against the data
    setup_runtime(cfg)
    setup_processes(cfg)
    return bundle


def check_task(task, cfg: RunConfig, bundle: DataBundle) -> None:
    """The task's own checks of config against data (``task.check``, e.g. classify: the labelled
    images fill a batch), before the run directory is touched."""
    check = getattr(task, "check", None)
    if check is not None:
        check(cfg, bundle)


def run_stage(state: RunState, ctx: StageContext, stage, **inputs) -> StageResult:
    """Train ``stage`` (or, when run.json says it finished before a --resume, load it); record it."""
    if stage.name in state.finished:
        return stage.load(ctx, **inputs)
    try:
        result = stage.train(ctx, **inputs)
    except NonFiniteError as e:
        state.fail(stage.name, e)
        raise
    state.finish_stage(stage.name, result.seconds)
    return result


def run(cfg: RunConfig, out_dir: str | os.PathLike, overwrite: bool = False, bundle: DataBundle | None = None,
        teacher_path: str | os.PathLike | None = None, resume: bool = False) -> dict[str, Any] | None:
    """Run the task ``cfg.task`` into ``out_dir`` and return the results dict (also results.json).

    With ``teacher_path`` the source stage is skipped and that teacher is transferred
    (``ssl-transfer transfer``). With ``resume`` an interrupted run in ``out_dir`` continues:
    finished stages are loaded from their saved models, the interrupted stage continues from its
    last checkpoint, and the final numbers equal an uninterrupted run's. A non-finite loss stops
    the run with a NonFiniteError and a results.json saying so.

    Under DDP every process runs this function (Lightning's launcher re-runs the command): all
    train every stage on their share of each global batch; only global rank 0 owns ``out_dir``,
    evaluates and writes; the other processes return None when training ends.
    """
    start = time.perf_counter()
    bundle = prepare(cfg, bundle)
    task = get_task(cfg.task)
    stages = task.plan(cfg)
    check_task(task, cfg, bundle)
    if resume:
        RunState.check_resume(out_dir, cfg, teacher_path)  # before the teacher is read
    given = stages.source.from_file(teacher_path, bundle) if teacher_path else None
    with RunDirectory.open(out_dir, overwrite, resume, keep=teacher_path) as rd:
        state = (RunState.resume if resume else RunState.start)(rd, cfg, teacher_path, start)
        ctx = StageContext(cfg, bundle, rd, resume)
        teacher = given or run_stage(state, ctx, stages.source)                               # 1. source
        controls = {c.name: run_stage(state, ctx, c, teacher=teacher) for c in stages.controls}  # 2. controls
        student = run_stage(state, ctx, stages.transfer, teacher=teacher)                     # 3. transfer
        if not is_global_zero():
            return None  # a DDP worker: training is done, rank 0 evaluates and writes
        timings = dict(state.finished)
        results = task.evaluate(cfg, bundle, teacher, student, controls)                      # 4. evaluate
        timings["eval"] = results.pop("eval_s")
        results.update(run_metadata(cfg, bundle, {"teacher": teacher.spec.to_dict(), "student": student.spec.to_dict(),
                                                  "student_embed_dim": getattr(student.model, "embed_dim", None)}))
        results["teacher_checkpoint"] = str(teacher_path) if teacher_path else str(rd.final(stages.source.artifact))
        results["resumed"] = bool(resume)
        results.update(monitor_block(cfg, rd.work, list(state.finished)))
        return finish(rd, state, results, timings)                                           # 5. report


def finish(rd: RunDirectory, state: RunState, results: dict, timings: dict) -> dict[str, Any]:
    """Write results.json, report.md and plots, mark the run completed, and (``--overwrite``)
    let it replace the old run."""
    from .report import write_report

    timings["total"] = state.elapsed()
    results["timings_s"] = timings
    atomic_write_text(rd.path("results.json"), json.dumps(results, indent=2))
    write_report(results, rd)
    state.complete()
    rd.commit()
    return results


def monitor_block(cfg: RunConfig, run_dir: Path, stages: list[str]) -> dict[str, Any]:
    """``{"monitor": {"metric", "every_epochs", "stages": {stage: [{"step", "val_knn_acc"}, ...]}}}``
    from the stages' metrics.csv (rows logged before a --resume included); {} when it is off."""
    from .monitor import read_monitor

    if cfg.eval.knn_monitor_every <= 0:
        return {}
    return {"monitor": {"metric": "val_knn_acc", "every_epochs": cfg.eval.knn_monitor_every,
                        "stages": {s: read_monitor(run_dir / "logs" / s / "metrics.csv") for s in stages}}}


def pretrain(cfg: RunConfig, out_dir: str | os.PathLike, overwrite: bool = False,
             resume: bool = False) -> dict[str, Any] | None:
    """The source stage alone (``ssl-transfer pretrain``): train the ``source.method`` teacher,
    save ``teacher.pt``, evaluate it (linear probe, kNN) and write ``results.json`` with a
    ``teacher`` block like :func:`run`'s. Returns the results (None in a DDP worker process)."""
    start = time.perf_counter()
    bundle = prepare(cfg)
    task = get_task(cfg.task)
    source = task.plan(cfg).source  # SourceStage for ssl; the task's own source stage otherwise
    check_task(task, cfg, bundle)
    with RunDirectory.open(out_dir, overwrite, resume) as rd:
        state = (RunState.resume if resume else RunState.start)(rd, cfg, None, start)
        teacher = run_stage(state, StageContext(cfg, bundle, rd, resume), source)
        if not is_global_zero():
            return None
        evaluate_source = getattr(task, "evaluate_source", None)  # task metric: retrieval on unseen classes
        results: dict[str, Any] = {"teacher": evaluate_source(cfg, bundle, teacher) if evaluate_source
                                   else evaluate(teacher.backbone, bundle, cfg)}
        timings = {**state.finished, "eval": results["teacher"]["eval_s"]}
        results.update(run_metadata(cfg, bundle, {"teacher": teacher.spec.to_dict()}))
        results.update({"method": cfg.source.method, "teacher_checkpoint": str(rd.final(source.artifact)),
                        **monitor_block(cfg, rd.work, ["source"])})
        return finish(rd, state, results, timings)
