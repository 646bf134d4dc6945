"""Stages on tiny random batches: frozen teacher, views stacking, loss guard, determinism."""

import lightning as L
import pytest
import torch
from torch.utils.data import DataLoader, Dataset

from ssl_transfer.config import config_from_dict
from ssl_transfer.errors import NonFiniteError
from ssl_transfer.models import build_backbone
from ssl_transfer.stages.pretrain import SimCLRModule
from ssl_transfer.stages.transfer import FrozenTeacher, TransferModule, build_student


class RandomViews(Dataset):
    def __init__(self, n=32, views=2, clean=False):
        g = torch.Generator().manual_seed(0)
        self.x = torch.randn(n, 1, 16, 16, generator=g)
        self.views, self.clean = views, clean

    def __len__(self):
        return len(self.x)

    def __getitem__(self, i):
        noise = [self.x[i] + 0.1 * torch.randn_like(self.x[i]) for _ in range(self.views)]
        item = {"views": noise, "label": i % 4, "index": i}
        if self.clean:
            item["clean"] = self.x[i]
        return item


def fit(module, dataset, steps=3):
    L.seed_everything(0, verbose=False)
    trainer = L.Trainer(max_steps=steps, accelerator="cpu", logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False)
    trainer.fit(module, DataLoader(dataset, batch_size=8, shuffle=True))
    return trainer


def config(batch_size=8, **transfer):
    """A validated config (loss_args resolved) with these transfer options, no warm-up."""
    transfer.setdefault("optimizer", {"warmup_fraction": 0.0})
    return config_from_dict({"transfer": transfer, "data": {"batch_size": batch_size}})


def make_transfer(teacher_views="augmented", **kw):
    backbone, spec = build_backbone("resnet18", "imagenet", 1)
    cfg = config(teacher_views=teacher_views, **kw)
    teacher = FrozenTeacher(backbone, spec.feat_dim)
    student = build_student(cfg.transfer, backbone, spec, 1)
    return TransferModule(cfg.transfer, cfg.data, student, teacher), teacher


@pytest.mark.parametrize("teacher_views", ["augmented", "clean"])
def test_teacher_frozen_student_trained(teacher_views):
    module, teacher = make_transfer(teacher_views)
    t_before = {k: v.clone() for k, v in teacher.state_dict().items()}
    s_before = {k: v.clone() for k, v in module.student.state_dict().items()}
    fit(module, RandomViews(clean=teacher_views == "clean"))
    assert not teacher.training and all(not p.requires_grad for p in teacher.parameters())
    for k, v in teacher.state_dict().items():  # weights and BatchNorm running stats unchanged
        assert torch.equal(v, t_before[k]), k
    changed = [k for k, v in module.student.state_dict().items() if not torch.equal(v, s_before[k])]
    assert any("weight" in k for k in changed)


def test_clean_teacher_views_share_one_embedding():
    module, _ = make_transfer("clean")
    ds = RandomViews(n=8, views=3, clean=True)
    batch = next(iter(DataLoader(ds, batch_size=8)))
    t = module.teacher_embeddings(batch, torch.cat(batch["views"]))
    assert t.shape == (24, 512)
    torch.testing.assert_close(t[:8], t[8:16])
    torch.testing.assert_close(t[:8], t[16:])


def test_student_init_from_teacher_copies_backbone_only():
    backbone, spec = build_backbone("resnet18", "imagenet", 1)
    student = build_student(config(student_init="teacher", student_head="linear", embed_dim=64).transfer,
                            backbone, spec, 1)
    for (k, v), (k2, v2) in zip(backbone.state_dict().items(), student.backbone.state_dict().items()):
        assert k == k2 and torch.equal(v, v2)
    assert student.embed(torch.randn(2, 1, 16, 16)).shape == (2, 64)
    scratch = build_student(config(student_head="none").transfer, backbone, spec, 1)
    assert not torch.equal(scratch.backbone.conv1.weight, backbone.conv1.weight)
    assert scratch.embed_dim == 512


def test_simclr_loss_decreases_on_fixed_batch():
    cfg = config_from_dict({"source": {"optimizer": {"lr": 0.1, "warmup_fraction": 0.0}}, "data": {"batch_size": 8}})
    module = SimCLRModule(cfg.source, cfg.data, in_channels=1)
    batch = next(iter(DataLoader(RandomViews(n=8), batch_size=8)))
    opt = torch.optim.SGD(module.parameters(), lr=0.05, momentum=0.9)
    module.log_loss = lambda *a: None
    losses = []
    for _ in range(8):
        opt.zero_grad()
        loss = module.training_step(batch, 0)
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0] - 0.1


def test_non_finite_loss_is_reported_with_stage_and_step():
    module, _ = make_transfer()
    batch = next(iter(DataLoader(RandomViews(n=8), batch_size=8)))
    batch["views"][0][0, 0, 0, 0] = float("nan")
    module.log_loss = lambda *a: None
    with pytest.raises(NonFiniteError, match="stage 'transfer' at epoch 0, step 0"):
        module.training_step(batch, 0)


def test_same_seed_same_weights():
    def train():
        L.seed_everything(1, verbose=False)
        module, _ = make_transfer()
        fit(module, RandomViews(), steps=2)
        return module.student.state_dict()
    a, b = train(), train()
    for k in a:
        assert torch.equal(a[k], b[k]), k


@pytest.mark.parametrize("loss", ["relaxed_contrastive", "relaxed_ms", "rkd", "pkt", "darkrank", "regression"])
def test_every_registered_loss_trains_the_student(loss):
    backbone, spec = build_backbone("resnet18", "imagenet", 1)
    cfg = config(loss=loss, student_head="linear", embed_dim=32,
                 loss_args={"block_size": 5} if loss == "relaxed_contrastive" else {})
    student = build_student(cfg.transfer, backbone, spec, 1)
    module = TransferModule(cfg.transfer, cfg.data, student, FrozenTeacher(backbone, spec.feat_dim))
    head_before = student.head.weight.clone()
    extra = [p.clone() for p in module.criterion.parameters()]
    fit(module, RandomViews(), steps=2)
    assert not torch.equal(student.head.weight, head_before)
    if loss == "regression":  # the loss's own linear map is optimised with the student
        assert extra and not torch.equal(next(module.criterion.parameters()), extra[0])


def test_cross_batch_memory_is_fifo_and_widens_the_pairs():
    backbone, spec = build_backbone("resnet18", "imagenet", 1)
    cfg = config(batch_size=2, memory_size=5, student_head="linear", embed_dim=3)
    teacher = FrozenTeacher(backbone, spec.feat_dim)
    teacher.out_dim = 4  # the memory holds (5, 4) teacher rows
    module = TransferModule(cfg.transfer, cfg.data, build_student(cfg.transfer, backbone, spec, 1), teacher)
    s1, t1 = torch.arange(12.0).view(4, 3), torch.arange(16.0).view(4, 4)
    s_all, t_all = module.with_memory(s1, t1)
    assert s_all.shape == (4, 3) and t_all.shape == (4, 4)  # empty memory adds nothing
    module.enqueue(s1, t1)
    s2, t2 = -torch.ones(4, 3), -torch.ones(4, 4)
    s_all, t_all = module.with_memory(s2, t2)
    assert torch.equal(s_all, torch.cat([s2, s1])) and torch.equal(t_all, torch.cat([t2, t1]))
    module.enqueue(s2, t2)  # 8 items into 5 slots: the oldest 3 are overwritten
    assert int(module.memory_count) == 8
    kept = {tuple(r) for r in module.memory_student.tolist()}
    assert kept == {tuple(r) for r in torch.cat([s1[3:], s2]).tolist()}
    assert "memory_student" in module.state_dict()  # saved with checkpoints
    loss = module.criterion(*module.with_memory(s2.requires_grad_(), t2))
    assert torch.isfinite(loss)


def test_memory_trains_end_to_end():
    backbone, spec = build_backbone("resnet18", "imagenet", 1)
    cfg = config(memory_size=24)
    module = TransferModule(cfg.transfer, cfg.data, build_student(cfg.transfer, backbone, spec, 1),
                            FrozenTeacher(backbone, spec.feat_dim))
    fit(module, RandomViews(), steps=3)
    assert int(module.memory_count) == 3 * 16
