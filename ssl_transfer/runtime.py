"""Process set-up, the Lightning ``Trainer`` factory and the one ``fit`` every stage trains with.

- :func:`setup_runtime`: threads, quieter Lightning (run once per process, before anything else);
- :func:`check_processes`: the process layout (devices x nodes, strategy) validated through
  Lightning, before anything is written; :func:`setup_processes` also exports the threads;
- :func:`make_trainer`: one Trainer per stage (CSV logs, last.ckpt checkpoints, global BatchNorm,
  channels_last convolution weights with ``trainer.channels_last``);
- :func:`fit`: trains a module for a (fractional) number of epochs, resumable from the stage's
  last.ckpt: weights, optimiser, scheduler, loop counters, data position, log rows and the
  training time before the interruption (so ``timings_s`` of a resumed run is the whole time).

Rank and world size come from :mod:`ssl_transfer.distributed` only.
"""

from __future__ import annotations

import csv
import io
import logging
import os
import time
import warnings
from pathlib import Path

import lightning as L
import torch

from linear_eval.features import conv_weights_to

from .config import RunConfig
from .distributed import GlobalBatchNorm
from .errors import ConfigError
from .io import atomic_write_text
from .sampling import EpochBatchSampler, check_batch_splits

log = logging.getLogger("ssl_transfer")


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


def process_count(cfg: RunConfig) -> int:
    """How many training processes ``cfg.trainer`` starts (Lightning resolves devices/strategy);
    a one-line ConfigError for settings Lightning refuses or the pipeline does not support."""
    from lightning.fabric.utilities.exceptions import MisconfigurationException

    t = cfg.trainer
    try:
        trainer = L.Trainer(accelerator=t.accelerator, devices=t.devices, num_nodes=t.num_nodes, strategy=t.strategy,
                            precision=t.precision, logger=False, enable_checkpointing=False,
                            enable_progress_bar=False, enable_model_summary=False)
    except (MisconfigurationException, ValueError, RuntimeError, TypeError, KeyError) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ConfigError(f"trainer.accelerator = {t.accelerator!r}, trainer.devices = {t.devices!r}, "
                          f"trainer.strategy = {t.strategy!r}, trainer.precision = {t.precision!r} are refused by "
                          f"Lightning ({first}); fix these trainer.* settings") from None
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


def eval_device(cfg: RunConfig) -> torch.device:
    """Where features are extracted and probes fitted (``eval.device``)."""
    if cfg.eval.device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() and cfg.trainer.accelerator != "cpu" else "cpu")
    return torch.device(cfg.eval.device)


def steps_for(epochs: float, steps_per_epoch: int) -> int:
    """Optimizer steps for a possibly fractional number of epochs (at least 1)."""
    import math

    return max(1, int(math.ceil(epochs * steps_per_epoch)))


class ElapsedTime(L.Callback):
    """Carries a stage's training time through its checkpoints: a resumed stage reports the time
    before the interruption plus the time after it."""

    def __init__(self) -> None:
        self.before = 0.0
        self.start = time.perf_counter()

    def seconds(self) -> float:
        return self.before + time.perf_counter() - self.start

    def on_save_checkpoint(self, trainer, pl_module, checkpoint) -> None:
        checkpoint["elapsed_s"] = self.seconds()

    def on_load_checkpoint(self, trainer, pl_module, checkpoint) -> None:
        self.before = float(checkpoint.get("elapsed_s", 0.0))
        self.start = time.perf_counter()


class PendingLogRow(L.Callback):
    """Keeps the loss curve whole across a kill. A checkpoint written in ``on_train_batch_end``
    precedes Lightning's logging of that step's row, so a run killed in between would lose the row:
    the checkpoint carries it (``pending_log_row``) and :func:`fit` puts it back on ``--resume``."""

    def __init__(self):
        self.restored: dict | None = None

    def on_save_checkpoint(self, trainer, pl_module, checkpoint) -> None:
        from lightning.fabric.utilities.apply_func import convert_tensors_to_scalars

        loop, connector = trainer.fit_loop.epoch_loop, trainer._logger_connector
        progress = loop.batch_progress.current
        if progress.ready > progress.completed and connector.should_update_logs:  # inside on_train_batch_end
            row = convert_tensors_to_scalars(connector.metrics["log"])
            if row:
                checkpoint["pending_log_row"] = {"step": loop._batches_that_stepped,
                                                 "epoch": trainer.current_epoch, **row}

    def on_load_checkpoint(self, trainer, pl_module, checkpoint) -> None:
        self.restored = checkpoint.get("pending_log_row")


class ChannelsLast(L.Callback):
    """``trainer.channels_last``: the module's 4-d parameters (convolution weights) in channels_last
    layout for the fit, so convolutions run on NHWC activations (faster on CPU and on GPUs with
    tensor cores); set before Lightning moves, wraps (DDP) and builds optimisers for the module,
    and back to the default layout at the end, so saved and evaluated models are the usual ones."""

    def setup(self, trainer, pl_module, stage) -> None:
        conv_weights_to(pl_module, torch.channels_last)

    def teardown(self, trainer, pl_module, stage) -> None:  # the trained weights, in the default layout
        conv_weights_to(pl_module, torch.contiguous_format)


def make_trainer(cfg: RunConfig, run_dir: Path, stage: str, max_steps: int, callbacks=()) -> L.Trainer:
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
        logger=CSVLogger(save_dir=str(run_dir / "logs"), name=stage, version="",
                         flush_logs_every_n_steps=t.log_every_n_steps),
        callbacks=[ModelCheckpoint(dirpath=str(run_dir / "checkpoints" / stage), save_last=True,
                                   save_top_k=0, save_on_train_epoch_end=True, enable_version_counter=False,
                                   every_n_train_steps=t.checkpoint_every_n_steps or None),
                   *([ChannelsLast()] if t.channels_last else []), *callbacks],
        num_sanity_val_steps=0,
        limit_val_batches=0,
        use_distributed_sampler=False,  # EpochBatchSampler splits every global batch itself
        # under DDP: BatchNorm statistics of the global batch, on CPU too (no effect on 1 process)
        plugins=[GlobalBatchNorm()] if t.sync_batchnorm else None,
    )


#: What a stage's Trainer writes into the run directory (registered in the manifest beforehand).
def stage_outputs(stage: str) -> list[str]:
    return [f"logs/{stage}/metrics.csv", f"logs/{stage}/hparams.yaml", f"checkpoints/{stage}/last.ckpt"]


def fit(cfg: RunConfig, run_dir: Path, stage: str, module: L.LightningModule, loader, epochs: float, seed: int,
        resume: bool = False, monitor=None) -> float:
    """Train ``module`` for ``epochs``; with ``resume`` continue from the stage's last.ckpt.
    ``monitor`` (a callback, e.g. :class:`ssl_transfer.monitor.KNNMonitor`) is added to the
    Trainer. Returns the training time in seconds (before an interruption included).

    Resuming restores weights, optimiser, scheduler, loop counters and every persistent buffer
    (Lightning), continues the data stream at the checkpoint's exact position (EpochBatchSampler;
    augmentations are seeded per sample) and keeps the CSV log rows written before the kill.
    """
    L.seed_everything(seed, workers=True, verbose=False)
    steps = steps_for(epochs, len(loader))
    clock, pending = ElapsedTime(), PendingLogRow()
    trainer = make_trainer(cfg, run_dir, stage, steps, [clock, pending, *([monitor] if monitor is not None else [])])
    batches = getattr(loader, "batch_sampler", None)
    if isinstance(batches, EpochBatchSampler) or hasattr(batches, "position"):
        per_epoch = len(loader)
        batches.position = lambda: (trainer.current_epoch, trainer.global_step - trainer.current_epoch * per_epoch)
    ckpt = run_dir / "checkpoints" / stage / "last.ckpt"
    ckpt_path = str(ckpt) if resume and ckpt.is_file() else None
    log_file = run_dir / "logs" / stage / "metrics.csv"
    old_log = log_file.read_text() if ckpt_path and log_file.is_file() else None
    if cfg.trainer.precision.startswith("64"):
        module.double()  # Lightning restores a checkpoint before converting: keep float64 weights exact
    trainer.fit(module, train_dataloaders=loader, ckpt_path=ckpt_path)
    module.float()  # trainer.precision 64-true / 16-true train in that dtype; models are saved and evaluated in float32
    if old_log is not None:
        _merge_logs(log_file, old_log, pending.restored)
    return clock.seconds()


def _merge_logs(log_file: Path, old_text: str, pending: dict | None = None) -> None:
    """Lightning's CSV logger starts a fresh file on resume: put back the rows logged before the
    checkpoint (steps below the first step logged after resuming), and the checkpoint's own step
    when the kill came before its row was written (``pending``, :class:`PendingLogRow`)."""
    new_rows = list(csv.DictReader(io.StringIO(log_file.read_text()))) if log_file.is_file() else []
    old_rows = list(csv.DictReader(io.StringIO(old_text)))
    first_new = min((int(r["step"]) for r in new_rows), default=None)
    kept = [r for r in old_rows if first_new is None or int(r["step"]) < first_new]
    if pending and all(int(r["step"]) != pending["step"] for r in kept + new_rows):
        kept = sorted([*kept, {k: str(v) for k, v in pending.items()}], key=lambda r: int(r["step"]))
    fields = sorted({k for r in kept + new_rows for k in r})
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=fields)
    writer.writeheader()
    writer.writerows(kept + new_rows)
    atomic_write_text(log_file, buf.getvalue())
