"""The config sections: one dataclass per section, each field with its default, its doc and its
allowed range (``opt``); cross-field checks in each section's ``validate``.

A config file mirrors :class:`RunConfig`::

    seed: 0
    data: {name: fashion_mnist, batch_size: 256}
    source: {method: simclr, epochs: 2, optimizer: {name: sgd, lr: 0.06}}
    transfer: {loss: relaxed_contrastive, loss_args: {sigma: 3.0}, epochs: 1}

Every training stage has an ``optimizer`` section of the one type :class:`OptimizerConfig`; the
transfer loss's own options sit under ``transfer.loss_args`` and are checked against the loss's
constructor (``ssl_transfer.losses.registry``).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Literal

from ..errors import ConfigError
from .classify import ClassifyConfig
from .fields import opt
from .metric import MetricConfig


@dataclass
class DataConfig:
    """Dataset, splits, views and loaders."""

    #: Dataset; docs/datasets.md lists the files each one expects under ``root``.
    name: Literal["fashion_mnist", "digits", "cifar10", "cifar100", "stl10", "imagenet", "imagenet100",
                  "image_folder", "cub", "cars", "sop"] = "fashion_mnist"
    #: Folder holding the dataset files (it must exist); None searches $SSL_TRANSFER_DATA, then
    #: (Fashion-MNIST) the Debian package folder (/usr/share/datasets/fashion-mnist).
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
    input_size: int | None = opt(None, ge=2, le=4096)
    #: Images of the official training split held out for every selection decision.
    val_size: int = opt(5000, ge=1, hint="the validation split selects the probe's regularisation")
    #: Metric learning: hold out this many whole training classes as the validation split instead
    #: of ``val_size`` images (selection on classes never trained on, as the test classes are).
    val_classes: int | None = opt(None, ge=2)
    #: Zero-shot on a classification dataset: train on these classes (labels) of the training
    #: split, evaluate on the other classes of the test split (e.g. Fashion-MNIST [0, 1, 2, 3, 4]).
    train_classes: list[int] | None = opt(None, ge=0)
    #: Class-balanced training batches: batch_size / images_per_class classes x images_per_class
    #: images (metric learning, e.g. 45 x 2); None: shuffled batches.
    images_per_class: int | None = opt(None, ge=1)
    #: Few labels: keep the labels of this stratified, seeded fraction of the training images
    #: (classification transfer: the CE term sees only these); None: all labelled.
    label_fraction: float | None = opt(None, gt=0, le=1)
    #: CUB / Cars / SOP: check the image counts of both splits against the official ones.
    verify_counts: bool = True
    #: Seed of the train/val split; fixed independently of ``seed`` so all runs share it.
    split_seed: int = opt(0, ge=0, le=2**32 - 1)
    #: Use only this many training images for SSL training (None: all). Evaluation subsets below.
    train_subset: int | None = opt(None, ge=2, hint="or null (use all images)")
    #: Images of the training split used to fit the linear probe and as the kNN bank (None: all).
    eval_train_subset: int | None = opt(None, ge=2, hint="or null (use all images)")
    #: Images of the test split evaluated (None: all). Only for smoke runs.
    test_subset: int | None = opt(None, ge=2, hint="or null (use all images)")
    batch_size: int = opt(256, ge=2, hint="pairwise losses need at least 2 images per batch")
    eval_batch_size: int = opt(1024, ge=1)
    num_workers: int = opt(1, ge=0, le=256)
    #: Augmented views per image; views are stacked [view0 of all images; view1 of all; ...].
    views: int = opt(2, ge=2, le=64, hint="SSL (SimCLR / MoCo v2) and the transfer stage need data.views >= 2")
    #: View augmentations below: None takes the preset of the dataset and source.method
    #: (ssl_transfer/data/views.py; Fashion-MNIST: 0.25, 0.8, 0.5, 0.5, 0.0, 0.0 in this order).
    #: Smallest crop area of RandomResizedCrop (lightly's SimCLRTransform ``min_scale``).
    min_scale: float | None = opt(None, gt=0, le=1)
    #: Colour-jitter probability and strength (brightness/contrast on grayscale images).
    cj_prob: float | None = opt(None, ge=0, le=1)
    cj_strength: float | None = opt(None, ge=0, le=1)
    #: Probability of a horizontal flip.
    hf_prob: float | None = opt(None, ge=0, le=1)
    #: Probability of converting a view to grayscale.
    random_gray_scale: float | None = opt(None, ge=0, le=1)
    #: Probability of a Gaussian blur.
    gaussian_blur: float | None = opt(None, ge=0, le=1)

    def validate(self, root: RunConfig) -> None:
        if self.class_list is not None and self.name not in ("imagenet", "imagenet100", "image_folder"):
            raise ConfigError(f"data.class_list applies to imagenet, imagenet100 and image_folder, not "
                              f"{self.name}; remove data.class_list")
        if self.train_classes is not None and (len(set(self.train_classes)) < 2 or self.name in ("cub", "cars", "sop")):
            raise ConfigError(f"data.train_classes = {self.train_classes} must name at least 2 classes of a classification "
                              "dataset (cub, cars and sop come split by class already); fix or remove it")
        if self.images_per_class is not None and self.batch_size % self.images_per_class:
            raise ConfigError(f"data.batch_size = {self.batch_size} is not a multiple of data.images_per_class = "
                              f"{self.images_per_class}; set data.batch_size to a multiple of it")


@dataclass
class OptimizerConfig:
    """The optimiser and learning-rate schedule of a training stage (one type for every stage).

    lr(t) = lr · s · warm-up(t) · decay(t), s = batch_size / 256 with ``lr_scale_with_batch``;
    linear warm-up over ``warmup_fraction`` of the steps, then ``schedule``: ``cosine`` to 0, or
    ``step``: × ``gamma`` at each of ``milestones`` (epochs of the stage).
    """

    name: Literal["sgd", "lars", "adamw"] = "sgd"
    lr: float = opt(0.06, gt=0, le=100)
    #: Scale lr by batch_size / 256, as lightly's and SimCLR's recipes do.
    lr_scale_with_batch: bool = False
    momentum: float = opt(0.9, ge=0, lt=1)
    weight_decay: float = opt(0.0, ge=0, le=1)
    #: Fraction of training steps of linear warm-up before the decay.
    warmup_fraction: float = opt(0.05, ge=0, le=1)
    schedule: Literal["cosine", "step"] = "cosine"
    #: ``schedule: step``: epochs of the stage at which lr is multiplied by ``gamma``.
    milestones: list[float] = opt(factory=list, gt=0, le=1e5)
    gamma: float = opt(0.1, gt=0, le=1)

    def validate_for(self, key: str, epochs: float) -> None:
        if self.schedule == "step" and not self.milestones:
            raise ConfigError(f"{key}.schedule = step needs {key}.milestones (epochs at which lr drops), e.g. "
                              "[150, 180, 210]")
        if sorted(self.milestones) != list(self.milestones) or any(m >= epochs for m in self.milestones):
            raise ConfigError(f"{key}.milestones = {self.milestones} must increase and lie below the stage's "
                              f"{epochs:g} epochs")


def _optimizer(**kw) -> Any:
    return field(default_factory=lambda: OptimizerConfig(**kw))


@dataclass
class SourceConfig:
    """Source stage: the SSL teacher."""

    #: SSL method of the teacher: ``simclr`` or ``mocov2`` (docs/source_stage.md).
    #: ``supervised`` (a CE teacher, task: classify) and ``proxy_anchor`` (task: metric) belong to
    #: their tasks.
    method: Literal["simclr", "mocov2", "supervised", "proxy_anchor"] = "simclr"
    #: ResNets (torchvision) or the CIFAR networks of the distillation literature.
    backbone: Literal["resnet18", "resnet34", "resnet50", "resnet8x4", "resnet32x4", "wrn_16_2", "wrn_40_2"] = (
        "resnet18")
    #: ``imagenet``: 7x7/2 conv + max-pool (fast at 28x28); ``cifar``: 3x3/1 conv, no pool;
    #: ``small``: 3x3/2 conv, no pool (between the two in cost).
    stem: Literal["imagenet", "cifar", "small"] = "imagenet"
    epochs: float = opt(1.0, gt=0, le=1e5)
    #: SGD, lr 0.06 x batch / 256 (lightly's CIFAR-10 benchmarks), cosine with 5 % warm-up.
    optimizer: OptimizerConfig = _optimizer(name="sgd", lr=0.06, lr_scale_with_batch=True, weight_decay=5e-4)
    #: SimCLR NT-Xent temperature (lightly's benchmarks: 0.5 at CIFAR scale, 0.1 on ImageNet).
    temperature: float = opt(0.5, gt=0, le=100)
    #: Projection head (SimCLR and MoCo v2 heads alike): hidden and output width.
    proj_hidden_dim: int = opt(512, ge=1)
    proj_out_dim: int = opt(128, ge=1)
    #: MoCo v2: InfoNCE temperature (MoCo v2 paper: 0.2), queue of past keys (negatives), and the
    #: key-encoder momentum at the first step, raised to 1 by a cosine schedule over training.
    moco_temperature: float = opt(0.2, gt=0, le=100)
    moco_queue_size: int = opt(4096, ge=1, hint="MoCo v2: 4096 at CIFAR scale, 65536 on ImageNet")
    moco_momentum: float = opt(0.99, ge=0, le=1, hint="MoCo v2: 0.99 at CIFAR scale, 0.999 on ImageNet")
    #: External teacher weights (``ssl-transfer transfer --teacher FILE``): prefix of the backbone's
    #: keys in FILE, e.g. ``backbone.`` or ``module.encoder_q.``; None detects it, "" means none.
    weights_prefix: str | None = opt(None, empty=True)
    #: Train a linear classifier on detached backbone features during pretraining and log its
    #: accuracy (``train_online_cls_top1``); monitoring only, the backbone is unaffected.
    online_classifier: bool = False

    def validate(self, root: RunConfig) -> None:
        self.optimizer.validate_for("source.optimizer", self.epochs)
        if root.task == "ssl" and self.method not in ("simclr", "mocov2"):
            raise ConfigError(f"source.method = {self.method} belongs to task "
                              f"{'classify' if self.method == 'supervised' else 'metric'}; the ssl task's teacher is "
                              "simclr or mocov2")
        if self.method == "supervised" and root.task != "classify":
            raise ConfigError(f"source.method = supervised (a cross-entropy teacher) belongs to task classify, not "
                              f"{root.task}; set task: classify or another source.method")
        if root.task == "classify" and self.method == "proxy_anchor":
            raise ConfigError("source.method = proxy_anchor belongs to task metric; the classify task's teacher is "
                              "simclr, mocov2 or supervised")
        if self.method == "mocov2" and self.moco_queue_size < root.data.batch_size:
            raise ConfigError(
                f"source.moco_queue_size = {self.moco_queue_size} is smaller than data.batch_size = "
                f"{root.data.batch_size}: one batch of keys would not fit in the queue; set moco_queue_size >= "
                "batch_size")


@dataclass
class TransferConfig:
    """Transfer stage: a student trained by a relational loss on the frozen teacher."""

    #: The transfer loss (ssl_transfer.losses.LOSSES).
    loss: Literal["relaxed_contrastive", "relaxed_ms", "rkd", "pkt", "darkrank", "regression"] = (
        "relaxed_contrastive")
    #: Keyword arguments of the loss's constructor, checked against it; omitted ones take the
    #: loss's defaults (relaxed_contrastive: sigma 1, delta 1, block_size null; METHOD.md). After
    #: loading they hold every argument, defaults included (recorded in results.json).
    loss_args: dict[str, Any] = opt(factory=dict)
    #: Cross-batch memory: keep this many past (detached) student and teacher embeddings and
    #: add them to every batch's pairs (0: off). Relaxed contrastive, PKT and DarkRank only.
    memory_size: int = opt(0, ge=0)
    epochs: float = opt(1.0, gt=0, le=1e5)
    #: Teacher output transferred: backbone feature or the output of the SSL (SimCLR / MoCo v2)
    #: projection head.
    teacher_output: Literal["backbone", "projection"] = "backbone"
    #: What the teacher embeds: the same augmented views as the student (``augmented``)
    #: or the un-augmented image (``clean``), shared by all views of that image (w = 1 between
    #: the views of one image).
    teacher_views: Literal["augmented", "clean"] = "augmented"
    #: With ``teacher_views: clean``, compute the teacher embeddings of all training images
    #: once before training and look them up (pays off from about one epoch on).
    teacher_cache: bool = False
    #: Student initialisation: random (``scratch``) or a copy of the teacher (``teacher``).
    student_init: Literal["scratch", "teacher"] = "scratch"
    #: Student backbone; None copies the teacher's architecture (self-transfer). A different
    #: one (compression, e.g. resnet50 -> resnet18, resnet18 -> small_cnn) needs
    #: ``student_init: scratch``.
    student_backbone: Literal["resnet18", "resnet34", "resnet50", "small_cnn", "resnet8x4", "resnet32x4", "wrn_16_2",
                              "wrn_40_2"] | None = None
    student_stem: Literal["imagenet", "cifar", "small"] | None = None
    #: Embedding head on the student backbone: none, linear, or a 2-layer MLP.
    student_head: Literal["none", "linear", "mlp"] = "linear"
    #: Student embedding dimension (ignored for ``student_head: none``).
    embed_dim: int = opt(512, ge=1)
    #: AdamW, lr 1e-3, weight decay 1e-4, cosine with 5 % warm-up.
    optimizer: OptimizerConfig = _optimizer(name="adamw", lr=1e-3, weight_decay=1e-4)

    def validate(self, root: RunConfig) -> None:
        from ..losses.registry import MEMORY_LOSSES, resolve_loss_args

        self.optimizer.validate_for("transfer.optimizer", self.epochs)
        self.loss_args = resolve_loss_args(self.loss, self.loss_args, "transfer")
        if self.memory_size and self.loss not in MEMORY_LOSSES:
            raise ConfigError(f"transfer.memory_size does not apply to transfer.loss = {self.loss} (view-structured, "
                              f"cubic or pointwise); use one of {', '.join(MEMORY_LOSSES)}, or set memory_size: 0")
        if self.teacher_cache and self.teacher_views != "clean":
            raise ConfigError("transfer.teacher_cache needs transfer.teacher_views: clean (augmented views differ "
                              "at every step, so their teacher embeddings cannot be cached)")
        if self.student_init == "teacher" and (self.student_backbone not in (None, root.source.backbone)
                                               or self.student_stem not in (None, root.source.stem)):
            raise ConfigError("transfer.student_init = teacher needs the student architecture to equal the "
                              "teacher's; set transfer.student_init: scratch or drop transfer.student_backbone/stem")


@dataclass
class EvalConfig:
    """Evaluation of every model on frozen backbone features."""

    knn_k: int = opt(200, ge=1)
    knn_temperature: float = opt(0.1, gt=0, le=100)
    #: Inverse regularisation strengths of the logistic-regression probe, one fit per C on the
    #: training features; the fit with the best validation accuracy is evaluated once on the test
    #: split as it is (not refitted on train + val). When the best C is at an edge, the grid is
    #: extended on that side until it lies inside (linear_eval.linear_probe).
    linear_Cs: list[float] = opt(factory=lambda: [0.01, 0.03, 0.1, 0.3, 1.0, 3.0, 10.0, 30.0], gt=0)
    #: Iteration cap of each L-BFGS fit; fits stop at the gradient tolerance ``linear_tol`` first.
    linear_max_iter: int = opt(2000, ge=1)
    #: Gradient tolerance of each L-BFGS fit (max-abs gradient of the (C·n)-scaled objective).
    #: 2e-4 takes ~40 % fewer iterations than 1e-4 for val / test accuracies within 0.1 point
    #: (docs/speed.md, "Evaluation").
    linear_tol: float = opt(1e-4, gt=0, le=1.0)
    #: Linear probe: ``fast`` (logistic regression on frozen features of the un-augmented images,
    #: C chosen on val) or ``standard`` (the SGD linear layer on the frozen backbone with random
    #: crops and flips that lightly and solo-learn report; the epoch is chosen on val).
    protocol: Literal["fast", "standard"] = "fast"
    #: ``standard``: epochs, learning rate per 256 images (SGD, cosine), smallest crop area.
    standard_epochs: int = opt(90, ge=1, le=10000)
    standard_lr: float = opt(0.1, gt=0, le=100)
    standard_min_scale: float = opt(0.08, gt=0, le=1)
    #: Also compute retrieval metrics (Recall@K, MAP@R, R-precision) on the test split.
    retrieval: bool = False
    recall_ks: list[int] = opt(factory=lambda: [1, 2, 4, 8], ge=1)
    #: Where features are extracted and the probe fitted: auto (CUDA when available), cpu, cuda.
    device: Literal["auto", "cpu", "cuda"] = "auto"
    #: kNN monitor: log the validation kNN accuracy (knn_k, knn_temperature; bank = the
    #: eval_train images) of the model being trained every this many epochs (fractions allowed)
    #: and at the end of every training stage, as ``val_knn_acc`` in logs/<stage>/metrics.csv
    #: and ``monitor`` in results.json. 0 = off. Monitoring only: nothing is selected on it.
    knn_monitor_every: float = opt(0.0, ge=0, le=1e5)
    #: Also evaluate the student's embedding (backbone + head output, what the transfer loss
    #: trains) as ``student_embedding`` in results.json: ``auto`` when its dimension differs from
    #: the backbone feature's (dimension reduction, e.g. 512 -> 64), ``always``, or ``never``.
    student_embedding: Literal["auto", "always", "never"] = "auto"

    def validate(self, root: RunConfig) -> None:
        for key in ("linear_Cs", "recall_ks"):
            if not getattr(self, key):
                raise ConfigError(f"eval.{key} is empty; give at least one value")


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
    devices: int | str = opt(1, ge=-1)
    #: Machines (Lightning's ``num_nodes``; start the command on each node with the cluster's
    #: launcher, e.g. SLURM ``srun`` or ``torchrun``): processes = devices x num_nodes, and
    #: ``--out`` must be a folder every node sees (rank 0 writes, every node reads checkpoints).
    num_nodes: int = opt(1, ge=1, le=100000)
    strategy: str = "auto"
    #: With several processes, BatchNorm normalises with the statistics of the global batch (as
    #: one process would), on CPU too (ssl_transfer.distributed.GlobalBatchNorm); false: each
    #: process uses its own share's statistics (faster on GPUs, results then depend on devices).
    sync_batchnorm: bool = True
    precision: Literal["32-true", "64-true", "16-mixed", "bf16-mixed", "16-true", "bf16-true"] = "32-true"
    #: torch threads per process (also exported as OMP_NUM_THREADS, so that DDP processes keep
    #: it); None leaves PyTorch's default (under DDP Lightning's: CPU cores / processes).
    num_threads: int | None = opt(None, ge=1, le=4096)
    #: torch.use_deterministic_algorithms (via Lightning): repeatable GPU runs at some speed
    #: cost; CPU runs are repeatable without it (docs/reliability.md "Determinism").
    deterministic: bool = False
    #: Keep convolution weights (and so activations) in channels_last memory layout while
    #: training and extracting features: ~15 % faster ResNet steps and extraction on CPU
    #: (docs/speed.md), the same arithmetic up to float rounding; false: PyTorch's default layout.
    channels_last: bool = True
    log_every_n_steps: int = opt(10, ge=1)
    #: Write checkpoints/<stage>/last.ckpt every this many optimizer steps (0: at epoch ends
    #: only); ``--resume`` continues from it.
    checkpoint_every_n_steps: int = opt(50, ge=0)
    enable_progress_bar: bool = True

    def validate(self, root: RunConfig) -> None:
        pass


@dataclass
class RunConfig:
    """A whole run: source stage, controls, transfer stage and evaluation."""

    #: The task: ``ssl`` (SSL teacher -> relaxed transfer -> linear probe / kNN), ``classify``
    #: (supervised student with CE + relational term -> test top-1), ``metric`` (Proxy-Anchor teacher
    #: -> relaxed transfer on class-balanced batches -> Recall@K / MAP@R on unseen classes).
    task: Literal["ssl", "classify", "metric"] = "ssl"
    #: Drives every random choice of the run (weights, batches, augmentations).
    seed: int = opt(0, ge=0, le=2**32 - 1)
    data: DataConfig = field(default_factory=DataConfig)
    source: SourceConfig = field(default_factory=SourceConfig)
    transfer: TransferConfig = field(default_factory=TransferConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    controls: ControlsConfig = field(default_factory=ControlsConfig)
    trainer: TrainerConfig = field(default_factory=TrainerConfig)
    classify: ClassifyConfig = field(default_factory=ClassifyConfig)
    metric: MetricConfig = field(default_factory=MetricConfig)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def validate(self) -> None:
        """Cross-field checks of every section (range checks come first, from the fields)."""
        for f in dataclasses.fields(self):
            section = getattr(self, f.name)
            if dataclasses.is_dataclass(section) and hasattr(section, "validate"):
                section.validate(self)


#: Keys that moved when every stage got an ``optimizer`` section and the loss its ``loss_args``:
#: a config using the old name is told the new one.
MOVED = {
    **{f"{s}.{k}": f"{s}.optimizer.{k}" for s in ("source", "transfer")
       for k in ("lr", "lr_scale_with_batch", "momentum", "weight_decay", "warmup_fraction")},
    **{f"transfer.{k}": f"transfer.loss_args.{k}" for k in ("sigma", "delta", "block_size")},
    "transfer.ms_scale_pos": "transfer.loss_args.scale_pos", "transfer.ms_scale_neg": "transfer.loss_args.scale_neg",
    "transfer.rkd_dist_weight": "transfer.loss_args.dist_weight",
    "transfer.rkd_angle_weight": "transfer.loss_args.angle_weight",
    "transfer.darkrank_alpha": "transfer.loss_args.alpha", "transfer.darkrank_beta": "transfer.loss_args.beta",
    "transfer.darkrank_k": "transfer.loss_args.k",
}
