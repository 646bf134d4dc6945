"""The whole run: source stage → controls → transfer stage → evaluation → report.

``run(cfg, out_dir)`` reads like the paper:

1. pretrain a SimCLR teacher (source stage);
2. control: the same teacher trained for the transfer stage's steps with its own SimCLR loss
   ("teacher continued"), so a student gain is not just more training;
3. transfer: a student trained only by the relaxed contrastive loss on the frozen teacher;
4. evaluate teacher, control and student on frozen backbone features: linear probe (C chosen
   on the validation split, test evaluated once) and weighted kNN;
5. write results.json, report.md and plots/.
"""

from __future__ import annotations

import copy
import json
import logging
import os
import platform
import shutil
import time
import warnings
from pathlib import Path
from typing import Any, Optional

import lightning as L
import torch

from . import __version__
from .config import RunConfig
from .data import DataBundle
from .errors import OutputExistsError
from .io import atomic_write_text, save_model
from .stages.base import steps_for
from .stages.pretrain import SimCLRModule
from .stages.transfer import FrozenTeacher, TransferModule, build_student
from linear_eval import extract_features, knn_accuracy, linear_probe

log = logging.getLogger("ssl_transfer")


def prepare_out_dir(out_dir: Path, overwrite: bool) -> None:
    """Refuse to reuse a non-empty directory unless ``overwrite``; then start it empty."""
    if out_dir.exists() and not out_dir.is_dir():
        raise OutputExistsError(f"--out '{out_dir}' is a file, not a directory; choose another --out")
    if out_dir.exists() and any(out_dir.iterdir()):
        if not overwrite:
            raise OutputExistsError(
                f"output directory '{out_dir}' already exists and is not empty; pass --overwrite "
                "to replace it or choose another --out"
            )
        shutil.rmtree(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)


def make_trainer(cfg: RunConfig, out_dir: Path, stage: str, max_steps: int) -> L.Trainer:
    from lightning.pytorch.callbacks import ModelCheckpoint
    from lightning.pytorch.loggers import CSVLogger

    t = cfg.trainer
    return L.Trainer(
        max_epochs=-1,
        max_steps=max_steps,
        accelerator=t.accelerator,
        devices=t.devices,
        strategy=t.strategy,
        precision=t.precision,
        deterministic=t.deterministic,
        log_every_n_steps=t.log_every_n_steps,
        enable_progress_bar=t.enable_progress_bar,
        enable_model_summary=False,
        logger=CSVLogger(save_dir=str(out_dir / "logs"), name=stage, version=""),
        callbacks=[ModelCheckpoint(dirpath=str(out_dir / "checkpoints" / stage), save_last=True,
                                   save_top_k=0, save_on_train_epoch_end=True)],
        num_sanity_val_steps=0,
        limit_val_batches=0,
    )


def _fit(cfg: RunConfig, out_dir: Path, stage: str, module: L.LightningModule, loader,
         epochs: float, seed: int) -> float:
    L.seed_everything(seed, workers=True, verbose=False)
    steps = steps_for(epochs, len(loader))
    trainer = make_trainer(cfg, out_dir, stage, steps)
    start = time.perf_counter()
    trainer.fit(module, train_dataloaders=loader)
    return time.perf_counter() - start


def _device(module: torch.nn.Module) -> torch.device:
    return next(module.parameters()).device


def evaluate(model: torch.nn.Module, bundle: DataBundle, cfg: RunConfig) -> dict[str, Any]:
    """Linear probe and kNN on frozen backbone features. Selection uses val; test once, last."""
    start = time.perf_counter()
    dev = _device(model)
    feats = {split: extract_features(model, bundle.eval_loader(split), dev)
             for split in ("eval_train", "val", "test")}
    (tr_x, tr_y), (va_x, va_y), (te_x, te_y) = feats["eval_train"], feats["val"], feats["test"]
    e = cfg.eval
    probe = linear_probe(tr_x, tr_y, va_x, va_y, te_x, te_y, Cs=e.linear_Cs,
                         max_iter=e.linear_max_iter, seed=cfg.seed)
    knn_val = knn_accuracy(tr_x, tr_y, va_x, va_y, k=e.knn_k, temperature=e.knn_temperature)
    knn_test = knn_accuracy(tr_x, tr_y, te_x, te_y, k=e.knn_k, temperature=e.knn_temperature)
    return {
        "linear_acc": probe["test_acc"],
        "knn_acc": knn_test,
        "val_linear_acc": probe["val_acc_best"],
        "val_knn_acc": knn_val,
        "feat_dim": int(tr_x.shape[1]),
        "linear": probe,
        "knn": {"k": e.knn_k, "temperature": e.knn_temperature, "n_bank": int(len(tr_y)),
                "similarity": "cosine"},
        "eval_s": time.perf_counter() - start,
    }


@torch.no_grad()
def teacher_cache(teacher: FrozenTeacher, bundle: DataBundle) -> torch.Tensor:
    """Teacher embeddings (n_train, d_t) of the un-augmented training images, in dataset order."""
    feats, _ = extract_features(teacher, bundle.eval_loader("train"), _device(teacher))
    return feats


def _versions() -> dict[str, str]:
    import lightly
    import lightning
    import sklearn
    import torchvision

    return {
        "ssl_transfer": __version__, "torch": torch.__version__, "torchvision": torchvision.__version__,
        "lightly": lightly.__version__, "lightning": lightning.__version__,
        "scikit-learn": sklearn.__version__, "python": platform.python_version(),
    }


def run(cfg: RunConfig, out_dir: str | os.PathLike, overwrite: bool = False,
        bundle: Optional[DataBundle] = None) -> dict[str, Any]:
    """Run the whole pipeline into ``out_dir`` and return the results dict (also results.json)."""
    out_dir = Path(out_dir)
    total_start = time.perf_counter()
    # everything that can fail on bad input happens before the output directory is touched
    bundle = bundle or DataBundle.from_config(cfg.data, cfg.seed)
    loader = bundle.train_loader(cfg.seed)
    prepare_out_dir(out_dir, overwrite)
    if cfg.trainer.num_threads:
        torch.set_num_threads(cfg.trainer.num_threads)
    warnings.filterwarnings("ignore", message=".*does not have many workers.*")
    warnings.filterwarnings("ignore", message=".*`training_step` returned `None`.*")
    timings: dict[str, float] = {}
    b = cfg.data.batch_size

    # 1. source stage
    L.seed_everything(cfg.seed, workers=True, verbose=False)
    teacher_module = SimCLRModule(cfg.source, bundle.channels, b)
    timings["source"] = _fit(cfg, out_dir, "source", teacher_module, loader, cfg.source.epochs, cfg.seed)
    teacher_module.cpu()
    save_model(out_dir / "teacher.pt", teacher_module.backbone, teacher_module.spec,
               extra={"projection_head": teacher_module.projection_head.state_dict(),
                      "dataset": cfg.data.name, "mean": bundle.raw.mean, "std": bundle.raw.std,
                      "image_size": bundle.image_size})

    # 2. control: teacher continued with its own loss for the transfer stage's epochs
    continued = None
    if cfg.controls.teacher_continued:
        continued = copy.deepcopy(teacher_module)
        continued.stage = "teacher_continued"
        timings["teacher_continued"] = _fit(cfg, out_dir, "teacher_continued", continued, loader,
                                            cfg.transfer.epochs, cfg.seed + 1)
        continued.cpu()

    # 3. transfer stage
    tc = cfg.transfer
    head = teacher_module.projection_head if tc.teacher_output == "projection" else None
    teacher = FrozenTeacher(teacher_module.backbone, head)
    cache = None
    if tc.teacher_views == "clean":
        start = time.perf_counter()
        cache = teacher_cache(teacher, bundle)
        timings["teacher_cache"] = time.perf_counter() - start
    L.seed_everything(cfg.seed + 2, workers=True, verbose=False)
    student = build_student(tc, teacher_module.backbone, teacher_module.spec, bundle.channels)
    transfer_module = TransferModule(tc, student, teacher, b, teacher_cache=cache)
    timings["transfer"] = _fit(cfg, out_dir, "transfer", transfer_module, loader, tc.epochs, cfg.seed + 2)
    transfer_module.cpu()
    save_model(out_dir / "student.pt", student.backbone, student.spec,
               extra={"head": student.head.state_dict(), "embed_dim": student.embed_dim,
                      "dataset": cfg.data.name, "mean": bundle.raw.mean, "std": bundle.raw.std,
                      "image_size": bundle.image_size})

    # 4. evaluation (test split once per model, after all selection on val)
    results: dict[str, Any] = {"teacher": evaluate(teacher_module.backbone, bundle, cfg)}
    results["student"] = evaluate(student.backbone, bundle, cfg)
    results["controls"] = {}
    if continued is not None:
        results["controls"]["teacher_continued"] = evaluate(continued.backbone, bundle, cfg)
    timings["eval"] = sum(results[m]["eval_s"] for m in ("teacher", "student")) + sum(
        c["eval_s"] for c in results["controls"].values())
    timings["total"] = time.perf_counter() - total_start

    results.update({
        "config": cfg.to_dict(),
        "timings_s": timings,
        "data": {"name": cfg.data.name, "location": bundle.raw.location, "sizes": bundle.sizes(),
                 "num_classes": bundle.num_classes},
        "models": {"teacher": teacher_module.spec.to_dict(), "student": student.spec.to_dict(),
                   "student_embed_dim": student.embed_dim},
        "versions": _versions(),
        "threads": torch.get_num_threads(),
        "status": "completed",
    })
    atomic_write_text(out_dir / "results.json", json.dumps(results, indent=2))
    from .report import write_report

    write_report(results, out_dir)
    return results
