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
from typing import Any

import lightning as L
import torch

from linear_eval import extract_features, knn_accuracy, linear_probe

from . import __version__
from .config import RunConfig
from .data import DataBundle
from .distributed import GlobalBatchNorm, is_global_zero
from .errors import NonFiniteError, OutputExistsError
from .io import atomic_write_text, save_model
from .sampling import EpochBatchSampler, check_batch_splits
from .stages.base import steps_for
from .stages.pretrain import SSLModule, build_ssl_module
from .stages.transfer import FrozenTeacher, Student, TransferModule, build_student

log = logging.getLogger("ssl_transfer")


# What run / transfer / pretrain write into --out (and the temporary files of their atomic writes):
# --overwrite deletes a directory only when it holds nothing else.
RUN_OUTPUTS = frozenset({"run.json", "results.json", "report.md", "plots", "logs", "checkpoints",
                         "teacher.pt", "teacher_continued.pt", "student.pt"})


def _is_run_output(name: str) -> bool:
    return (name in RUN_OUTPUTS or (name.startswith("student_") and name.endswith(".pt"))
            or (name.startswith(".") and name.endswith(".tmp")))


def check_out_dir(out_dir: Path, overwrite: bool, keep: str | os.PathLike | None = None) -> None:
    """Raise (changing nothing) if ``out_dir`` is a file, or holds files and not ``overwrite``,
    or ``overwrite`` would delete something that is not a run's output: files of the user's,
    or ``keep`` (the ``--teacher`` this run reads) inside it.

    Only global rank 0 owns the output directory: DDP worker processes, which Lightning starts
    by re-running the command once rank 0 has begun training into it, skip the check."""
    if not is_global_zero():
        return
    if out_dir.exists() and not out_dir.is_dir():
        raise OutputExistsError(f"--out '{out_dir}' is a file, not a directory; choose another --out")
    if not (out_dir.exists() and any(out_dir.iterdir())):
        return
    if not overwrite:
        raise OutputExistsError(
            f"output directory '{out_dir}' already exists and is not empty; pass --overwrite "
            "to replace it or choose another --out"
        )
    if keep is not None and out_dir.resolve() in Path(keep).resolve().parents:
        raise OutputExistsError(
            f"--teacher '{keep}' lies inside --out '{out_dir}', which --overwrite would delete; "
            f"write this run to another --out, e.g. {out_dir}_transfer"
        )
    foreign = sorted(p.name for p in out_dir.iterdir() if not _is_run_output(p.name))
    if foreign:
        shown = ", ".join(foreign[:3]) + (f" and {len(foreign) - 3} more" if len(foreign) > 3 else "")
        raise OutputExistsError(
            f"--overwrite would delete '{out_dir}', which holds files that no ssl-transfer run writes "
            f"({shown}); choose a new or empty --out"
        )


def prepare_out_dir(out_dir: Path, overwrite: bool, keep: str | os.PathLike | None = None) -> None:
    """Refuse to reuse a non-empty directory unless ``overwrite`` (see :func:`check_out_dir`);
    then start it empty (rank 0)."""
    check_out_dir(out_dir, overwrite, keep)
    if not is_global_zero():
        return
    if out_dir.exists() and any(out_dir.iterdir()):
        shutil.rmtree(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)


def make_trainer(cfg: RunConfig, out_dir: Path, stage: str, max_steps: int, callbacks=()) -> L.Trainer:
    from lightning.pytorch.callbacks import ModelCheckpoint
    from lightning.pytorch.loggers import CSVLogger

    t = cfg.trainer
    return L.Trainer(
        max_epochs=-1,
        max_steps=max_steps,
        accelerator=t.accelerator,
        devices=t.devices,
        num_nodes=t.num_nodes,
        strategy=t.strategy,
        precision=t.precision,
        deterministic=t.deterministic,
        log_every_n_steps=t.log_every_n_steps,
        enable_progress_bar=t.enable_progress_bar,
        enable_model_summary=False,
        # rows reach the disk as they are logged, so a killed run keeps its curve up to the kill
        logger=CSVLogger(save_dir=str(out_dir / "logs"), name=stage, version="",
                         flush_logs_every_n_steps=t.log_every_n_steps),
        callbacks=[ModelCheckpoint(dirpath=str(out_dir / "checkpoints" / stage), save_last=True,
                                   save_top_k=0, save_on_train_epoch_end=True, enable_version_counter=False,
                                   every_n_train_steps=t.checkpoint_every_n_steps or None), *callbacks],
        num_sanity_val_steps=0,
        limit_val_batches=0,
        use_distributed_sampler=False,  # EpochBatchSampler splits every global batch itself
        # under DDP: BatchNorm statistics of the global batch, on CPU too (no effect on 1 process)
        plugins=[GlobalBatchNorm()] if t.sync_batchnorm else None,
    )


def process_count(cfg: RunConfig) -> int:
    """How many training processes ``cfg.trainer`` starts (Lightning resolves devices/strategy);
    a one-line ConfigError for settings Lightning refuses or the pipeline does not support."""
    from lightning.fabric.utilities.exceptions import MisconfigurationException

    from .errors import ConfigError

    t = cfg.trainer
    try:
        trainer = L.Trainer(accelerator=t.accelerator, devices=t.devices, num_nodes=t.num_nodes, strategy=t.strategy,
                            logger=False, enable_checkpointing=False, enable_progress_bar=False,
                            enable_model_summary=False)
    except (MisconfigurationException, ValueError, RuntimeError, TypeError) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ConfigError(f"trainer.accelerator = {t.accelerator!r}, trainer.devices = {t.devices!r}, "
                          f"trainer.strategy = {t.strategy!r} are refused by Lightning ({first}); "
                          "fix these trainer.* settings") from None
    processes = trainer.num_devices * trainer.num_nodes
    if processes > 1 and t.strategy not in ("auto", "ddp"):
        raise ConfigError(f"trainer.strategy = {t.strategy!r} with {processes} processes is not supported: the "
                          "pipeline runs several stages and evaluates in the launching process; use "
                          "trainer.strategy: ddp")
    return processes


def check_processes(cfg: RunConfig) -> int:
    """Validate the process layout (one-line ConfigErrors) and return the process count; warn
    when MoCo v2's shuffle-BN is made a no-op by global BatchNorm."""
    processes = process_count(cfg)
    check_batch_splits(cfg.data.batch_size, processes)
    if processes > 1 and cfg.source.method == "mocov2" and cfg.trainer.sync_batchnorm:
        log.warning("source.method = mocov2 with trainer.sync_batchnorm = true: BatchNorm uses global-batch "
                    "statistics, so MoCo's batch shuffle across %d processes has no effect; set "
                    "trainer.sync_batchnorm: false for MoCo v2's per-device shuffle-BN", processes)
    return processes


def setup_processes(cfg: RunConfig) -> None:
    """:func:`check_processes`, then keep ``trainer.num_threads`` per DDP process (exported as
    OMP_NUM_THREADS, else Lightning sets cores / processes at launch)."""
    if check_processes(cfg) > 1 and cfg.trainer.num_threads:
        os.environ["OMP_NUM_THREADS"] = str(cfg.trainer.num_threads)


def _fit(cfg: RunConfig, out_dir: Path, stage: str, module: L.LightningModule, loader,
         epochs: float, seed: int, resume: bool = False, bundle: DataBundle | None = None) -> float:
    """Train ``module`` for ``epochs``; with ``resume`` continue from the stage's last.ckpt.
    With ``bundle`` and ``eval.knn_monitor_every`` > 0 a :class:`KNNMonitor` logs the
    validation kNN accuracy while training.

    Resuming restores weights, optimiser, scheduler, loop counters and every persistent buffer
    (Lightning), continues the data stream at the checkpoint's exact position (EpochBatchSampler;
    augmentations are seeded per sample) and keeps the CSV log rows written before the kill.
    """
    L.seed_everything(seed, workers=True, verbose=False)
    steps = steps_for(epochs, len(loader))
    callbacks = []
    if bundle is not None and cfg.eval.knn_monitor_every > 0:
        from .monitor import KNNMonitor

        callbacks.append(KNNMonitor(bundle.eval_loader("eval_train"), bundle.eval_loader("val"),
                                    steps_for(cfg.eval.knn_monitor_every, len(loader)),
                                    k=cfg.eval.knn_k, temperature=cfg.eval.knn_temperature))
    trainer = make_trainer(cfg, out_dir, stage, steps, callbacks)
    batches = getattr(loader, "batch_sampler", None)
    if isinstance(batches, EpochBatchSampler):
        per_epoch = len(loader)
        batches.position = lambda: (trainer.current_epoch, trainer.global_step - trainer.current_epoch * per_epoch)
    ckpt = out_dir / "checkpoints" / stage / "last.ckpt"
    ckpt_path = str(ckpt) if resume and ckpt.is_file() else None
    log_file = out_dir / "logs" / stage / "metrics.csv"
    old_log = log_file.read_text() if ckpt_path and log_file.is_file() else None
    start = time.perf_counter()
    if cfg.trainer.precision.startswith("64"):
        module.double()  # Lightning restores a checkpoint before converting: keep float64 weights exact
    trainer.fit(module, train_dataloaders=loader, ckpt_path=ckpt_path)
    module.float()  # trainer.precision 64-true / 16-true train in that dtype; models are saved and evaluated in float32
    seconds = time.perf_counter() - start
    if old_log is not None:
        _merge_logs(log_file, old_log)
    return seconds


def _merge_logs(log_file: Path, old_text: str) -> None:
    """Lightning's CSV logger starts a fresh file on resume: put back the rows logged before the
    checkpoint (steps below the first step logged after resuming)."""
    import csv
    import io

    new_rows = list(csv.DictReader(io.StringIO(log_file.read_text()))) if log_file.is_file() else []
    old_rows = list(csv.DictReader(io.StringIO(old_text)))
    first_new = min((int(r["step"]) for r in new_rows), default=None)
    kept = [r for r in old_rows if first_new is None or int(r["step"]) < first_new]
    fields = sorted({k for r in kept + new_rows for k in r})
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=fields)
    writer.writeheader()
    writer.writerows(kept + new_rows)
    atomic_write_text(log_file, buf.getvalue())


def evaluate_checkpoint(path: str | os.PathLike, cfg: RunConfig, embedding: bool = False) -> dict[str, Any]:
    """Evaluate any saved backbone (teacher.pt / student.pt) on the config's dataset; with
    ``embedding`` a student's embedding (backbone + head, ``transfer.student_head`` of the config)."""
    from .errors import CheckpointError
    from .io import load_model

    bundle = DataBundle.from_config(cfg.data, cfg.seed)
    setup_runtime(cfg)
    model, payload = load_embedding(path, cfg.transfer.student_head) if embedding else load_model(path)
    if payload["spec"]["in_channels"] != bundle.channels:
        raise CheckpointError(f"checkpoint '{path}' expects {payload['spec']['in_channels']} input channels "
                              f"but {cfg.data.name} has {bundle.channels}; evaluate it on a matching dataset")
    result = evaluate(model, bundle, cfg)
    if embedding:
        result["features"] = "embedding (backbone + head)"
    return {"checkpoint": str(path), "spec": payload["spec"], "data": {"name": cfg.data.name,
            "sizes": bundle.sizes()}, "eval": cfg.to_dict()["eval"], **result}


def _device(module: torch.nn.Module) -> torch.device:
    return next(module.parameters()).device


def eval_device(cfg: RunConfig) -> torch.device:
    if cfg.eval.device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() and cfg.trainer.accelerator != "cpu" else "cpu")
    return torch.device(cfg.eval.device)


def evaluate(model: torch.nn.Module, bundle: DataBundle, cfg: RunConfig) -> dict[str, Any]:
    """Linear probe and kNN on frozen backbone features. Selection uses val; test once, last."""
    start = time.perf_counter()
    dev = eval_device(cfg)
    model.to(dev)
    feats = {split: extract_features(model, bundle.eval_loader(split), dev)
             for split in ("eval_train", "val", "test")}
    (tr_x, tr_y), (va_x, va_y), (te_x, te_y) = feats["eval_train"], feats["val"], feats["test"]
    e = cfg.eval
    probe = linear_probe(tr_x, tr_y, va_x, va_y, te_x, te_y, Cs=e.linear_Cs,
                         max_iter=e.linear_max_iter, seed=cfg.seed, device=dev)
    knn_val = knn_accuracy(tr_x, tr_y, va_x, va_y, k=e.knn_k, temperature=e.knn_temperature)
    knn_test = knn_accuracy(tr_x, tr_y, te_x, te_y, k=e.knn_k, temperature=e.knn_temperature)
    out: dict[str, Any] = {}
    if e.retrieval:
        from linear_eval import retrieval_metrics

        out["retrieval"] = {"split": "test", "ks": list(e.recall_ks),
                            **retrieval_metrics(te_x, te_y, ks=tuple(e.recall_ks))}
    return {
        **out,
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
    return feats.to(_device(teacher))


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


def _extra(cfg: RunConfig, bundle: DataBundle) -> dict[str, Any]:
    return {"dataset": cfg.data.name, "mean": bundle.raw.mean, "std": bundle.raw.std,
            "image_size": bundle.image_size}


def pretrain_teacher(cfg: RunConfig, bundle: DataBundle, out_dir: Path,
                     resume: bool = False) -> tuple[SSLModule, float]:
    """Source stage: a ``source.method`` teacher trained for ``source.epochs``; saved as teacher.pt
    (backbone + spec, and the method's state: projection head; MoCo v2 also key encoder and queue)."""
    loader = bundle.train_loader(cfg.seed)
    L.seed_everything(cfg.seed, workers=True, verbose=False)
    module = build_ssl_module(cfg.source, bundle.channels, cfg.data.batch_size, bundle.num_classes)
    seconds = _fit(cfg, out_dir, "source", module, loader, cfg.source.epochs, cfg.seed, resume, bundle)
    module.cpu()
    save_model(out_dir / "teacher.pt", module.backbone, module.spec,
               extra={**module.teacher_state(), **_extra(cfg, bundle)})
    return module, seconds


def load_teacher(cfg: RunConfig, path: str | os.PathLike, bundle: DataBundle) -> SSLModule:
    """Rebuild a teacher (backbone + the method's state) from a run's teacher.pt. The teacher's
    SSL method (saved in teacher.pt; SimCLR for files without one) must equal source.method,
    so the "teacher continued" control trains it with its own loss.

    Any other file is read as external backbone weights (lightly / solo-learn / torchvision /
    plain state dict; ssl_transfer.models.weights) into the architecture of source.backbone/stem.
    """
    from .errors import CheckpointError
    from .io import load_model
    from .models.weights import is_project_model, read_checkpoint

    if not is_project_model(read_checkpoint(path)):
        return _external_teacher(cfg, path, bundle)
    backbone, payload = load_model(path)
    method = payload.get("method", "simclr")
    if method != cfg.source.method:
        raise CheckpointError(f"teacher '{path}' was trained with {method} but source.method = {cfg.source.method}; "
                              f"pass --set source.method={method}")
    module = build_ssl_module(cfg.source, bundle.channels, cfg.data.batch_size, bundle.num_classes)
    if payload["spec"] != module.spec.to_dict():
        raise CheckpointError(f"teacher '{path}' has backbone {payload['spec']} but the config asks for "
                              f"{module.spec.to_dict()}; set source.backbone/stem to match")
    module.backbone.load_state_dict(backbone.state_dict())
    try:
        module.load_teacher_state(payload)
    except RuntimeError:
        raise CheckpointError(f"teacher '{path}' has a projection head of another size than "
                              "source.proj_hidden_dim/proj_out_dim; set them to the teacher's") from None
    return module


def _external_teacher(cfg: RunConfig, path: str | os.PathLike, bundle: DataBundle) -> SSLModule:
    """A teacher from external backbone weights: fresh projection head (MoCo v2: key encoder a
    copy of the loaded backbone, queue freshly initialised)."""
    from .errors import CheckpointError
    from .models.weights import load_backbone_weights

    if cfg.transfer.teacher_output == "projection":
        raise CheckpointError(f"teacher '{path}' holds backbone weights only, no projection head; set "
                              "transfer.teacher_output: backbone")
    module = build_ssl_module(cfg.source, bundle.channels, cfg.data.batch_size, bundle.num_classes)
    info = load_backbone_weights(path, module.backbone, module.spec, prefix=cfg.source.weights_prefix)
    module.load_teacher_state({})
    log.info("teacher weights from '%s' (prefix '%s', dropped %s)", path, info["prefix"], info["dropped"])
    return module


def continue_teacher(cfg: RunConfig, teacher: SSLModule, bundle: DataBundle,
                     out_dir: Path, resume: bool = False) -> tuple[SSLModule, float]:
    """Control: a copy of the teacher trained ``transfer.epochs`` more with its own SSL loss
    (its own method; MoCo v2 keeps its key encoder and queue, the momentum schedule restarts);
    saved as teacher_continued.pt."""
    loader = bundle.train_loader(cfg.seed + 1)
    module = copy.deepcopy(teacher)
    module.stage = "teacher_continued"
    seconds = _fit(cfg, out_dir, "teacher_continued", module, loader, cfg.transfer.epochs, cfg.seed + 1, resume,
                   bundle)
    module.cpu()
    save_model(out_dir / "teacher_continued.pt", module.backbone, module.spec,
               extra={**module.teacher_state(), **_extra(cfg, bundle)})
    return module, seconds


def transfer_student(cfg: RunConfig, teacher: SSLModule, bundle: DataBundle, out_dir: Path,
                     name: str = "transfer", resume: bool = False) -> tuple[Student, dict[str, float]]:
    """Transfer stage: a student trained by ``transfer.loss`` on the frozen teacher; saved as
    ``student.pt`` (``<name>.pt`` for other names)."""
    tc = cfg.transfer
    loader = bundle.train_loader(cfg.seed + 2, clean=tc.teacher_views == "clean" and not tc.teacher_cache)
    timings: dict[str, float] = {}
    head = teacher.projection_head if tc.teacher_output == "projection" else None
    frozen = FrozenTeacher(teacher.backbone, head)
    cache = None
    if tc.teacher_cache:
        start = time.perf_counter()
        cache = teacher_cache(frozen.to(eval_device(cfg)), bundle)
        timings["teacher_cache"] = time.perf_counter() - start
    L.seed_everything(cfg.seed + 2, workers=True, verbose=False)
    student = build_student(tc, teacher.backbone, teacher.spec, bundle.channels)
    teacher_dim = cfg.source.proj_out_dim if tc.teacher_output == "projection" else teacher.spec.feat_dim
    module = TransferModule(tc, student, frozen, cfg.data.batch_size, teacher_cache=cache,
                            teacher_dim=teacher_dim, views=cfg.data.views)
    timings[name] = _fit(cfg, out_dir, name, module, loader, tc.epochs, cfg.seed + 2, resume, bundle)
    module.cpu()
    save_model(out_dir / _student_file(name), student.backbone, student.spec,
               extra={"head": student.head.state_dict(), "embed_dim": student.embed_dim, **_extra(cfg, bundle)})
    return student, timings


def _student_file(name: str) -> str:
    return "student.pt" if name == "transfer" else f"{name}.pt"


# -------------------------------------------------------------------------------------------
# run state (run.json): the resolved config and the stages already finished, for --resume
# -------------------------------------------------------------------------------------------

STATE_FILE = "run.json"


def _write_state(out_dir: Path, state: dict[str, Any]) -> None:
    atomic_write_text(out_dir / STATE_FILE, json.dumps(state, indent=2))


def _read_state(out_dir: Path, cfg: RunConfig) -> dict[str, Any]:
    from .errors import ConfigError, OutputExistsError

    path = out_dir / STATE_FILE
    if not path.is_file():
        raise OutputExistsError(f"--resume: '{out_dir}' holds no run to resume ({STATE_FILE} missing); "
                                "start it without --resume")
    try:
        state = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        raise OutputExistsError(f"--resume: '{path}' is unreadable; start the run again in a new --out") from None
    saved, now = _flatten_cfg(state.get("config", {})), _flatten_cfg(cfg.to_dict())
    diff = sorted(k for k in saved.keys() | now.keys() if saved.get(k) != now.get(k))
    if diff:
        k = diff[0]
        raise ConfigError(f"--resume: the config differs from the interrupted run's at '{k}' ({saved.get(k)!r} "
                          f"there, {now.get(k)!r} now); resume with the same config and --set values")
    return state


def _check_resumed_teacher(out_dir: Path, state: dict[str, Any], teacher_path) -> None:
    """--resume must transfer from the teacher the interrupted run used (run.json records it)."""
    from .errors import ConfigError

    saved = state.get("teacher_checkpoint")
    if saved is None and teacher_path is None:
        return
    if saved is not None and teacher_path is not None and Path(saved).resolve() == Path(teacher_path).resolve():
        return
    then = f"transferred from --teacher '{saved}'" if saved else "trained its own teacher (ssl-transfer run)"
    now = f"passes --teacher '{teacher_path}'" if teacher_path else "would train a new one"
    fix = f"ssl-transfer transfer CONFIG --teacher {saved}" if saved else "ssl-transfer run CONFIG"
    raise ConfigError(f"--resume: the interrupted run in '{out_dir}' {then} but this command {now}; "
                      f"resume it with `{fix} --out {out_dir} --resume`")


def _flatten_cfg(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in d.items():
        out.update(_flatten_cfg(v, f"{prefix}{k}.") if isinstance(v, dict) else {f"{prefix}{k}": v})
    return out


def _load_student(cfg: RunConfig, teacher: SSLModule, bundle: DataBundle, path: Path) -> Student:
    from .errors import CheckpointError
    from .io import load_model

    backbone, payload = load_model(path)
    student = build_student(cfg.transfer, teacher.backbone, teacher.spec, bundle.channels)
    if payload["spec"] != student.spec.to_dict() or payload.get("embed_dim") != student.embed_dim:
        raise CheckpointError(
            f"student '{path}' is a {payload['spec']['arch']} with a {payload.get('embed_dim')}-d embedding but "
            f"the config asks for a {student.spec.arch} with a {student.embed_dim}-d one; fix transfer.* to match")
    student.backbone.load_state_dict(backbone.state_dict())
    student.head.load_state_dict(payload["head"])
    return student


def run(cfg: RunConfig, out_dir: str | os.PathLike, overwrite: bool = False,
        bundle: DataBundle | None = None, teacher_path: str | os.PathLike | None = None,
        resume: bool = False) -> dict[str, Any] | None:
    """Run the whole pipeline into ``out_dir`` and return the results dict (also results.json).

    With ``teacher_path`` (a run's teacher.pt) the source stage is skipped and that teacher is
    transferred (``ssl-transfer transfer``). With ``resume`` an interrupted run in ``out_dir``
    continues: finished stages are loaded from their saved models, the interrupted stage
    continues from its last checkpoint, and the final numbers equal an uninterrupted run's.
    A non-finite loss stops the run with a NonFiniteError and a results.json saying so.

    Under DDP (``trainer.devices`` > 1) every process runs this function (Lightning's launcher
    re-runs the command): all train every stage on their share of each global batch, only
    global rank 0 prepares ``out_dir``, evaluates and writes; the other processes return None
    when training ends.
    """
    out_dir = Path(out_dir)
    total_start = time.perf_counter()
    # everything that can fail on bad input happens before the output directory is touched
    bundle = bundle or DataBundle.from_config(cfg.data, cfg.seed, method=cfg.source.method)
    bundle.train_loader(cfg.seed)  # validates the batch size against the data
    setup_runtime(cfg)
    setup_processes(cfg)
    if resume:
        state = _read_state(out_dir, cfg)
        _check_resumed_teacher(out_dir, state, teacher_path)
    loaded = load_teacher(cfg, teacher_path, bundle) if teacher_path else None
    if not resume:
        prepare_out_dir(out_dir, overwrite, keep=teacher_path)
        state = {"config": cfg.to_dict(), "teacher_checkpoint": str(teacher_path) if teacher_path else None,
                 "finished": {}, "status": "running"}
        _write_state(out_dir, state)
    done = state["finished"]

    def stage(name: str, train, load):
        """Run (or, when finished before a --resume, load) one stage; record it in run.json."""
        if name in done:
            return load()
        try:
            product, seconds = train()
        except NonFiniteError as e:
            _record_failure(out_dir, state, name, e)
            raise
        done[name] = seconds
        _write_state(out_dir, state)
        return product

    if loaded is not None:
        teacher = loaded
    else:
        teacher = stage("source", lambda: pretrain_teacher(cfg, bundle, out_dir, resume),
                        lambda: load_teacher(cfg, out_dir / "teacher.pt", bundle))
    continued = None
    if cfg.controls.teacher_continued:
        continued = stage("teacher_continued", lambda: continue_teacher(cfg, teacher, bundle, out_dir, resume),
                          lambda: load_teacher(cfg, out_dir / "teacher_continued.pt", bundle))

    def train_student():
        student, t = transfer_student(cfg, teacher, bundle, out_dir, resume=resume)
        return student, t["transfer"]

    student = stage("transfer", train_student, lambda: _load_student(cfg, teacher, bundle, out_dir / "student.pt"))
    if not is_global_zero():
        return None  # a DDP worker: training is done, rank 0 evaluates and writes
    timings: dict[str, float] = dict(done)

    # evaluation: every selection on val, the test split once per model, after training
    results: dict[str, Any] = {"teacher": evaluate(teacher.backbone, bundle, cfg),
                               "student": evaluate(student.backbone, bundle, cfg), "controls": {}}
    if continued is not None:
        results["controls"]["teacher_continued"] = evaluate(continued.backbone, bundle, cfg)
    if evaluates_embedding(cfg, student):
        results["student_embedding"] = {**evaluate(torch.nn.Sequential(student.backbone, student.head), bundle, cfg),
                                        "features": "embedding (backbone + head)"}
    timings["eval"] = sum(m["eval_s"] for m in [results["teacher"], results["student"],
                                                  *results["controls"].values()]
                          + ([results["student_embedding"]] if "student_embedding" in results else []))
    timings["total"] = time.perf_counter() - total_start
    results.update(run_metadata(cfg, bundle, teacher.spec, student))
    results["teacher_checkpoint"] = str(teacher_path) if teacher_path else str(out_dir / "teacher.pt")
    results["resumed"] = bool(resume)
    results.update(_monitor(cfg, out_dir, [*done]))
    results["timings_s"] = timings
    atomic_write_text(out_dir / "results.json", json.dumps(results, indent=2))
    from .report import write_report

    write_report(results, out_dir)
    state["status"] = "completed"
    _write_state(out_dir, state)
    return results


def _monitor(cfg: RunConfig, out_dir: Path, stages: list[str]) -> dict[str, Any]:
    """``{"monitor": {"metric", "every_epochs", "stages": {stage: [{"step", "val_knn_acc"}, ...]}}}``
    from the stages' metrics.csv (rows logged before a --resume included); {} when it is off."""
    from .monitor import read_monitor

    if cfg.eval.knn_monitor_every <= 0:
        return {}
    return {"monitor": {"metric": "val_knn_acc", "every_epochs": cfg.eval.knn_monitor_every,
                        "stages": {s: read_monitor(out_dir / "logs" / s / "metrics.csv") for s in stages}}}


def evaluates_embedding(cfg: RunConfig, student: Student) -> bool:
    """Whether ``eval.student_embedding`` asks for the student's embedding to be evaluated too."""
    mode = cfg.eval.student_embedding
    if mode == "auto":
        return cfg.transfer.student_head != "none" and student.embed_dim != student.spec.feat_dim
    return mode == "always" and cfg.transfer.student_head != "none"


def load_embedding(path: str | os.PathLike, head_kind: str) -> tuple[torch.nn.Module, dict[str, Any]]:
    """A saved student's embedding function (backbone + head) from student.pt; ``head_kind`` is the
    ``transfer.student_head`` it was trained with. One-line CheckpointError when the file has no head
    or another one."""
    from .errors import CheckpointError
    from .io import load_model
    from .models.backbones import embedding_head

    backbone, payload = load_model(path)
    if "head" not in payload or head_kind == "none":
        raise CheckpointError(f"'{path}' holds no student embedding head (a teacher, or transfer.student_head: none); "
                              "evaluate it without --embedding")
    head = embedding_head(head_kind, payload["spec"]["feat_dim"], int(payload["embed_dim"]))
    try:
        head.load_state_dict(payload["head"])
    except RuntimeError:
        raise CheckpointError(f"the head in '{path}' is not a {head_kind} head to {payload['embed_dim']} dims; set "
                              "transfer.student_head to the one it was trained with") from None
    return torch.nn.Sequential(backbone, head), payload


def _record_failure(out_dir: Path, state: dict[str, Any], stage: str, error: Exception) -> None:
    """NaN guard: say in results.json and run.json what stopped the run; checkpoints stay."""
    state["status"] = "failed"
    state["error"] = {"stage": stage, "message": str(error)}
    _write_state(out_dir, state)
    atomic_write_text(out_dir / "results.json", json.dumps({
        "status": "failed", "error": {"stage": stage, "type": type(error).__name__, "message": str(error)},
        "config": state["config"], "finished_stages": list(state["finished"]),
        "last_checkpoint": str(out_dir / "checkpoints" / stage / "last.ckpt"),
    }, indent=2))


def setup_runtime(cfg: RunConfig) -> None:
    """Threads, and quieter Lightning: no tips or accelerator banners, no known-benign warnings."""
    # lightly imports pytorch_lightning, whose logger then serves lightning's rank_zero_info too
    for name in ("lightning.pytorch", "lightning.fabric", "pytorch_lightning", "lightning_fabric"):
        logging.getLogger(f"{name}.utilities.rank_zero").setLevel(logging.WARNING)
    if cfg.trainer.num_threads:
        torch.set_num_threads(cfg.trainer.num_threads)
    for message in (".*does not have many workers.*", ".*in eval mode at the start of training.*", ".*LeafSpec.*",
                    ".*smaller than the logging interval.*", ".*litlogger.*"):
        warnings.filterwarnings("ignore", message=message)


def run_metadata(cfg: RunConfig, bundle: DataBundle, teacher_spec, student: Student) -> dict[str, Any]:
    return {
        "config": cfg.to_dict(),
        "data": {"name": cfg.data.name, "location": bundle.raw.location, "sizes": bundle.sizes(),
                 "num_classes": bundle.num_classes},
        "models": {"teacher": teacher_spec.to_dict(), "student": student.spec.to_dict(),
                   "student_embed_dim": student.embed_dim},
        "versions": _versions(),
        "threads": torch.get_num_threads(),
        "status": "completed",
    }


def pretrain(cfg: RunConfig, out_dir: str | os.PathLike, overwrite: bool = False) -> dict[str, Any] | None:
    """The source stage alone (``ssl-transfer pretrain``): train the ``source.method`` teacher,
    save ``teacher.pt``, evaluate it (linear probe, kNN) and write ``results.json`` with a
    ``teacher`` block like :func:`run`'s. Returns the results (None in a DDP worker process)."""
    import torch.distributed as dist

    out_dir = Path(out_dir)
    total_start = time.perf_counter()
    bundle = DataBundle.from_config(cfg.data, cfg.seed, method=cfg.source.method)
    bundle.train_loader(cfg.seed)  # validates the batch size against the data
    setup_runtime(cfg)
    setup_processes(cfg)
    prepare_out_dir(out_dir, overwrite)
    teacher, seconds = pretrain_teacher(cfg, bundle, out_dir)
    if dist.is_available() and dist.is_initialized() and dist.get_rank() != 0:
        return None  # a DDP worker: rank 0 evaluates and writes
    results: dict[str, Any] = {"teacher": evaluate(teacher.backbone, bundle, cfg)}
    results.update({
        "config": cfg.to_dict(),
        "data": {"name": cfg.data.name, "location": bundle.raw.location, "sizes": bundle.sizes(),
                 "num_classes": bundle.num_classes},
        "models": {"teacher": teacher.spec.to_dict()},
        "method": cfg.source.method,
        "versions": _versions(),
        "threads": torch.get_num_threads(),
        "teacher_checkpoint": str(out_dir / "teacher.pt"),
        **_monitor(cfg, out_dir, ["source"]),
        "timings_s": {"source": seconds, "eval": results["teacher"]["eval_s"],
                      "total": time.perf_counter() - total_start},
        "status": "completed",
    })
    atomic_write_text(out_dir / "results.json", json.dumps(results, indent=2))
    return results
