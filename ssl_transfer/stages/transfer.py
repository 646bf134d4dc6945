"""Transfer stage: a student trained by a relational loss against a frozen teacher.

:class:`TransferStage` builds the student (``transfer.student_*``; from scratch or a copy of the
teacher), freezes the teacher (its backbone feature or SSL projection, ``transfer.teacher_output``),
builds the loss from the registry (``transfer.loss`` + ``transfer.loss_args``), trains
:class:`TransferModule` and saves the student as student.pt (backbone + spec, embedding head).
"""

from __future__ import annotations

import copy
import dataclasses
import time

import lightning as L
import torch
from torch import nn

from ..config import DataConfig, TransferConfig
from ..distributed import gather_views
from ..errors import CheckpointError
from ..io import load_model, save_model
from ..losses.registry import build_loss
from ..models import build_backbone, embedding_head, head_out_dim
from .base import StageContext, StageModule, StageResult, dataset_extra
from .source import transfer_data_seed


class FrozenTeacher(nn.Module):
    """The teacher's embedding function, frozen: eval mode always, no parameter gradients.

    Returns the features of (a copy of) ``backbone``, ``feat_dim`` wide, passed through (a copy
    of) ``projection_head`` as well when one is given (``transfer.teacher_output: projection``),
    then ``proj_dim`` wide. The attribute ``out_dim`` is the output width. Its weights are not
    written into the stage's last.ckpt (:meth:`StageModule.on_save_checkpoint`).
    """

    saved_in_checkpoints = False

    def __init__(self, backbone: nn.Module, feat_dim: int, projection_head: nn.Module | None = None,
                 proj_dim: int | None = None):
        super().__init__()
        self.backbone = copy.deepcopy(backbone)
        self.projection_head = copy.deepcopy(projection_head) if projection_head is not None else None
        self.out_dim = proj_dim if projection_head is not None else feat_dim
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

    def __init__(self, cfg: TransferConfig, data: DataConfig, student: Student, teacher: FrozenTeacher,
                 teacher_cache: torch.Tensor | None = None):
        super().__init__(cfg.optimizer, data.batch_size, cfg.epochs)
        self.save_hyperparameters({"transfer": dataclasses.asdict(cfg), "batch_size": data.batch_size})
        self.transfer = cfg
        self.student = student
        self.teacher = teacher
        teacher_dim = teacher.out_dim
        self.criterion = build_loss(cfg.loss, cfg.loss_args, student_dim=student.embed_dim, teacher_dim=teacher_dim,
                                    views=data.views)
        if teacher_cache is not None:
            self.register_buffer("teacher_cache", teacher_cache.float(), persistent=False)
        else:
            self.teacher_cache = None
        # cross-batch memory: FIFO of past (detached) student and teacher embeddings
        m = cfg.memory_size
        self.register_buffer("memory_student", torch.zeros(m, student.embed_dim))
        self.register_buffer("memory_teacher", torch.zeros(m, teacher_dim))
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
        if self.transfer.teacher_views == "clean":
            return self.teacher(batch["clean"]).repeat(views, 1)
        return self.teacher(x)

    def with_memory(self, s: torch.Tensor, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Append the stored embeddings to the batch: more pairs, gradient only via the batch."""
        filled = int(min(self.memory_count.item(), self.transfer.memory_size))
        return (torch.cat([s, self.memory_student[:filled].to(s.dtype)]),
                torch.cat([t, self.memory_teacher[:filled].to(t.dtype)]))

    @torch.no_grad()
    def enqueue(self, s: torch.Tensor, t: torch.Tensor) -> None:
        """Write the (global) batch into the FIFO memory, overwriting the oldest entries."""
        m = self.transfer.memory_size
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
        if self.transfer.memory_size:
            loss = self.criterion(*self.with_memory(s, t))
            self.enqueue(s.detach(), t)
        else:
            loss = self.criterion(s, t)
        self.check_finite(loss, f"{self.transfer.loss} loss")
        self.log_loss(loss, views[0].shape[0])
        return loss


class TransferStage:
    """Train (or reload) the student; ``result.model`` is the :class:`Student`."""

    name = "transfer"
    artifact = "student.pt"

    def __init__(self, cfg):
        self.cfg = cfg

    def frozen_teacher(self, teacher: StageResult) -> FrozenTeacher:
        projection = self.cfg.transfer.teacher_output == "projection"
        return FrozenTeacher(teacher.backbone, teacher.spec.feat_dim,
                             teacher.model.projection_head if projection else None, self.cfg.source.proj_out_dim)

    def build_student(self, teacher: StageResult, bundle) -> Student:
        return build_student(self.cfg.transfer, teacher.backbone, teacher.spec, bundle.channels)

    def train(self, ctx: StageContext, teacher: StageResult, name: str | None = None) -> StageResult:
        """Train a student from ``teacher``; ``name`` (default ``transfer``) names its logs,
        checkpoints and file (``student.pt``; ``<name>.pt`` for other names, as sweeps use)."""
        cfg, tc, bundle = self.cfg, self.cfg.transfer, ctx.bundle
        name = name or self.name
        seed = transfer_data_seed(cfg)  # the control's batches and augmentations, image for image
        loader = bundle.train_loader(seed, clean=tc.teacher_views == "clean" and not tc.teacher_cache)
        frozen = self.frozen_teacher(teacher)
        cache, cache_s = None, 0.0
        if tc.teacher_cache:
            from ..runtime import eval_device

            start = time.perf_counter()
            cache = teacher_cache(frozen.to(eval_device(cfg)), bundle)
            cache_s = time.perf_counter() - start
        L.seed_everything(cfg.seed + 2, workers=True, verbose=False)  # the student's (and its head's) init
        student = self.build_student(teacher, bundle)
        module = TransferModule(tc, cfg.data, student, frozen, teacher_cache=cache)
        seconds = ctx.fit(name, module, loader, tc.epochs, seed) + cache_s
        module.cpu()
        path = ctx.path("student.pt" if name == self.name else f"{name}.pt")
        save_model(path, student.backbone, student.spec,
                   extra={"head": student.head.state_dict(), "head_kind": tc.student_head,
                          "embed_dim": student.embed_dim, **dataset_extra(cfg, bundle)})
        return StageResult(name, student, student.backbone, student.spec, seconds, path)

    def load(self, ctx: StageContext, teacher: StageResult) -> StageResult:
        return self.from_file(ctx.run_dir.work / self.artifact, teacher, ctx.bundle)

    def from_file(self, path, teacher: StageResult, bundle) -> StageResult:
        """A saved student, checked against the config's student (architecture, embedding)."""
        backbone, payload = load_model(path)
        student = self.build_student(teacher, bundle)
        if payload["spec"] != student.spec.to_dict() or payload.get("embed_dim") != student.embed_dim:
            raise CheckpointError(
                f"student '{path}' is a {payload['spec']['arch']} with a {payload.get('embed_dim')}-d embedding but "
                f"the config asks for a {student.spec.arch} with a {student.embed_dim}-d one; fix transfer.* to match")
        student.backbone.load_state_dict(backbone.state_dict())
        student.head.load_state_dict(payload["head"])
        return StageResult(self.name, student, student.backbone, student.spec, 0.0, path)


@torch.no_grad()
def teacher_cache(teacher: FrozenTeacher, bundle) -> torch.Tensor:
    """Teacher embeddings (n_train, d_t) of the un-augmented training images, in dataset order."""
    from linear_eval import extract_features

    device = next(teacher.parameters()).device
    feats, _ = extract_features(teacher, bundle.eval_loader("train"), device)
    return feats.to(device)


def load_embedding(path, head_kind: str | None = None) -> tuple[nn.Module, dict]:
    """A saved student's embedding function (backbone + head) from student.pt. ``head_kind`` (the
    ``transfer.student_head`` it was trained with) is needed only for files that do not record it.
    One-line CheckpointError when the file has no head or another one."""
    backbone, payload = load_model(path)
    kind = payload.get("head_kind", head_kind)
    if "head" not in payload or kind in (None, "none"):
        raise CheckpointError(f"'{path}' holds no student embedding head (a teacher, or transfer.student_head: none); "
                              "evaluate it without --embedding")
    head = embedding_head(kind, payload["spec"]["feat_dim"], int(payload["embed_dim"]))
    try:
        head.load_state_dict(payload["head"])
    except RuntimeError:
        raise CheckpointError(f"the head in '{path}' is not a {kind} head to {payload['embed_dim']} dims; set "
                              "transfer.student_head to the one it was trained with") from None
    return nn.Sequential(backbone, head), payload
