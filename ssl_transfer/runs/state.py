"""The run state (run.json): the resolved config, the stages finished so far, the status; the
checks ``--resume`` makes against it; the failure record; the metadata every results.json holds.

run.json::

    {"config": {...}, "teacher_checkpoint": null | "path", "finished": {"source": 225.1, ...},
     "status": "running" | "failed" | "completed", "error": {...}, "elapsed_s": 312.4}

``finished`` maps each finished stage to its training time; ``--resume`` loads those stages from
their saved models and continues the interrupted one from its last checkpoint. ``elapsed_s``, the
wall time up to the last write, lets a resumed run report its whole time.
"""

from __future__ import annotations

import json
import platform
import time
from pathlib import Path
from typing import Any

from ..config import RunConfig, flatten
from ..errors import ConfigError, OutputExistsError

STATE_FILE = "run.json"


class RunState:
    """run.json of one run directory, written atomically after every change."""

    def __init__(self, run_dir, data: dict[str, Any], started: float | None = None):
        self.run_dir, self.data = run_dir, data
        self._started = time.perf_counter() if started is None else started  # perf_counter of the command's start
        self._before = float(data.get("elapsed_s", 0.0))  # wall time before an interruption

    def elapsed(self) -> float:
        """Wall time of the run so far, the time before an interruption included (up to the last
        finished stage; the interrupted stage's own time comes back through its checkpoint)."""
        return self._before + time.perf_counter() - self._started

    @classmethod
    def start(cls, run_dir, cfg: RunConfig, teacher_path=None, started: float | None = None) -> RunState:
        state = cls(run_dir, {"config": cfg.to_dict(), "teacher_checkpoint": str(teacher_path) if teacher_path else None,
                              "finished": {}, "status": "running"}, started)
        state.write()
        return state

    @classmethod
    def resume(cls, run_dir, cfg: RunConfig, teacher_path=None, started: float | None = None) -> RunState:
        """The state of the interrupted run in ``run_dir``, after :meth:`check_resume`."""
        return cls(run_dir, cls.check_resume(run_dir.out, cfg, teacher_path, run_dir.work), started)

    @staticmethod
    def check_resume(out, cfg: RunConfig, teacher_path=None, work=None) -> dict[str, Any]:
        """run.json of the interrupted run in ``out`` (or its staged ``--overwrite`` run), after
        checking, without writing anything, that this command continues it: the same resolved
        config, the same teacher, a run not yet completed. One-line errors otherwise."""
        from .directory import NEXT

        out = Path(out)
        work = Path(work) if work is not None else (out / NEXT if (out / NEXT / STATE_FILE).is_file() else out)
        path = work / STATE_FILE
        try:
            data = json.loads(path.read_text())
            if not isinstance(data, dict) or not isinstance(data.get("finished"), dict):
                raise ValueError
        except (OSError, ValueError):
            raise OutputExistsError(f"--resume: '{path}' is unreadable or not a run state; start the run again in a "
                                    "new --out") from None
        saved, now = flatten(data.get("config") or {}), flatten(cfg.to_dict())
        diff = sorted(k for k in saved.keys() | now.keys() if saved.get(k) != now.get(k))
        if diff:
            k = diff[0]
            raise ConfigError(f"--resume: the config differs from the interrupted run's at '{k}' ({saved.get(k)!r} "
                              f"there, {now.get(k)!r} now); resume with the same config and --set values")
        _check_resumed_teacher(out, data.get("teacher_checkpoint"), teacher_path)
        if data.get("status") == "completed" and work == out:
            raise OutputExistsError(f"--resume: the run in '{out}' has completed; nothing to resume (use "
                                    "--overwrite to run it again)")
        return data

    @property
    def finished(self) -> dict[str, float]:
        return self.data["finished"]

    def write(self) -> None:
        from ..io import atomic_write_text  # torch: imported by the run, not by the checks before it

        self.data["elapsed_s"] = self.elapsed()
        atomic_write_text(self.run_dir.path(STATE_FILE), json.dumps(self.data, indent=2))

    def finish_stage(self, name: str, seconds: float) -> None:
        self.finished[name] = seconds
        self.write()

    def complete(self) -> None:
        self.data["status"] = "completed"
        self.data.pop("error", None)
        self.write()

    def fail(self, stage: str, error: Exception) -> None:
        """NaN guard: say in results.json and run.json what stopped the run; checkpoints stay."""
        self.data["status"] = "failed"
        self.data["error"] = {"stage": stage, "message": str(error)}
        self.write()
        from ..io import atomic_write_text

        rd = self.run_dir
        atomic_write_text(rd.path("results.json"), json.dumps({
            "status": "failed", "error": {"stage": stage, "type": type(error).__name__, "message": str(error)},
            "config": self.data["config"], "finished_stages": list(self.finished),
            "last_checkpoint": str(rd.work / "checkpoints" / stage / "last.ckpt"),
        }, indent=2))


def _check_resumed_teacher(out, saved, teacher_path) -> None:
    """--resume must transfer from the teacher the interrupted run used (run.json records it)."""
    if saved is None and teacher_path is None:
        return
    if saved is not None and teacher_path is not None and Path(saved).resolve() == Path(teacher_path).resolve():
        return
    then = f"transferred from --teacher '{saved}'" if saved else "trained its own teacher (ssl-transfer run)"
    now = f"passes --teacher '{teacher_path}'" if teacher_path else "would train a new one"
    fix = f"ssl-transfer transfer CONFIG --teacher {saved}" if saved else "ssl-transfer run CONFIG"
    raise ConfigError(f"--resume: the interrupted run in '{out}' {then} but this command {now}; "
                      f"resume it with `{fix} --out {out} --resume`")


def versions() -> dict[str, str]:
    import lightly
    import lightning
    import sklearn
    import torch
    import torchvision

    from .. import __version__

    return {
        "ssl_transfer": __version__, "torch": torch.__version__, "torchvision": torchvision.__version__,
        "lightly": lightly.__version__, "lightning": lightning.__version__,
        "scikit-learn": sklearn.__version__, "python": platform.python_version(),
    }


def run_metadata(cfg: RunConfig, bundle, models: dict[str, dict]) -> dict[str, Any]:
    """The blocks every results.json holds besides the evaluations: config, data, models, versions."""
    import torch

    return {
        "config": cfg.to_dict(),
        "data": {"name": cfg.data.name, "location": bundle.raw.location, "found_via": bundle.found_via,
                 "sizes": bundle.sizes(), "num_classes": bundle.num_classes},
        "models": models,
        "versions": versions(),
        "threads": torch.get_num_threads(),
        "status": "completed",
    }
