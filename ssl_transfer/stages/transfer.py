"""Transfer stage: a student trained by a relational loss against a frozen teacher."""

from __future__ import annotations

import copy

import torch
from torch import nn

from ..config import TransferConfig
from ..distributed import gather_views
from ..losses import DarkRankLoss, PKTLoss, RegressionLoss, RelaxedContrastiveLoss, RelaxedMSLoss, RKDLoss
from ..models import build_backbone, embedding_head, head_out_dim
from .base import StageModule


class FrozenTeacher(nn.Module):
    """The teacher's embedding function, frozen: eval mode always, no parameter gradients.

    ``output='backbone'`` returns backbone features; ``'projection'`` passes them through the
    SSL projection head as well.
    """

    def __init__(self, backbone: nn.Module, projection_head: nn.Module | None = None):
        super().__init__()
        self.backbone = copy.deepcopy(backbone)
        self.projection_head = copy.deepcopy(projection_head) if projection_head is not None else None
        for p in self.parameters():
            p.requires_grad_(False)
        self.eval()

    def train(self, mode: bool = True):  # BatchNorm statistics stay fixed
        return super().train(False)

    @torch.no_grad()
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.backbone(x)
        return self.projection_head(h) if self.projection_head is not None else h


class Student(nn.Module):
    """Student backbone + embedding head; ``forward`` returns backbone features (evaluated),
    ``embed`` the head's output (trained by the transfer loss)."""

    def __init__(self, backbone: nn.Module, head: nn.Module):
        super().__init__()
        self.backbone = backbone
        self.head = head

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.backbone(x)

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.backbone(x))


def build_student(cfg: TransferConfig, teacher_backbone: nn.Module, teacher_spec, in_channels: int) -> Student:
    arch = cfg.student_backbone or teacher_spec.arch
    stem = cfg.student_stem or teacher_spec.stem
    backbone, spec = build_backbone(arch, stem, in_channels)
    if cfg.student_init == "teacher":
        backbone.load_state_dict(teacher_backbone.state_dict())
    head = embedding_head(cfg.student_head, spec.feat_dim, cfg.embed_dim)
    student = Student(backbone, head)
    student.spec = spec
    student.embed_dim = head_out_dim(cfg.student_head, spec.feat_dim, cfg.embed_dim)
    return student


def build_loss(cfg: TransferConfig, student_dim: int, teacher_dim: int, views: int) -> nn.Module:
    """The transfer loss named by ``cfg.loss`` with its hyper-parameters from the config."""
    if cfg.loss == "relaxed_contrastive":
        return RelaxedContrastiveLoss(sigma=cfg.sigma, delta=cfg.delta, block_size=cfg.block_size)
    if cfg.loss == "relaxed_ms":
        return RelaxedMSLoss(sigma=cfg.sigma, delta=cfg.delta, scale_pos=cfg.ms_scale_pos,
                             scale_neg=cfg.ms_scale_neg, views=views)
    if cfg.loss == "rkd":
        return RKDLoss(dist_weight=cfg.rkd_dist_weight, angle_weight=cfg.rkd_angle_weight)
    if cfg.loss == "pkt":
        return PKTLoss()
    if cfg.loss == "darkrank":
        return DarkRankLoss(alpha=cfg.darkrank_alpha, beta=cfg.darkrank_beta, k=cfg.darkrank_k)
    if cfg.loss == "regression":  # its linear map is trained with the student
        return RegressionLoss(student_dim=student_dim, teacher_dim=teacher_dim)
    raise ValueError(f"unknown transfer loss '{cfg.loss}'")


class TransferModule(StageModule):
    """Trains ``student`` so that ``loss(student.embed(x), teacher(x))`` is minimised.

    Views are stacked as [view0 of all images; view1 of all images; ...].

    ``teacher_views``: ``augmented``: the teacher embeds the same augmented views as the
    student. ``clean``: the teacher embeds the un-augmented image (``batch["clean"]``), once
    per image, repeated for each view; all views of an image then share one teacher embedding,
    so w = 1 between them. With ``teacher_cache`` (n_train, d_t) the clean embeddings are looked
    up by dataset index instead of recomputed (valid because clean images and the frozen,
    eval-mode teacher are deterministic).
    """

    stage = "transfer"

    def __init__(self, cfg: TransferConfig, student: Student, teacher: FrozenTeacher, batch_size: int,
                 teacher_cache: torch.Tensor | None = None, teacher_dim: int | None = None,
                 views: int = 2):
        super().__init__()
        self.save_hyperparameters({"transfer": vars(cfg), "batch_size": batch_size})
        self.opt_cfg = cfg
        self.batch_size = batch_size
        self.student = student
        self.teacher = teacher
        self.criterion = build_loss(cfg, student.embed_dim, teacher_dim or student.embed_dim, views)
        if teacher_cache is not None:
            self.register_buffer("teacher_cache", teacher_cache.float(), persistent=False)
        else:
            self.teacher_cache = None
        # cross-batch memory: FIFO of past (detached) student and teacher embeddings
        m = cfg.memory_size
        self.register_buffer("memory_student", torch.zeros(m, student.embed_dim))
        self.register_buffer("memory_teacher", torch.zeros(m, teacher_dim or student.embed_dim))
        self.register_buffer("memory_count", torch.zeros((), dtype=torch.long))
        # Under DDP these are equal in every process by construction (the cache comes from the same
        # frozen teacher, the memory is filled with the gathered global batch): DDP need not
        # broadcast them from rank 0 before every step (the cache can hold millions of rows).
        self._ddp_params_and_buffers_to_ignore = [
            name for name, _ in self.named_buffers(recurse=False)
            if name in ("teacher_cache", "memory_student", "memory_teacher", "memory_count")]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.student(x)

    def teacher_embeddings(self, batch: dict, x: torch.Tensor) -> torch.Tensor:
        views = len(batch["views"])
        if self.teacher_cache is not None:
            return self.teacher_cache[batch["index"]].repeat(views, 1)
        if self.opt_cfg.teacher_views == "clean":
            return self.teacher(batch["clean"]).repeat(views, 1)
        return self.teacher(x)

    def with_memory(self, s: torch.Tensor, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Append the stored embeddings to the batch: more pairs, gradient only via the batch."""
        filled = int(min(self.memory_count.item(), self.opt_cfg.memory_size))
        return (torch.cat([s, self.memory_student[:filled].to(s.dtype)]),
                torch.cat([t, self.memory_teacher[:filled].to(t.dtype)]))

    @torch.no_grad()
    def enqueue(self, s: torch.Tensor, t: torch.Tensor) -> None:
        """Write the (global) batch into the FIFO memory, overwriting the oldest entries."""
        m = self.opt_cfg.memory_size
        s, t = s[-m:], t[-m:]
        start = int(self.memory_count.item()) % m
        idx = (torch.arange(s.shape[0], device=s.device) + start) % m
        self.memory_student[idx] = s.to(self.memory_student.dtype)
        self.memory_teacher[idx] = t.to(self.memory_teacher.dtype)
        self.memory_count += s.shape[0]

    def training_step(self, batch, batch_idx):
        views = batch["views"]
        x = torch.cat(views)
        t = self.teacher_embeddings(batch, x)
        self.check_finite(t, "teacher embedding")
        s = self.student.embed(x)
        self.check_finite(s, "student embedding")
        # under DDP the loss sees the whole global batch (views kept in view-major order)
        s, t = gather_views(s, len(views)), gather_views(t.detach(), len(views))
        if self.opt_cfg.memory_size:
            loss = self.criterion(*self.with_memory(s, t))
            self.enqueue(s.detach(), t)
        else:
            loss = self.criterion(s, t)
        self.check_finite(loss, f"{self.opt_cfg.loss} loss")
        self.log_loss(loss, views[0].shape[0])
        return loss
