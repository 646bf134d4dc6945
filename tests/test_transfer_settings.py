"""The three transfer settings by config (self-transfer, dimension reduction, compression) and
the shipped transfer configs: every one loads, builds its student, and takes training steps."""

from pathlib import Path

import lightning as L
import pytest
import torch
from torch.utils.data import DataLoader, Dataset

from ssl_transfer.config import config_from_dict, load_config
from ssl_transfer.errors import ConfigError
from ssl_transfer.io import load_model, save_model
from ssl_transfer.models import build_backbone
from ssl_transfer.stages.transfer import FrozenTeacher, TransferModule, build_student

ROOT = Path(__file__).resolve().parents[1]
VARIANTS = ["cifar10_transfer_dim64.yaml", "cifar10_compression.yaml", "quickstart_compression.yaml"]
TRANSFER_CONFIGS = sorted({p.name for p in (ROOT / "configs").glob("*transfer*.yaml")} | set(VARIANTS))


@pytest.mark.parametrize("name", TRANSFER_CONFIGS)
def test_transfer_config_loads_and_builds_its_student(name):
    cfg = load_config(ROOT / "configs" / name)
    tc = cfg.transfer
    teacher, spec = build_backbone(cfg.source.backbone, cfg.source.stem, 3)
    student = build_student(tc, teacher, spec, 3)
    arch = tc.student_backbone or cfg.source.backbone
    assert student.spec.arch == arch
    assert student.embed_dim == (spec.feat_dim if tc.student_head == "none" and arch == cfg.source.backbone
                                 else tc.embed_dim)
    if arch == cfg.source.backbone and tc.student_init == "teacher":  # self-transfer: a copy of the teacher
        for (k, v), w in zip(student.backbone.state_dict().items(), teacher.state_dict().values()):
            assert torch.equal(v, w), k
    else:
        assert tc.student_init == "scratch"


@pytest.mark.parametrize("arch", ["resnet18", "small_cnn"])
def test_student_init_teacher_needs_the_teacher_architecture(tmp_path, arch):
    text = (ROOT / "configs" / "quickstart_compression.yaml").read_text()
    (tmp_path / "c.yaml").write_text(text)
    overrides = [f"transfer.student_backbone={arch}", "source.backbone=resnet50", "transfer.student_init=teacher"]
    with pytest.raises(ConfigError, match="student_init") as e:
        load_config(tmp_path / "c.yaml", overrides)
    assert "\n" not in str(e.value)


def test_small_cnn_is_smaller_and_round_trips(tmp_path):
    net, spec = build_backbone("small_cnn", "imagenet", 1)
    ref, _ = build_backbone("resnet18", "imagenet", 1)
    assert net(torch.randn(3, 1, 28, 28)).shape == (3, spec.feat_dim) == (3, 256)
    count = lambda m: sum(p.numel() for p in m.parameters())  # noqa: E731
    assert count(net) < count(ref) / 20
    save_model(tmp_path / "s.pt", net, spec)
    loaded, payload = load_model(tmp_path / "s.pt")
    assert payload["spec"]["arch"] == "small_cnn"
    x = torch.randn(2, 1, 28, 28)
    net.eval(), loaded.eval()
    torch.testing.assert_close(loaded(x), net(x))


class Views(Dataset):
    def __init__(self, n=32):
        g = torch.Generator().manual_seed(0)
        self.x = torch.randn(n, 1, 16, 16, generator=g)

    def __len__(self):
        return len(self.x)

    def __getitem__(self, i):
        return {"views": [self.x[i] + 0.1 * torch.randn_like(self.x[i]) for _ in range(2)], "clean": self.x[i],
                "label": i % 4, "index": i}


@pytest.mark.parametrize("setting,kw", [
    ("dimension reduction", dict(student_init="teacher", embed_dim=64)),
    ("compression", dict(student_backbone="small_cnn", student_init="scratch", embed_dim=32)),
    ("compression, rkd", dict(student_backbone="small_cnn", student_init="scratch", loss="rkd", memory_size=0)),
])
def test_student_of_another_size_trains_against_the_teacher(setting, kw):
    backbone, spec = build_backbone("resnet18", "imagenet", 1)
    full = config_from_dict({"data": {"batch_size": 8}, "transfer": {
        "teacher_views": "clean", "optimizer": {"warmup_fraction": 0.0}, **{"memory_size": 24, **kw}}})
    cfg = full.transfer
    student = build_student(cfg, backbone, spec, 1)
    module = TransferModule(cfg, full.data, student, FrozenTeacher(backbone, spec.feat_dim))
    before = {k: v.clone() for k, v in student.state_dict().items()}
    L.seed_everything(0, verbose=False)
    trainer = L.Trainer(max_steps=3, accelerator="cpu", logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False)
    trainer.fit(module, DataLoader(Views(), batch_size=8, shuffle=True))
    x = torch.randn(4, 1, 16, 16)
    assert student.embed(x).shape == (4, cfg.embed_dim)
    assert module.memory_teacher.shape[1] == spec.feat_dim
    assert any(not torch.equal(v, before[k]) for k, v in student.state_dict().items() if "weight" in k)


@pytest.mark.parametrize("name,source", [("cifar10_simclr_transfer.yaml", "cifar10_simclr.yaml"),
                                         ("stl10_simclr_transfer.yaml", "stl10_simclr.yaml"),
                                         ("imagenet_simclr_transfer.yaml", "imagenet_simclr.yaml"),
                                         ("cifar10_transfer_dim64.yaml", "cifar10_simclr.yaml"),
                                         ("cifar10_compression.yaml", "cifar10_simclr.yaml")])
def test_transfer_config_describes_the_teacher_of_its_source_config(name, source):
    """The source section must match teacher.pt (load_teacher checks the backbone) and is the
    recipe of the "teacher continued" control: it equals the source stage's config."""
    src = ROOT / "configs" / source
    cfg, ref = load_config(ROOT / "configs" / name), load_config(src)
    expected = vars(ref.source) | ({"backbone": "resnet50"} if "compression" in name else {})
    assert vars(cfg.source) == expected
    assert (cfg.data.name, cfg.data.val_size) == (ref.data.name, ref.data.val_size)
