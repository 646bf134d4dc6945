"""Training the rows of ``bench.classify`` through the project's own classification stages.

Teachers: the quickstart's source stage (configs/quickstart.yaml), one per seed, saved in
``OUT/work/teachers/seed<S>/teacher.pt`` (reloaded when there) or given. A row is one model of
one (label fraction, seed): the teacher's probe, or a :class:`ClassifyStage` (student, CE only,
teacher fine-tuned) trained from that teacher with the row's overrides, named after the row
(``OUT/work/<group>/seed<S>/<model>.pt``, logs, checkpoints). Rows hold validation numbers only;
:func:`test_row` reads the test split of a saved row, once, for ``bench.classify``'s final step.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

from torch import nn

from ssl_transfer.config import config_from_dict, load_config
from ssl_transfer.data import DataBundle
from ssl_transfer.evaluation.classify import top1
from ssl_transfer.io import atomic_write_text, load_model, save_model
from ssl_transfer.runs import RunDirectory
from ssl_transfer.runtime import setup_runtime
from ssl_transfer.stages.base import StageContext, dataset_extra
from ssl_transfer.stages.classify_data import pools
from ssl_transfer.stages.classify_stages import ClassifySourceStage, ClassifyStage
from ssl_transfer.stages.source import SourceStage

ROOT = Path(__file__).resolve().parents[1]
_BUNDLES: dict = {}


def bundle_for(cfg) -> DataBundle:
    """The data bundle of ``cfg.data`` (cached: splits and labelled subsets depend on data.* only)."""
    k = (dataclasses.astuple(cfg.data), cfg.source.method)
    if k not in _BUNDLES:
        _BUNDLES[k] = DataBundle.from_config(cfg.data, cfg.seed, method=cfg.source.method)
    return _BUNDLES[k]


class Engine:
    """Teachers, probes and rows of one benchmark folder ``out``."""

    def __init__(self, out: Path, config: Path, overrides: list[str], teacher_overrides: list[str],
                 teachers: dict[int, str] | None = None, steps: int | None = None):
        self.out, self.config_path, self.overrides, self.steps = Path(out), config, list(overrides), steps
        self.teacher_overrides, self.given = list(teacher_overrides), dict(teachers or {})
        self.out.mkdir(parents=True, exist_ok=True)
        self._teachers: dict = {}

    # -- teachers ------------------------------------------------------------------------------

    def teacher_path(self, seed: int) -> str:
        """The quickstart teacher of ``seed``: given, saved by an earlier call, or trained now."""
        if seed in self.given:
            return self.given[seed]
        work = self.out / "work" / "teachers" / f"seed{seed}"
        path = work / "teacher.pt"
        if not path.is_file():
            cfg = load_config(ROOT / "configs" / "quickstart.yaml", ["trainer.enable_progress_bar=false",
                                                                     *self.teacher_overrides, f"seed={seed}"])
            setup_runtime(cfg)
            bundle = bundle_for(cfg)
            result = SourceStage(cfg).train(StageContext(cfg, bundle, RunDirectory.scratch(work)))
            log = self.out / "teachers.jsonl"
            with open(log, "a") as f:
                f.write(json.dumps({"seed": seed, "path": str(path), "train_s": result.seconds}) + "\n")
        return str(path)

    def config(self, fraction: float, seed: int, overrides: list[str]):
        """The row's config; with ``steps``, classify.epochs = (steps - 1/2) / (labelled batches per
        epoch): ``steps_for`` rounds it up to exactly ``steps`` at every label fraction."""
        over = ["trainer.enable_progress_bar=false", *self.overrides, f"seed={seed}", f"data.label_fraction={fraction}",
                *overrides]
        cfg = load_config(self.config_path, over)
        if self.steps:
            per_epoch = len(pools(bundle_for(cfg))[0]) // cfg.classify.student_batch(cfg)
            cfg = load_config(self.config_path, [*over, f"classify.epochs={(self.steps - 0.5) / per_epoch!r}"])
        return cfg

    def teacher(self, fraction: float, seed: int):
        """The teacher of (fraction, seed) with its probe on that fraction's labelled images."""
        if (fraction, seed) not in self._teachers:
            cfg = self.config(fraction, seed, [])
            setup_runtime(cfg)
            self._teachers[(fraction, seed)] = ClassifySourceStage(cfg).from_file(self.teacher_path(seed),
                                                                                 bundle_for(cfg))
        return self._teachers[(fraction, seed)]

    # -- rows ----------------------------------------------------------------------------------

    def _row(self, cfg, fraction, seed, model, role, overrides, net, path, train_s, grid=None) -> dict:
        res = top1(net, bundle_for(cfg), cfg, test=False)
        return {"group": f"labels{100 * fraction:g}%", "seed": seed, "model": model, "role": role, "grid": grid,
                "overrides": list(overrides), "val_top1_acc": res["val_top1_acc"], "train_s": train_s,
                "eval_s": res["eval_s"], "model_path": str(path), "teacher_path": self.teacher_path(seed),
                "steps": self.steps, "config": cfg.to_dict()}

    def teacher_row(self, fraction: float, seed: int) -> dict:
        """The teacher's probe as a row (its classifier saved beside the rows' models)."""
        cfg = self.config(fraction, seed, [])
        t = self.teacher(fraction, seed).model
        path = self.work(fraction, seed) / "teacher_probe.pt"
        save_model(path, t.backbone, t.spec, extra={"classifier": t.classifier.state_dict(),
                                                    "probe": t.info, **dataset_extra(cfg, bundle_for(cfg))})
        return self._row(cfg, fraction, seed, "teacher", "teacher", [], t.model(), path, None)

    def train_row(self, fraction: float, seed: int, model: str, role: str, overrides: list[str],
                  grid: str | None = None) -> dict:
        """Train ``model`` (a ClassifyStage of ``role`` with ``overrides``) and return its val row."""
        cfg = self.config(fraction, seed, overrides)
        setup_runtime(cfg)
        bundle = bundle_for(cfg)
        teacher = self.teacher(fraction, seed)
        stage = ClassifyStage(cfg, role)
        stage.name, stage.artifact = model, f"{model}.pt"
        ctx = StageContext(cfg, bundle, RunDirectory.scratch(self.work(fraction, seed)))
        result = stage.train(ctx, teacher)
        (ctx.run_dir.work / "checkpoints" / model / "last.ckpt").unlink(missing_ok=True)  # the row is done
        return self._row(cfg, fraction, seed, model, role, overrides, result.model, result.path, result.seconds, grid)

    def work(self, fraction: float, seed: int) -> Path:
        path = self.out / "work" / f"labels{100 * fraction:g}%" / f"seed{seed}"
        path.mkdir(parents=True, exist_ok=True)
        return path

    # -- choices -------------------------------------------------------------------------------

    def load_chosen(self) -> dict:
        path = self.out / "chosen.json"
        return json.loads(path.read_text()) if path.is_file() else {}

    def save_chosen(self, chosen: dict) -> None:
        atomic_write_text(self.out / "chosen.json", json.dumps(chosen, indent=1))


def test_row(row: dict) -> dict:
    """Test top-1 of a row's saved classifier (``top1``: val recomputed, then the test split once)."""
    cfg = config_from_dict(row["config"])
    setup_runtime(cfg)
    backbone, payload = load_model(row["model_path"])
    head = nn.Linear(payload["spec"]["feat_dim"], len(bundle_for(cfg).raw.classes))
    head.load_state_dict(payload["classifier"])
    res = top1(nn.Sequential(backbone, head), bundle_for(cfg), cfg, test=True)
    return {"top1_acc": res["top1_acc"], "val_top1_acc_final": res["val_top1_acc"]}
