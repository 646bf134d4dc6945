"""Run configuration: nested dataclasses, loaded from YAML, validated, with dotted overrides.

A config file mirrors :class:`RunConfig`::

    seed: 0
    data: {name: fashion_mnist, batch_size: 256}
    source: {method: simclr, epochs: 2}
    transfer: {loss: relaxed_contrastive, sigma: 1.0, epochs: 1}

Every key is checked: an unknown key is named together with the closest valid one, a value
of the wrong type or out of range is rejected with the allowed range, and contradictory
options are reported. ``--set transfer.sigma=3`` style overrides go through the same checks.
"""

from __future__ import annotations

import dataclasses
import difflib
import os
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Union

import yaml

from .errors import ConfigError

# --------------------------------------------------------------------------------------
# Sections
# --------------------------------------------------------------------------------------


@dataclass
class DataConfig:
    """Dataset, splits, views and loaders."""

    #: Dataset; docs/datasets.md lists the files each one expects under ``root``.
    name: Literal["fashion_mnist", "digits", "cifar10", "cifar100", "stl10", "imagenet", "imagenet100",
                  "image_folder"] = "fashion_mnist"
    #: Folder holding the dataset files; None searches $SSL_TRANSFER_DATA, then (Fashion-MNIST)
    #: the Debian package folder (/usr/share/datasets/fashion-mnist).
    root: str | None = None
    #: Let torchvision download the dataset into ``root`` when it is missing (needs internet;
    #: Fashion-MNIST, CIFAR-10/100 and STL-10 only).
    download: bool = False
    #: imagenet, imagenet100, image_folder: text file with one class folder name (wnid) per line;
    #: only these classes are read. None: all classes (imagenet100: the CMC list shipped in
    #: ssl_transfer/data/imagenet100.txt).
    class_list: str | None = None
    #: STL-10: add the 100k unlabeled images to SSL training and transfer (never to evaluation).
    unlabeled: bool = True
    #: Side of the square images the models see; None: the dataset's own (28 Fashion-MNIST,
    #: 8 digits, 32 CIFAR, 96 STL-10, 224 ImageNet and image folders).
    input_size: int | None = None
    #: Images of the official training split held out for every selection decision.
    val_size: int = 5000
    #: Seed of the train/val split; fixed independently of ``seed`` so all runs share it.
    split_seed: int = 0
    #: Use only this many training images for SSL training (None: all). Evaluation subsets below.
    train_subset: int | None = None
    #: Images of the training split used to fit the linear probe and as the kNN bank (None: all).
    eval_train_subset: int | None = None
    #: Images of the test split evaluated (None: all). Only for smoke runs.
    test_subset: int | None = None
    batch_size: int = 256
    eval_batch_size: int = 1024
    num_workers: int = 1
    #: Augmented views per image; views are stacked [view0 of all images; view1 of all; ...].
    views: int = 2
    #: View augmentations below: None takes the preset of the dataset and source.method
    #: (ssl_transfer/data/views.py; Fashion-MNIST: 0.25, 0.8, 0.5, 0.5, 0.0, 0.0 in this order).
    #: Smallest crop area of RandomResizedCrop (lightly's SimCLRTransform ``min_scale``).
    min_scale: float | None = None
    #: Colour-jitter probability and strength (brightness/contrast on grayscale images).
    cj_prob: float | None = None
    cj_strength: float | None = None
    #: Probability of a horizontal flip.
    hf_prob: float | None = None
    #: Probability of converting a view to grayscale.
    random_gray_scale: float | None = None
    #: Probability of a Gaussian blur.
    gaussian_blur: float | None = None


@dataclass
class SourceConfig:
    """Source stage: the SSL teacher."""

    #: SSL method of the teacher: ``simclr`` or ``mocov2`` (docs/source_stage.md).
    method: Literal["simclr", "mocov2"] = "simclr"
    backbone: Literal["resnet18", "resnet34", "resnet50"] = "resnet18"
    #: ``imagenet``: 7x7/2 conv + max-pool (fast at 28x28); ``cifar``: 3x3/1 conv, no pool;
    #: ``small``: 3x3/2 conv, no pool (between the two in cost).
    stem: Literal["imagenet", "cifar", "small"] = "imagenet"
    epochs: float = 1.0
    optimizer: Literal["sgd", "lars", "adamw"] = "sgd"
    lr: float = 0.06
    #: Scale lr by batch_size / 256, as lightly's and SimCLR's recipes do.
    lr_scale_with_batch: bool = True
    momentum: float = 0.9
    weight_decay: float = 5e-4
    #: Fraction of training steps of linear warm-up before the cosine decay.
    warmup_fraction: float = 0.05
    #: SimCLR NT-Xent temperature (lightly's benchmarks: 0.5 at CIFAR scale, 0.1 on ImageNet).
    temperature: float = 0.5
    #: Projection head (SimCLR and MoCo v2 heads alike): hidden and output width.
    proj_hidden_dim: int = 512
    proj_out_dim: int = 128
    #: MoCo v2: InfoNCE temperature (MoCo v2 paper: 0.2), queue of past keys (negatives), and the
    #: key-encoder momentum at the first step, raised to 1 by a cosine schedule over training.
    moco_temperature: float = 0.2
    moco_queue_size: int = 4096
    moco_momentum: float = 0.99
    #: External teacher weights (``ssl-transfer transfer --teacher FILE``): prefix of the backbone's
    #: keys in FILE, e.g. ``backbone.`` or ``module.encoder_q.``; None detects it (``--prefix``).
    weights_prefix: str | None = None
    #: Train a linear classifier on detached backbone features during pretraining and log its
    #: accuracy (``train_online_cls_top1``); monitoring only, the backbone is unaffected.
    online_classifier: bool = False


@dataclass
class TransferConfig:
    """Transfer stage: a student trained by a relational loss on the frozen teacher."""

    loss: Literal["relaxed_contrastive", "relaxed_ms", "rkd", "pkt", "darkrank", "regression"] = (
        "relaxed_contrastive")
    #: Relaxed losses: teacher kernel bandwidth and margin (METHOD.md).
    sigma: float = 1.0
    delta: float = 1.0
    #: Relaxed contrastive: compute the loss in row blocks of this size (bounded memory, same value).
    block_size: int | None = None
    #: Relaxed MS: scale of the positive and negative terms.
    ms_scale_pos: float = 1.0
    ms_scale_neg: float = 2.0
    #: RKD weights of the distance and angle terms (paper: 1 and 2).
    rkd_dist_weight: float = 1.0
    rkd_angle_weight: float = 2.0
    #: DarkRank: score -alpha * d^beta, top-k teacher neighbours.
    darkrank_alpha: float = 3.0
    darkrank_beta: float = 3.0
    darkrank_k: int = 4
    #: Cross-batch memory: keep this many past (detached) student and teacher embeddings and
    #: add them to every batch's pairs (0: off). Relaxed contrastive, PKT and DarkRank only.
    memory_size: int = 0
    epochs: float = 1.0
    #: Teacher output transferred: backbone feature or SimCLR projection output.
    teacher_output: Literal["backbone", "projection"] = "backbone"
    #: What the teacher embeds: the same augmented views as the student (``augmented``)
    #: or the un-augmented image (``clean``), shared by all views of that image.
    teacher_views: Literal["augmented", "clean"] = "augmented"
    #: With ``teacher_views: clean``, compute the teacher embeddings of all training images
    #: once before training and look them up (pays off from about one epoch on).
    teacher_cache: bool = False
    #: Student initialisation: random (``scratch``) or a copy of the teacher (``teacher``).
    student_init: Literal["scratch", "teacher"] = "scratch"
    #: Student backbone; None copies the teacher's architecture (self-transfer). A different
    #: one (compression, e.g. resnet50 -> resnet18, resnet18 -> small_cnn) needs
    #: ``student_init: scratch``.
    student_backbone: Literal["resnet18", "resnet34", "resnet50", "small_cnn"] | None = None
    student_stem: Literal["imagenet", "cifar", "small"] | None = None
    #: Embedding head on the student backbone: none, linear, or a 2-layer MLP.
    student_head: Literal["none", "linear", "mlp"] = "linear"
    #: Student embedding dimension (ignored for ``student_head: none``).
    embed_dim: int = 512
    optimizer: Literal["sgd", "lars", "adamw"] = "adamw"
    lr: float = 1e-3
    lr_scale_with_batch: bool = False
    momentum: float = 0.9
    weight_decay: float = 1e-4
    warmup_fraction: float = 0.05


@dataclass
class EvalConfig:
    """Evaluation of every model on frozen backbone features."""

    knn_k: int = 200
    knn_temperature: float = 0.1
    #: Inverse regularisation strengths of the logistic-regression probe; the one with the
    #: best validation accuracy is refitted and evaluated once on the test split.
    linear_Cs: list[float] = field(default_factory=lambda: [0.01, 0.03, 0.1, 0.3, 1.0, 3.0, 10.0, 30.0])
    linear_max_iter: int = 100
    #: Also compute retrieval metrics (Recall@K, MAP@R, R-precision) on the test split.
    retrieval: bool = False
    recall_ks: list[int] = field(default_factory=lambda: [1, 2, 4, 8])
    #: Where features are extracted and the probe fitted: auto (CUDA when available), cpu, cuda.
    device: Literal["auto", "cpu", "cuda"] = "auto"
    #: kNN monitor: log the validation kNN accuracy (knn_k, knn_temperature; bank = the
    #: eval_train images) of the model being trained every this many epochs (fractions allowed)
    #: and at the end of every training stage, as ``val_knn_acc`` in logs/<stage>/metrics.csv
    #: and ``monitor`` in results.json. 0 = off. Monitoring only: nothing is selected on it.
    knn_monitor_every: float = 0.0
    #: Also evaluate the student's embedding (backbone + head output, what the transfer loss
    #: trains) as ``student_embedding`` in results.json: ``auto`` when its dimension differs from
    #: the backbone feature's (dimension reduction, e.g. 512 -> 64), ``always``, or ``never``.
    student_embedding: Literal["auto", "always", "never"] = "auto"


@dataclass
class ControlsConfig:
    """Controls reported next to the student."""

    #: Train the teacher for the transfer stage's epochs with its own SSL loss.
    teacher_continued: bool = True


@dataclass
class TrainerConfig:
    """Options passed to lightning.Trainer, plus CPU threads.

    Several processes (``devices: 2, strategy: ddp``; docs/reliability.md "Distributed"):
    ``data.batch_size`` stays the *global* batch, split evenly over the processes (it must be
    divisible by their number), so the learning rate (and its ``lr_scale_with_batch``), the
    steps per epoch, the images of every step and the losses (computed on the gathered global
    batch) are those of one process; BatchNorm uses global-batch statistics (``sync_batchnorm``);
    only global rank 0 evaluates and writes outputs. Final metrics equal the one-process run's
    up to float reduction order (tests/test_ddp_run.py).
    """

    accelerator: str = "auto"
    #: Processes (devices) on this machine; more than one needs ``strategy`` ``ddp`` (or ``auto``).
    devices: int | str = 1
    #: Machines (Lightning's ``num_nodes``; start the command on each node with the cluster's
    #: launcher, e.g. SLURM ``srun`` or ``torchrun``): processes = devices x num_nodes, and
    #: ``--out`` must be a folder every node sees (rank 0 writes, every node reads checkpoints).
    num_nodes: int = 1
    strategy: str = "auto"
    #: With several processes, BatchNorm normalises with the statistics of the global batch (as
    #: one process would), on CPU too (ssl_transfer.distributed.GlobalBatchNorm); false: each
    #: process uses its own share's statistics (faster on GPUs, results then depend on devices).
    sync_batchnorm: bool = True
    precision: str = "32-true"
    #: torch threads per process (also exported as OMP_NUM_THREADS, so that DDP processes keep
    #: it); None leaves PyTorch's default (under DDP Lightning's: CPU cores / processes).
    num_threads: int | None = None
    #: torch.use_deterministic_algorithms (via Lightning): repeatable GPU runs at some speed
    #: cost; CPU runs are repeatable without it (docs/reliability.md "Determinism").
    deterministic: bool = False
    log_every_n_steps: int = 10
    #: Write checkpoints/<stage>/last.ckpt every this many optimizer steps (0: at epoch ends
    #: only); ``--resume`` continues from it.
    checkpoint_every_n_steps: int = 50
    enable_progress_bar: bool = True


@dataclass
class RunConfig:
    """A whole run: source stage, transfer stage, controls and evaluation."""

    seed: int = 0
    data: DataConfig = field(default_factory=DataConfig)
    source: SourceConfig = field(default_factory=SourceConfig)
    transfer: TransferConfig = field(default_factory=TransferConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    controls: ControlsConfig = field(default_factory=ControlsConfig)
    trainer: TrainerConfig = field(default_factory=TrainerConfig)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


# --------------------------------------------------------------------------------------
# Range checks (cause and fix in one line each)
# --------------------------------------------------------------------------------------

_POSITIVE = {
    "source.epochs", "source.lr", "source.temperature", "source.moco_temperature", "transfer.sigma", "transfer.delta",
    "transfer.epochs", "transfer.lr", "eval.knn_temperature", "transfer.ms_scale_pos",
    "transfer.ms_scale_neg", "transfer.darkrank_alpha", "transfer.darkrank_beta",
}
_AT_LEAST_ONE = {
    "data.eval_batch_size", "source.proj_hidden_dim", "source.proj_out_dim",
    "transfer.embed_dim", "eval.knn_k", "eval.linear_max_iter", "trainer.log_every_n_steps", "trainer.num_nodes",
    "transfer.darkrank_k",
}
_NON_NEGATIVE = {
    "transfer.rkd_dist_weight", "transfer.rkd_angle_weight", "transfer.memory_size",
    "data.val_size", "data.num_workers", "trainer.checkpoint_every_n_steps", "source.weight_decay", "source.momentum",
    "transfer.weight_decay", "transfer.momentum", "eval.knn_monitor_every",
}
_UNIT_INTERVAL = {
    "data.cj_prob", "data.hf_prob", "data.random_gray_scale", "data.gaussian_blur",
    "source.warmup_fraction", "transfer.warmup_fraction", "data.cj_strength",
}


def _check_ranges(cfg: RunConfig) -> None:
    flat = _flatten(cfg.to_dict())
    for key in _POSITIVE:
        if flat[key] <= 0:
            raise ConfigError(f"{key} = {flat[key]} must be > 0; set a positive value")
    for key in _AT_LEAST_ONE:
        if flat[key] < 1:
            raise ConfigError(f"{key} = {flat[key]} must be >= 1; set a positive integer")
    for key in _NON_NEGATIVE:
        if flat[key] < 0:
            raise ConfigError(f"{key} = {flat[key]} must be >= 0")
    for key in _UNIT_INTERVAL:
        if flat[key] is not None and not 0 <= flat[key] <= 1:  # None: dataset preset (data.*)
            raise ConfigError(f"{key} = {flat[key]} must lie in [0, 1]")
    if cfg.data.batch_size < 2:
        raise ConfigError(
            f"data.batch_size = {cfg.data.batch_size} is too small: pairwise losses need at "
            "least 2 images per batch; set data.batch_size >= 2"
        )
    if not 0 <= cfg.source.moco_momentum <= 1:
        raise ConfigError(f"source.moco_momentum = {cfg.source.moco_momentum} must lie in [0, 1] (MoCo v2: 0.99 "
                          "at CIFAR scale, 0.999 on ImageNet)")
    if cfg.source.moco_queue_size < 1:
        raise ConfigError(f"source.moco_queue_size = {cfg.source.moco_queue_size} must be >= 1 (MoCo v2: 4096 at "
                          "CIFAR scale, 65536 on ImageNet)")
    if cfg.source.method == "mocov2" and cfg.source.moco_queue_size < cfg.data.batch_size:
        raise ConfigError(
            f"source.moco_queue_size = {cfg.source.moco_queue_size} is smaller than data.batch_size = "
            f"{cfg.data.batch_size}: one batch of keys would not fit in the queue; set moco_queue_size >= batch_size"
        )
    if cfg.data.views < 2:
        raise ConfigError(
            f"data.views = {cfg.data.views}: SimCLR and the transfer stage need at least 2 "
            "views per image; set data.views >= 2"
        )
    if cfg.data.min_scale is not None and not 0 < cfg.data.min_scale <= 1:
        raise ConfigError(f"data.min_scale = {cfg.data.min_scale} must lie in (0, 1]")
    if cfg.data.input_size is not None and cfg.data.input_size < 2:
        raise ConfigError(f"data.input_size = {cfg.data.input_size} must be >= 2 or null (the dataset's size)")
    if cfg.data.class_list is not None and cfg.data.name not in ("imagenet", "imagenet100", "image_folder"):
        raise ConfigError(f"data.class_list applies to imagenet, imagenet100 and image_folder, not "
                          f"{cfg.data.name}; remove data.class_list")
    for key in ("train_subset", "eval_train_subset", "test_subset"):
        value = getattr(cfg.data, key)
        if value is not None and value < 2:
            raise ConfigError(f"data.{key} = {value} must be >= 2 or null (use all images)")
    if cfg.transfer.block_size is not None and cfg.transfer.block_size < 1:
        raise ConfigError(f"transfer.block_size = {cfg.transfer.block_size} must be >= 1 or null (dense)")
    if cfg.transfer.memory_size and cfg.transfer.loss not in ("relaxed_contrastive", "pkt", "darkrank"):
        raise ConfigError(
            f"transfer.memory_size does not apply to transfer.loss = {cfg.transfer.loss} (view-structured, "
            "cubic or pointwise); use relaxed_contrastive, pkt or darkrank, or set memory_size: 0"
        )
    if cfg.transfer.rkd_dist_weight + cfg.transfer.rkd_angle_weight == 0:
        raise ConfigError("transfer.rkd_dist_weight and transfer.rkd_angle_weight are both 0; set one > 0")
    if not cfg.eval.recall_ks or any(k < 1 for k in cfg.eval.recall_ks):
        raise ConfigError(f"eval.recall_ks = {cfg.eval.recall_ks} must be a non-empty list of integers >= 1")
    if not cfg.eval.linear_Cs or any(c <= 0 for c in cfg.eval.linear_Cs):
        raise ConfigError(
            f"eval.linear_Cs = {cfg.eval.linear_Cs} must be a non-empty list of positive numbers"
        )
    if cfg.data.val_size < 1:
        raise ConfigError(
            "data.val_size = 0 leaves no validation split for selecting the probe's "
            "regularisation; set data.val_size >= 1"
        )
    if cfg.transfer.teacher_cache and cfg.transfer.teacher_views != "clean":
        raise ConfigError(
            "transfer.teacher_cache needs transfer.teacher_views: clean (augmented views differ "
            "at every step, so their teacher embeddings cannot be cached)"
        )
    if (
        cfg.transfer.student_init == "teacher"
        and (cfg.transfer.student_backbone not in (None, cfg.source.backbone)
             or cfg.transfer.student_stem not in (None, cfg.source.stem))
    ):
        raise ConfigError(
            "transfer.student_init = teacher needs the student architecture to equal the "
            "teacher's; set transfer.student_init: scratch or drop transfer.student_backbone/stem"
        )


# --------------------------------------------------------------------------------------
# Building dataclasses from plain dicts, with type checks
# --------------------------------------------------------------------------------------


def _flatten(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(_flatten(v, key + "."))
        else:
            out[key] = v
    return out


def _type_name(tp: Any) -> str:
    origin = typing.get_origin(tp)
    if origin is Literal:
        return "one of " + ", ".join(repr(a) for a in typing.get_args(tp))
    if origin in (Union, types.UnionType):
        return " or ".join(_type_name(a) for a in typing.get_args(tp))
    if origin is list:
        return f"a list of {_type_name(typing.get_args(tp)[0])}"
    if tp is type(None):
        return "null"
    return getattr(tp, "__name__", str(tp))


def _coerce(value: Any, tp: Any, key: str) -> Any:
    """Return ``value`` converted to ``tp`` or raise ConfigError naming the key."""
    origin = typing.get_origin(tp)
    if origin is Literal:
        if value in typing.get_args(tp):
            return value
        close = difflib.get_close_matches(str(value), [str(a) for a in typing.get_args(tp)], 1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        raise ConfigError(f"{key} = {value!r} is not valid; use {_type_name(tp)}{hint}")
    if origin in (Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(value, arg, key)
            except ConfigError:
                pass
        raise ConfigError(f"{key} = {value!r} has the wrong type; use {_type_name(tp)}")
    if origin is list:
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{key} = {value!r} has the wrong type; use {_type_name(tp)}")
        (item_tp,) = typing.get_args(tp)
        return [_coerce(v, item_tp, f"{key}[{i}]") for i, v in enumerate(value)]
    if tp is bool:
        if isinstance(value, bool):
            return value
    elif tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):  # YAML 1.1 reads 5e-4 (no dot) as a string
            try:
                return float(value)
            except ValueError:
                pass
    elif tp is str:
        if isinstance(value, str):
            return value
    raise ConfigError(f"{key} = {value!r} has the wrong type; use {_type_name(tp)}")


def _build(cls: type, data: Any, prefix: str) -> Any:
    if not isinstance(data, dict):
        where = prefix.rstrip(".") or "the config"
        raise ConfigError(f"{where} must be a mapping of keys to values, got {data!r}")
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    kwargs: dict[str, Any] = {}
    for key, value in data.items():
        if key not in names:
            close = difflib.get_close_matches(str(key), names, 1, cutoff=0.5)
            hint = f"; did you mean '{prefix}{close[0]}'?" if close else ""
            valid = "" if close else f"; valid keys: {', '.join(names)}"
            raise ConfigError(f"unknown config key '{prefix}{key}'{hint}{valid}")
        tp = hints[key]
        if dataclasses.is_dataclass(tp):
            kwargs[key] = _build(tp, value if value is not None else {}, f"{prefix}{key}.")
        else:
            kwargs[key] = _coerce(value, tp, f"{prefix}{key}")
    return cls(**kwargs)


def config_from_dict(data: dict[str, Any]) -> RunConfig:
    """Build and validate a :class:`RunConfig` from a nested dict (as read from YAML)."""
    cfg = _build(RunConfig, data if data is not None else {}, "")
    _check_ranges(cfg)
    return cfg


def _parse_override(item: str) -> tuple[list[str], Any]:
    if "=" not in item:
        raise ConfigError(f"override {item!r} is not key=value; write e.g. --set transfer.sigma=3")
    key, raw = item.split("=", 1)
    key = key.strip()
    if not key:
        raise ConfigError(f"override {item!r} has an empty key; write e.g. --set transfer.sigma=3")
    try:
        value = yaml.safe_load(raw) if raw.strip() else None
    except yaml.YAMLError:
        value = raw
    return key.split("."), value


def apply_overrides(data: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Set dotted keys (``a.b=value``, value parsed as YAML) in a nested dict, in place."""
    for item in overrides:
        path, value = _parse_override(item)
        node = data
        for part in path[:-1]:
            child = node.get(part)
            if child is None:
                child = node[part] = {}
            if not isinstance(child, dict):
                raise ConfigError(f"override {item!r}: '{part}' is a value, not a section")
            node = child
        node[path[-1]] = value
    return data


def load_yaml(path: str | os.PathLike) -> dict[str, Any]:
    """Read a YAML mapping; missing files and parse errors become one-line ConfigErrors."""
    p = Path(path)
    if not p.is_file():
        raise ConfigError(
            f"config file '{p}' does not exist; pass a YAML file such as configs/quickstart.yaml"
        )
    try:
        data = yaml.safe_load(p.read_text())
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(e, "problem", None) or "invalid YAML"
        raise ConfigError(f"config file '{p}' does not parse{where}: {problem}; fix the YAML syntax") from None
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"config file '{p}' must hold a mapping of sections, got {type(data).__name__}")
    return data


def load_config(path: str | os.PathLike, overrides: list[str] | None = None) -> RunConfig:
    """Load a YAML config, apply dotted overrides, validate, and return a RunConfig."""
    data = load_yaml(path)
    apply_overrides(data, list(overrides or []))
    return config_from_dict(data)
