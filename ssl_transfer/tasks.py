"""The tasks the runner knows: which stages it runs, in the paper's order, and how it evaluates.

A task is a module with two functions:

- ``plan(cfg) -> StagePlan``: the source stage, the control stages and the transfer stage
  (objects following the stage contract of :mod:`ssl_transfer.stages.base`);
- ``evaluate(cfg, bundle, teacher, student, controls) -> dict``: the model blocks of
  results.json (``teacher``, ``student``, ``controls``, ...) plus ``eval_s``; every selection on
  the validation split, the test split read once per model.

``pipeline.run`` does the rest (run directory, run state, resume, report) the same way for every
task. A new task adds its stage module, its config section and one line here.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass, field
from typing import Any

#: ``task:`` value -> the module implementing it.
TASKS = {"ssl": "ssl_transfer.stages.ssl_task", "classify": "ssl_transfer.stages.classify",
         "metric": "ssl_transfer.stages.metric"}


@dataclass
class StagePlan:
    """The stages of one run, in order: source -> controls -> transfer."""

    source: Any
    transfer: Any
    controls: list[Any] = field(default_factory=list)


def get_task(name: str):
    """The module of task ``name`` (``plan`` and ``evaluate``)."""
    return importlib.import_module(TASKS[name])
