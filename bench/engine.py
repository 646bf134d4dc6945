"""Training models side by side for a benchmark, and recording their validation numbers.

One teacher per (group, seed) (trained, reloaded from an earlier interrupted call, or given), then
each *variant* trained from it through the project's own stages, on the same batches (the control
and every student share one data stream, ``ssl_transfer.stages.source.transfer_data_seed``):

- ``control``: "teacher continued" (:class:`ControlStage`);
- ``student``: a transfer-stage student with the variant's overrides (:class:`TransferStage`);
  ``features: embedding`` evaluates backbone + head (dimension reduction) and also records the
  backbone feature as ``<name>_backbone``;
- ``ssl_small``: the compression student's small CNN trained from scratch by the teacher's SSL
  method for the same steps (the control of compression).

Every model is saved in the work folder and evaluated on the **validation split only**
(``evaluate(..., test=False)``); the row records the model file and the resolved config, from
which ``bench.final`` reads the test split once.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

from ssl_transfer.config import apply_overrides, config_from_dict, load_config
from ssl_transfer.data import DataBundle
from ssl_transfer.evaluation.frozen import evaluate
from ssl_transfer.runs import RunDirectory
from ssl_transfer.runtime import setup_runtime
from ssl_transfer.stages.base import StageContext, StageResult
from ssl_transfer.stages.pretrain import build_ssl_module
from ssl_transfer.stages.source import ControlStage, SourceStage
from ssl_transfer.stages.transfer import TransferStage


@dataclasses.dataclass
class Variant:
    """A model of a benchmark: its ``kind`` (control, student, ssl_small), the overrides applied
    to the base config for it, and which features are evaluated (backbone or embedding)."""

    description: str
    overrides: list[str] = dataclasses.field(default_factory=list)
    kind: str = "student"
    features: str = "backbone"


def base_config(config: str, overrides: list[str], seed: int):
    return load_config(config, [*overrides, f"seed={seed}"])


def variant_config(cfg, overrides: list[str]):
    return config_from_dict(apply_overrides(cfg.to_dict(), list(overrides)))


def choice_row(cfg, bundle, model, *, group: str, model_name: str, path: Path | None, train_s: float | None,
               features: str = "backbone", extra: dict | None = None) -> dict:
    """Validation numbers of ``model`` (the test split is not read), with what bench.final needs."""
    res = evaluate(model, bundle, cfg, test=False)
    return {"group": group, "seed": cfg.seed, "model": model_name, "train_s": train_s, "eval_s": res["eval_s"],
            "feat_dim": res["feat_dim"], "linear_C": res["linear"].get("C"), "val_linear_acc": res["val_linear_acc"],
            "val_knn_acc": res["val_knn_acc"], "features": features, "model_path": str(path) if path else None,
            "config": cfg.to_dict(), **(extra or {})}


class Bench:
    """The teacher of one (group, seed) and every variant trained from it in ``work``."""

    def __init__(self, cfg, work: str | Path, group: str, teacher_path: str | None = None):
        setup_runtime(cfg)
        self.cfg, self.group = cfg, group
        self.bundle = DataBundle.from_config(cfg.data, cfg.seed, method=cfg.source.method)
        self.ctx = StageContext(cfg, self.bundle, RunDirectory.scratch(work))
        self.teacher_path = teacher_path
        self._teacher: StageResult | None = None
        self.bundles = {dataclasses.astuple(cfg.data): self.bundle}

    def teacher(self, record=None) -> StageResult:
        """Given, reloaded (an earlier call saved it) or trained; ``record`` gets its row when trained or
        first loaded."""
        if self._teacher is None:
            source = SourceStage(self.cfg)
            saved = self.ctx.run_dir.work / source.artifact
            if self.teacher_path or saved.is_file():
                self._teacher = source.from_file(self.teacher_path or saved, self.bundle)
                self._teacher.path = Path(self.teacher_path or saved)
                origin = str(self.teacher_path) if self.teacher_path else "trained (reloaded)"
            else:
                self._teacher, origin = source.train(self.ctx), "trained"
            if record is not None:
                record(choice_row(self.cfg, self.bundle, self._teacher.backbone, group=self.group, model_name="teacher",
                                  path=self._teacher.path, train_s=self._teacher.seconds or None,
                                  extra={"teacher_source": origin}))
        return self._teacher

    def _bundle(self, cfg) -> DataBundle:
        """The variant's own loaders when its data.* differ (views, augmentation)."""
        key = dataclasses.astuple(cfg.data)
        if key not in self.bundles:
            self.bundles[key] = DataBundle.from_config(cfg.data, cfg.seed, method=cfg.source.method)
        return self.bundles[key]

    def train(self, name: str, variant: Variant) -> list[dict]:
        """Train one variant from the teacher; its row(s) (validation numbers only)."""
        cfg = variant_config(self.cfg, variant.overrides)
        bundle = self._bundle(cfg)
        ctx = StageContext(cfg, bundle, self.ctx.run_dir)
        teacher = self.teacher()
        extra = {"overrides": list(variant.overrides)}
        if variant.kind == "control":
            result = _named(ControlStage(cfg), name).train(ctx, teacher=teacher)
        elif variant.kind == "ssl_small":
            small = dataclasses.replace(cfg.source, backbone="small_cnn")
            fresh = build_ssl_module(small, cfg.data, bundle.channels, bundle.num_classes)
            result = _named(ControlStage(cfg), name).train(ctx, teacher=StageResult(
                "fresh", fresh, fresh.backbone, fresh.spec, 0.0, None))
        else:
            result = TransferStage(cfg).train(ctx, teacher=teacher, name=f"student_{name}")
        if variant.features == "embedding":
            import torch

            embed = torch.nn.Sequential(result.model.backbone, result.model.head)
            return [choice_row(cfg, bundle, embed, group=self.group, model_name=name, path=result.path,
                               train_s=result.seconds, features="embedding", extra=extra),
                    choice_row(cfg, bundle, result.backbone, group=self.group, model_name=f"{name}_backbone",
                               path=result.path, train_s=0.0, extra=extra)]
        return [choice_row(cfg, bundle, result.backbone, group=self.group, model_name=name, path=result.path,
                           train_s=result.seconds, extra=extra)]


def _named(stage: ControlStage, name: str) -> ControlStage:
    """The control stage writing under the variant's name (logs, checkpoints, ``<name>.pt``)."""
    stage.name, stage.artifact = name, f"{name}.pt"
    return stage


def run(config: str, overrides: list[str], seeds: list[int], groups: dict[str, list[str]],
        variants: dict[str, Variant], out: Path, work: Path | None = None,
        teachers: dict[tuple[str, int], str] | None = None, with_teacher: bool = True) -> list[dict]:
    """Train and record every variant for every group and seed into ``out/choices.jsonl`` (a rerun
    skips the rows already there and reloads saved teachers). ``groups`` maps a group name (e.g.
    ``teacher0.8``) to the overrides that define it (e.g. ``source.epochs=0.8``)."""
    from .rows import append_row, key, read_rows

    out.mkdir(parents=True, exist_ok=True)
    path = out / "choices.jsonl"
    rows = read_rows(path)
    done = {key(r) for r in rows}

    def record(row: dict) -> None:
        rows.append(row)
        append_row(path, row)
        print({k: row[k] for k in ("group", "seed", "model", "val_linear_acc", "val_knn_acc")}, flush=True)

    for group, group_overrides in groups.items():
        for seed in seeds:
            wanted = [n for n in ([*(["teacher"] if with_teacher else []), *variants]) if (group, seed, n) not in done]
            if not wanted:
                continue
            cfg = base_config(config, [*overrides, *group_overrides], seed)
            bench = Bench(cfg, (work or out / "work") / group / f"seed{seed}", group,
                          (teachers or {}).get((group, seed)))
            bench.teacher(record if "teacher" in wanted else None)
            for name in wanted:
                if name in variants:
                    for row in bench.train(name, variants[name]):
                        record(row)
    return rows
