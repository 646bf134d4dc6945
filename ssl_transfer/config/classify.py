"""Config section ``classify`` (task: classify): read only by the classification-transfer stages.

The student classifier (backbone + linear classifier) is trained on the labelled images with

    L = ce_weight · CE(classifier(f_s(x_l)), y_l)
        + loss_weight · loss(e_s(x), e_t(x))            (λ: the relational term, any loss of the zoo)
        + kd_weight · T² · KL(softmax(z_t(x) / T) || softmax(z_s(x) / T))     (Hinton KD, optional)

where x_l are the labelled images of the batch and x the images the teacher terms see (the
labelled ones, plus the unlabelled ones with ``unlabelled: true``); f_s is the student backbone,
e_s its embedding (the backbone feature, or a head on it), e_t the frozen teacher's embedding, z_s
and z_t the logits (the teacher's classifier: its own for a supervised teacher, the linear probe
fitted on the labelled images for an SSL one). ``epochs`` count passes over the labelled images.

Task classify reads this section, ``source`` (the teacher), ``data`` and ``eval``; ``transfer.*``
is not used.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

from ..errors import ConfigError
from . import sections as _sections  # the module, not its names: sections.py imports this file
from .fields import opt


def _student_optimizer() -> Any:
    """The CIFAR distillation recipe's optimiser (RepDistiller): SGD lr 0.05, momentum 0.9,
    weight decay 5e-4; cosine here, ``schedule: step`` with milestones in the CIFAR configs."""
    return _sections.OptimizerConfig(name="sgd", lr=0.05, weight_decay=5e-4, warmup_fraction=0.0)


@dataclass
class ClassifyConfig:
    """Classification transfer: a student classifier trained with CE + lambda x relational loss (+ KD)."""

    #: The relational term (ssl_transfer.losses.LOSSES), on student and teacher embeddings of one
    #: augmented view per image.
    loss: Literal["relaxed_contrastive", "relaxed_ms", "rkd", "pkt", "darkrank", "regression"] = (
        "relaxed_contrastive")
    #: Keyword arguments of the loss's constructor, checked against it (as transfer.loss_args).
    loss_args: dict[str, Any] = opt(factory=dict)
    #: λ, the weight of the relational term; 0 trains CE (+ KD) only.
    loss_weight: float = opt(1.0, ge=0, le=1e6, hint="lambda >= 0; 0 turns the relational term off")
    #: Weight of the cross-entropy on the labelled images (RepDistiller's KD recipe: 0.1).
    ce_weight: float = opt(1.0, gt=0, le=1e6)
    #: Weight of Hinton KD on logits (0: off; RepDistiller's KD recipe: 0.9).
    kd_weight: float = opt(0.0, ge=0, le=1e6)
    #: KD softmax temperature T (RepDistiller: 4).
    kd_temperature: float = opt(4.0, gt=0, le=100)
    #: Teacher embedding of the relational term: backbone feature or (SSL teachers) projection output.
    teacher_output: Literal["backbone", "projection"] = "backbone"
    #: Student embedding of the relational term: the backbone (penultimate) feature (``none``, as
    #: RepDistiller's RKD / PKT), or a linear / MLP head on it of ``embed_dim`` dimensions.
    student_head: Literal["none", "linear", "mlp"] = "none"
    embed_dim: int = opt(128, ge=1)
    #: Student backbone; None: the teacher's architecture. Compression: e.g. resnet8x4, small_cnn.
    student_backbone: Literal["resnet18", "resnet34", "resnet50", "small_cnn", "resnet8x4", "resnet32x4", "wrn_16_2",
                              "wrn_40_2"] | None = None
    student_stem: Literal["imagenet", "cifar", "small"] | None = None
    #: Student initialisation: random (``scratch``), or the teacher's backbone with a fresh
    #: classifier (``teacher``; then the CE-only control is the teacher fine-tuned).
    student_init: Literal["scratch", "teacher"] = "scratch"
    #: Training length in passes over the labelled images.
    epochs: float = opt(1.0, gt=0, le=1e5)
    #: Labelled images per global batch of the student and its controls; None: data.batch_size
    #: (which the source stage uses: an SSL teacher can keep its own, larger batch).
    batch_size: int | None = opt(None, ge=2, hint="or null (data.batch_size)")
    optimizer: _sections.OptimizerConfig = field(default_factory=_student_optimizer)
    #: Augmentation of the single training view: ``crop_flip`` (random crop with padding size/8 and
    #: horizontal flip, the CIFAR recipe; RandomResizedCrop + flip for file-backed datasets),
    #: ``flip`` or ``none``. Teacher and student see the same augmented image.
    augment: Literal["crop_flip", "flip", "none"] = "crop_flip"
    #: Few labels (data.label_fraction): let the teacher terms (relational, KD) also see the
    #: unlabelled training images; the CE term never does. Each batch: batch_size labelled images +
    #: round(unlabelled_ratio x batch_size) unlabelled ones.
    unlabelled: bool = False
    unlabelled_ratio: float = opt(1.0, gt=0, le=1000)
    #: Controls trained next to the student for the same steps on the same labelled batches: CE
    #: only (the same student, no teacher terms) and, when the student has the teacher's
    #: architecture and starts from scratch, the teacher fine-tuned with CE.
    ce_only: bool = True
    teacher_finetuned: bool = True

    def student_batch(self, root) -> int:
        """Labelled images per global batch of the student and its controls."""
        return self.batch_size or root.data.batch_size

    def validate(self, root) -> None:
        from ..losses.registry import resolve_loss_args

        self.optimizer.validate_for("classify.optimizer", self.epochs)
        self.loss_args = resolve_loss_args(self.loss, self.loss_args, "classify")
        if root.task != "classify":
            return
        if self.unlabelled and (root.data.label_fraction is None or root.data.label_fraction >= 1):
            raise ConfigError("classify.unlabelled needs data.label_fraction < 1 (with every label kept there is "
                              "no unlabelled image); set data.label_fraction, e.g. 0.1, or classify.unlabelled: false")
        if self.teacher_output == "projection" and root.source.method not in ("simclr", "mocov2"):
            raise ConfigError(f"classify.teacher_output = projection needs an SSL teacher (source.method simclr or "
                              f"mocov2), not {root.source.method}; set classify.teacher_output: backbone")
        if self.student_init == "teacher" and (self.student_backbone not in (None, root.source.backbone)
                                               or self.student_stem not in (None, root.source.stem)):
            raise ConfigError("classify.student_init = teacher needs the student architecture to equal the "
                              "teacher's; set classify.student_init: scratch or drop classify.student_backbone/stem")
        if root.data.images_per_class is not None:
            raise ConfigError("data.images_per_class (class-balanced batches) does not apply to task classify, "
                              "whose batches are shuffled labelled images; remove data.images_per_class")
