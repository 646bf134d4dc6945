"""What the stages share: the optimiser recipe, the teacher's output and cache, the data stream
of paired comparisons, and the stage contract through the runner."""

import math

import lightning as L
import pytest
import torch
from lightly.utils.lars import LARS
from torch.utils.data import DataLoader, Dataset

from ssl_transfer.config import config_from_dict, load_config
from ssl_transfer.data import DataBundle
from ssl_transfer.models import build_backbone
from ssl_transfer.stages.base import StageModule
from ssl_transfer.stages.pretrain import SimCLRModule
from ssl_transfer.stages.source import transfer_data_seed
from ssl_transfer.stages.transfer import (
    FrozenTeacher,
    TransferModule,
    TransferStage,
    build_student,
    teacher_cache,
)


class Tiny(StageModule):
    def __init__(self, optim, batch_size, epochs):
        super().__init__(optim, batch_size, epochs)
        self.w = torch.nn.Parameter(torch.ones(3))

    def training_step(self, batch, batch_idx):
        return (self.w * batch).sum() ** 2


def lr_curve(optimizer: dict, batch_size=512, steps=20, epochs=2.0):
    """The learning rate of every step of a Lightning fit with this optimizer section."""
    cfg = config_from_dict({"transfer": {"optimizer": optimizer, "epochs": epochs}})
    module = Tiny(cfg.transfer.optimizer, batch_size, epochs)
    seen = []

    class Record(L.Callback):
        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
            seen.append(trainer.optimizers[0].param_groups[0]["lr"])

    trainer = L.Trainer(max_steps=steps, accelerator="cpu", logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False, callbacks=[Record()])
    trainer.fit(module, DataLoader(torch.ones(steps, 3), batch_size=None))
    return seen, trainer.optimizers[0]


def test_lr_is_scaled_by_batch_warmed_up_then_cosine_to_zero():
    lrs, opt = lr_curve({"name": "sgd", "lr": 0.1, "lr_scale_with_batch": True, "warmup_fraction": 0.2})
    peak = 0.1 * 512 / 256
    assert isinstance(opt, torch.optim.SGD)
    assert lrs[:4] == pytest.approx([peak * (s + 1) / 4 for s in range(4)])  # 4 warm-up steps of 20
    for s in range(4, 20):  # lightly's CosineWarmupScheduler: cosine from the peak to 0 over the other 16 steps
        assert lrs[s] == pytest.approx(peak * 0.5 * (1 + math.cos(math.pi * (s - 4) / 15)), abs=1e-9)
    assert lrs[-1] == 0.0
    unscaled, _ = lr_curve({"name": "adamw", "lr": 0.1, "warmup_fraction": 0.0})
    assert unscaled[0] == pytest.approx(0.1)


def test_step_schedule_drops_by_gamma_at_milestone_epochs_and_lars_is_lightlys():
    lrs, opt = lr_curve({"name": "lars", "lr": 1.0, "warmup_fraction": 0.0, "schedule": "step",
                         "milestones": [0.5, 1.5], "gamma": 0.1}, epochs=2.0)
    assert isinstance(opt, LARS)
    # 20 steps over 2 epochs: drops at steps 5 and 15
    assert lrs[:5] == pytest.approx([1.0] * 5) and lrs[5:15] == pytest.approx([0.1] * 10)
    assert lrs[15:] == pytest.approx([0.01] * 5)


class Batches(Dataset):
    def __init__(self, n=16):
        self.x = torch.randn(n, 1, 16, 16, generator=torch.Generator().manual_seed(0))

    def __len__(self):
        return len(self.x)

    def __getitem__(self, i):
        return {"views": [self.x[i], self.x[i].flip(-1)], "clean": self.x[i], "label": 0, "index": i}


def test_projection_output_is_the_teachers_head_on_its_features():
    cfg = load_config_dict({"transfer": {"teacher_output": "projection"}, "source": {"proj_out_dim": 16}})
    teacher = SimCLRModule(cfg.source, cfg.data, 1).eval()
    stage = TransferStage(cfg)
    from ssl_transfer.stages.base import StageResult

    result = StageResult("source", teacher, teacher.backbone, teacher.spec, 0.0, None)
    frozen = stage.frozen_teacher(result)
    x = torch.randn(4, 1, 16, 16)
    assert frozen.out_dim == 16
    with torch.no_grad():
        torch.testing.assert_close(frozen(x), teacher.projection_head(teacher.backbone(x)))
    student = build_student(cfg.transfer, teacher.backbone, teacher.spec, 1)
    module = TransferModule(cfg.transfer, cfg.data, student, frozen)
    assert module.memory_teacher.shape[1] == 16


def load_config_dict(data):
    return config_from_dict({"data": {"batch_size": 8}, **data})


def test_teacher_cache_rows_are_the_clean_embeddings_looked_up_by_index(tmp_path):
    cfg = load_config_dict({"data": {"name": "digits", "val_size": 100, "batch_size": 8, "num_workers": 0},
                            "transfer": {"teacher_views": "clean", "teacher_cache": True}})
    bundle = DataBundle.from_config(cfg.data, 0)
    backbone, spec = build_backbone("resnet18", "imagenet", 1)
    frozen = FrozenTeacher(backbone, spec.feat_dim)
    cache = teacher_cache(frozen, bundle)
    assert cache.shape == (len(bundle.train_idx), 512)
    module = TransferModule(cfg.transfer, cfg.data, build_student(cfg.transfer, backbone, spec, 1), frozen,
                            teacher_cache=cache)
    batch = next(iter(bundle.train_loader(0, clean=True)))
    looked_up = module.teacher_embeddings(batch, torch.cat(batch["views"]))
    with torch.no_grad():
        computed = frozen(batch["clean"]).repeat(2, 1)
    torch.testing.assert_close(looked_up, computed, rtol=1e-5, atol=1e-5)


def test_the_control_and_every_student_see_the_same_images_with_the_same_augmentations(repo_root):
    cfg = load_config(repo_root / "configs" / "smoke.yaml", ["data.num_workers=0"])
    bundle = DataBundle.from_config(cfg.data, cfg.seed)
    seed = transfer_data_seed(cfg)
    assert seed != cfg.seed  # the transfer stream is not the teacher's
    control = iter(bundle.train_loader(seed))
    student = iter(bundle.train_loader(seed, clean=True))
    for _ in range(3):
        a, b = next(control), next(student)
        assert torch.equal(a["index"], b["index"])
        for va, vb in zip(a["views"], b["views"]):
            assert torch.equal(va, vb)
    teacher_stream = next(iter(bundle.train_loader(cfg.seed)))
    assert not torch.equal(teacher_stream["index"], next(iter(bundle.train_loader(seed)))["index"])
