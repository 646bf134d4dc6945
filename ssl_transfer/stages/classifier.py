"""The models of classification transfer and the one LightningModule that trains them all.

- :class:`Classifier`: backbone + linear classifier (+ an optional embedding head for the
  relational term); ``forward`` gives logits, what evaluation reads;
- :class:`FrozenClassifierTeacher`: the teacher, frozen and always in eval mode; ``forward``
  gives its embedding and, when it has a classifier, its logits;
- :class:`ClassifyModule`: trains a :class:`Classifier` with, on a batch of
  :mod:`ssl_transfer.stages.classify_data` (labelled rows ``l``, all rows ``a``)::

      L = ce_weight · CE(z_s[l], y[l]) + loss_weight · loss(e_s[a], e_t[a]) + kd_weight · KD(z_s[a], z_t[a])

  with z the logits, e the embeddings, KD :class:`~ssl_transfer.losses.KDLoss` (T² · KL). The
  teacher terms are off when their weight is 0 or there is no teacher: the CE-only control, the
  teacher fine-tuned and the supervised source stage are the same module without them.
- :func:`fit_probe`: the linear head of an SSL teacher (for KD and its own top-1): logistic
  regression on frozen features of the labelled images, regularisation chosen on val.
"""

from __future__ import annotations

import copy

import torch
import torch.nn.functional as F
from torch import nn

from ..distributed import gather_views
from ..losses import KDLoss
from ..losses.registry import build_loss
from ..models import embedding_head, head_out_dim
from .base import StageModule
from .transfer import FrozenTeacher


class Classifier(nn.Module):
    """``backbone`` (n, C, H, W) -> (n, feat_dim), ``classifier`` Linear(feat_dim, num_classes),
    ``head`` (embedding of the relational term; identity for ``head_kind: none``)."""

    def __init__(self, backbone: nn.Module, spec, num_classes: int, head_kind: str = "none", embed_dim: int = 128):
        super().__init__()
        self.backbone, self.spec = backbone, spec
        self.classifier = nn.Linear(spec.feat_dim, num_classes)
        self.head = embedding_head(head_kind, spec.feat_dim, embed_dim)
        self.head_kind, self.embed_dim = head_kind, head_out_dim(head_kind, spec.feat_dim, embed_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits (n, num_classes)."""
        return self.classifier(self.backbone(x))

    def logits_and_embedding(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(logits (n, num_classes), embedding (n, embed_dim))`` from one backbone pass."""
        f = self.backbone(x)
        return self.classifier(f), self.head(f)


class FrozenClassifierTeacher(FrozenTeacher):
    """The teacher: :class:`~ssl_transfer.stages.transfer.FrozenTeacher` (backbone, + projection for
    ``teacher_output: projection``) for the embedding, plus ``classifier`` (its supervised head or
    the probe; may be None) for the logits of the backbone feature. Frozen the same way."""

    def __init__(self, backbone: nn.Module, feat_dim: int, classifier: nn.Module | None = None,
                 projection: nn.Module | None = None, proj_dim: int | None = None):
        super().__init__(backbone, feat_dim, projection, proj_dim)
        self.classifier = copy.deepcopy(classifier) if classifier is not None else None
        if self.classifier is not None:
            self.classifier.requires_grad_(False).eval()

    @torch.no_grad()
    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """``(embedding (n, out_dim), logits (n, num_classes) or None)``."""
        h = self.backbone(x)
        emb = self.projection_head(h) if self.projection_head is not None else h
        return emb, (self.classifier(h) if self.classifier is not None else None)


class ClassifyModule(StageModule):
    """CE on the labelled rows (+ λ · relational loss + KD weight · KD against a frozen teacher).

    Args: ``student`` (a :class:`Classifier`), ``optim`` / ``batch_size`` / ``epochs`` (the
    optimiser recipe, :class:`StageModule`), ``teacher`` (or None), the weights, the relational
    loss's name and options (``loss`` / ``loss_args``) and the KD temperature.
    """

    stage = "classify"

    def __init__(self, student: Classifier, optim, batch_size: int, epochs: float,
                 teacher: FrozenClassifierTeacher | None = None, *, ce_weight: float = 1.0, loss: str | None = None,
                 loss_args: dict | None = None, loss_weight: float = 0.0, kd_weight: float = 0.0,
                 kd_temperature: float = 4.0, stage: str = "classify"):
        super().__init__(optim, batch_size, epochs)
        self.stage = stage
        self.student, self.teacher = student, teacher
        self.ce_weight = float(ce_weight)
        self.loss_weight = float(loss_weight) if teacher is not None and loss else 0.0
        self.kd_weight = float(kd_weight) if teacher is not None and teacher.classifier is not None else 0.0
        if kd_weight and teacher is not None and teacher.classifier is None:
            raise ValueError("KD needs a teacher with a classifier (a supervised head or the probe)")
        self.criterion = (build_loss(loss, dict(loss_args or {}), student_dim=student.embed_dim,
                                     teacher_dim=teacher.out_dim, views=1) if self.loss_weight else None)
        self.loss_name = loss
        self.kd = KDLoss(kd_temperature) if self.kd_weight else None
        self.save_hyperparameters({"stage": stage, "ce_weight": self.ce_weight, "loss": loss,
                                   "loss_args": dict(loss_args or {}), "loss_weight": self.loss_weight,
                                   "kd_weight": self.kd_weight, "kd_temperature": kd_temperature,
                                   "batch_size": batch_size})

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.student(x)

    @staticmethod
    def supervised_rows(logits: torch.Tensor, labels: torch.Tensor,
                        labelled: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The rows the CE may see: labelled ones only (unlabelled rows carry label -1)."""
        return logits[labelled], labels[labelled]

    def loss_terms(self, batch: dict) -> dict[str, torch.Tensor]:
        """``{"ce", ["transfer"], ["kd"], "loss"}`` of a batch; ``loss`` is the weighted sum."""
        x, labels, labelled = batch["image"], batch["label"], batch["labelled"].bool()
        logits, emb = self.student.logits_and_embedding(x)
        self.check_finite(logits, "student logits")
        z, y = self.supervised_rows(logits, labels, labelled)
        terms = {"ce": F.cross_entropy(z, y) if len(y) else logits.sum() * 0.0}
        loss = self.ce_weight * terms["ce"]
        if self.loss_weight or self.kd_weight:
            t_emb, t_logits = self.teacher(x)
            self.check_finite(t_emb, "teacher embedding")
            if self.loss_weight:
                # under DDP the relational loss sees the whole global batch
                terms["transfer"] = self.criterion(gather_views(emb, 1), gather_views(t_emb.detach(), 1))
                loss = loss + self.loss_weight * terms["transfer"]
            if self.kd_weight:
                terms["kd"] = self.kd(logits, t_logits)
                loss = loss + self.kd_weight * terms["kd"]
        terms["loss"] = loss
        return terms

    def training_step(self, batch, batch_idx):
        terms = self.loss_terms(batch)
        self.check_finite(terms["loss"], f"{self.stage} loss")
        b = batch["image"].shape[0]
        self.log_loss(terms["loss"], b)
        for name in ("ce", "transfer", "kd"):
            if name in terms:
                self.log(f"{name}_loss", terms[name], on_step=True, on_epoch=False, batch_size=b, sync_dist=True)
        return terms["loss"]


def linear_from_probe(W: torch.Tensor, b: torch.Tensor, mean: torch.Tensor, std: torch.Tensor) -> nn.Linear:
    """The probe on standardised features, ((x - mean) / std) W + b, as one Linear on raw x:
    weight W^T / std, bias b - (mean / std) W."""
    layer = nn.Linear(W.shape[0], W.shape[1])
    with torch.no_grad():
        layer.weight.copy_((W / std[:, None]).T)
        layer.bias.copy_(b - (mean / std) @ W)
    return layer


def fit_probe(backbone: nn.Module, bundle, cfg, labelled_idx) -> tuple[nn.Linear, dict]:
    """The SSL teacher's classifier: the fast linear probe (``linear_eval``: logistic regression on
    standardised frozen features, C chosen on the validation split from ``eval.linear_Cs``) fitted on
    the un-augmented *labelled* training images, refitted at the chosen C and folded into one
    :class:`nn.Linear` on raw features. The test split is not read. Returns ``(layer, info)``."""
    from torch.utils.data import DataLoader

    from linear_eval import extract_features, linear_probe
    from linear_eval.linear import fit_logistic_regression

    from ..data.datasets import EvalDataset
    from ..runtime import eval_device

    dev = eval_device(cfg)
    backbone.to(dev)
    loader = DataLoader(EvalDataset(bundle.raw, "train", labelled_idx, bundle.eval_transform()),
                        batch_size=cfg.data.eval_batch_size, shuffle=False)
    tr_x, tr_y = extract_features(backbone, loader, dev, channels_last=cfg.trainer.channels_last)
    va_x, va_y = extract_features(backbone, bundle.eval_loader("val"), dev,
                                  channels_last=cfg.trainer.channels_last)
    backbone.cpu()
    probe = linear_probe(tr_x, tr_y, va_x, va_y, Cs=cfg.eval.linear_Cs, max_iter=cfg.eval.linear_max_iter,
                         tol=cfg.eval.linear_tol)
    mean, std = tr_x.mean(0), tr_x.std(0).clamp_min(1e-8)
    fit = fit_logistic_regression((tr_x - mean) / std, tr_y.long(), bundle.num_classes, probe["C"],
                                  cfg.eval.linear_max_iter, tol=cfg.eval.linear_tol)
    info = {"C": probe["C"], "probe_val_acc": probe["val_acc_best"], "n_labelled": int(len(tr_y))}
    return linear_from_probe(fit.W, fit.b, mean, std), info


__all__ = ["Classifier", "ClassifyModule", "FrozenClassifierTeacher", "fit_probe", "linear_from_probe"]
