"""The Proxy-Anchor source stage's training recipe (proxies at 100x the learning rate, warm-up of
head + proxies only, BatchNorm freezing, gradient clipping), the embedding networks (pooling,
ImageNet weights from a local file only) and the metric student's initialisation."""

import lightning as L
import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset
from torchvision import models as tvm

from ssl_transfer.config import config_from_dict
from ssl_transfer.errors import CheckpointError, ConfigError
from ssl_transfer.models.embedding import GlobalPool, build_trunk, load_imagenet_weights
from ssl_transfer.stages.base import build_optimizer
from ssl_transfer.stages.metric import build_metric_student
from ssl_transfer.stages.proxy_anchor import ProxyAnchorModule

CLASSES = [0, 2, 4]  # dataset labels of the training classes (1 and 3: validation classes)


def metric_config(**metric):
    return config_from_dict({
        "task": "metric", "data": {"name": "fashion_mnist", "train_classes": [0, 1, 2, 3, 4], "val_classes": 2,
                                   "batch_size": 12, "images_per_class": 4},
        "source": {"method": "proxy_anchor", "backbone": "resnet18", "epochs": 2.0,
                   "optimizer": {"name": "adamw", "lr": 1.0e-3, "weight_decay": 1.0e-4, "warmup_fraction": 0.0,
                                 "lr_scale_with_batch": False}},
        "metric": {"embed_dim": 8, **metric}})


class Batches(Dataset):
    """Training batches as the bundle's loader gives them: {views: [(b, 1, 28, 28)], label: (b,)}."""

    def __init__(self, n: int = 4, b: int = 12):
        g = torch.Generator().manual_seed(0)
        self.items = [{"views": [torch.randn(b, 1, 28, 28, generator=g)],
                       "label": torch.tensor(CLASSES * (b // 3))} for _ in range(n)]

    def __len__(self):
        return len(self.items)

    def __getitem__(self, i):
        return self.items[i]


class Snapshots(L.Callback):
    """Copies of a few parameters after every optimizer step."""

    def __init__(self):
        self.seen = []

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx):
        self.seen.append({"conv1": module.net.backbone.conv1.weight.detach().clone(),
                          "bn1_mean": module.net.backbone.bn1.running_mean.clone(),
                          "bn1_weight": module.net.backbone.bn1.weight.detach().clone(),
                          "head": module.net.head.weight.detach().clone(),
                          "proxies": module.criterion.proxies.detach().clone()})


def fit(module, steps: int) -> tuple[Snapshots, L.Trainer]:
    snaps = Snapshots()
    trainer = L.Trainer(max_steps=steps, accelerator="cpu", logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False, callbacks=[snaps])
    start = {"conv1": module.net.backbone.conv1.weight.detach().clone(),
             "bn1_mean": module.net.backbone.bn1.running_mean.clone(),
             "bn1_weight": module.net.backbone.bn1.weight.detach().clone(),
             "head": module.net.head.weight.detach().clone(), "proxies": module.criterion.proxies.detach().clone()}
    snaps.seen.append(start)
    trainer.fit(module, DataLoader(Batches(), batch_size=None))
    return snaps, trainer


def test_proxies_learn_at_100x_the_learning_rate_of_the_network():
    torch.manual_seed(0)
    module = ProxyAnchorModule(metric_config(), CLASSES, 1)
    groups = module.parameters_to_train()
    assert [len(g["params"]) for g in groups] == [len(list(module.net.parameters())), 1]
    assert groups[1]["params"][0] is module.criterion.proxies
    opt = build_optimizer(groups, module.optim, module.effective_lr())
    assert opt.param_groups[0]["lr"] == pytest.approx(1e-3) and opt.param_groups[1]["lr"] == pytest.approx(1e-1)
    _, trainer = fit(ProxyAnchorModule(metric_config(warmup_epochs=0.0), CLASSES, 1), 3)
    sched = trainer.lr_scheduler_configs[0].scheduler  # one (cosine) schedule scales both groups
    assert sched.base_lrs == pytest.approx([1e-3, 1e-1])
    assert [sched.lr_lambdas[0](1), sched.lr_lambdas[1](1)] == [sched.lr_lambdas[0](1)] * 2


def test_warmup_trains_only_the_head_and_the_proxies():
    torch.manual_seed(0)
    module = ProxyAnchorModule(metric_config(warmup_epochs=0.5, grad_clip_value=None), CLASSES, 1)
    snaps, _ = fit(module, 4)  # 4 batches per epoch: steps 1-2 are the warm-up
    s = snaps.seen
    for step in (1, 2):
        assert torch.equal(s[step]["conv1"], s[0]["conv1"]) and torch.equal(s[step]["bn1_weight"], s[0]["bn1_weight"])
        assert not torch.equal(s[step]["head"], s[step - 1]["head"])
        assert not torch.equal(s[step]["proxies"], s[step - 1]["proxies"])
    assert not torch.equal(s[3]["conv1"], s[2]["conv1"])  # after the warm-up the backbone learns
    assert not torch.equal(s[1]["bn1_mean"], s[0]["bn1_mean"])  # BatchNorm statistics move (as the reference)


def test_frozen_batchnorm_keeps_statistics_and_affine_parameters():
    torch.manual_seed(0)
    module = ProxyAnchorModule(metric_config(bn_freeze=True, warmup_epochs=0.0), CLASSES, 1)
    bns = [m for m in module.net.backbone.modules() if isinstance(m, nn.BatchNorm2d)]
    assert bns and all(not p.requires_grad for m in bns for p in m.parameters())
    in_groups = {id(p) for g in module.parameters_to_train() for p in g["params"]}
    assert not any(id(p) in in_groups for m in bns for p in m.parameters())
    module.train()
    assert all(not m.training for m in bns) and module.net.head.training
    snaps, _ = fit(module, 2)
    s = snaps.seen
    assert torch.equal(s[2]["bn1_mean"], s[0]["bn1_mean"]) and torch.equal(s[2]["bn1_weight"], s[0]["bn1_weight"])
    assert not torch.equal(s[2]["conv1"], s[0]["conv1"])


def test_gradients_are_clipped_elementwise():
    torch.manual_seed(0)
    module = ProxyAnchorModule(metric_config(grad_clip_value=1e-6, warmup_epochs=0.0), CLASSES, 1)
    seen = {}

    class Spy(L.Callback):
        def on_train_batch_end(self, trainer, pl_module, *args):  # the gradients of the step just taken
            seen["max"] = max(float(p.grad.abs().max()) for p in pl_module.parameters() if p.grad is not None)

    L.Trainer(max_steps=1, accelerator="cpu", logger=False, enable_checkpointing=False, enable_progress_bar=False,
              enable_model_summary=False, callbacks=[Spy()]).fit(module, DataLoader(Batches(), batch_size=None))
    assert 0 < seen["max"] <= 1e-6


def test_labels_map_to_proxies_and_validation_classes_have_none():
    module = ProxyAnchorModule(metric_config(), CLASSES, 1)
    assert module.label_index[torch.tensor(CLASSES)].tolist() == [0, 1, 2]
    assert module.label_index[torch.tensor([1, 3])].tolist() == [-1, -1]
    assert module.criterion.proxies.shape == (3, 8)


def test_pooling_kinds():
    x = torch.randn(2, 3, 4, 5)
    assert torch.equal(GlobalPool("avg_max")(x), GlobalPool("avg")(x) + GlobalPool("max")(x))
    assert torch.allclose(GlobalPool("avg")(x).flatten(1), nn.AdaptiveAvgPool2d(1)(x).flatten(1))
    trunk, spec = build_trunk("resnet18", "imagenet", 3, "avg_max")
    assert trunk(torch.randn(2, 3, 64, 64)).shape == (2, spec.feat_dim) == (2, 512)


def test_imagenet_weights_come_from_the_named_file_only(tmp_path):
    torch.manual_seed(1)
    reference = tvm.resnet18(weights=None)
    torch.save(reference.state_dict(), tmp_path / "resnet18.pth")  # torchvision's format, classifier included
    trunk, spec = build_trunk("resnet18", "imagenet", 3)
    info = load_imagenet_weights(trunk, spec, str(tmp_path / "resnet18.pth"), "metric.imagenet_weights")
    assert info["dropped"] == ["fc.weight", "fc.bias"]
    assert torch.equal(trunk.layer4[1].conv2.weight, reference.layer4[1].conv2.weight)
    with pytest.raises(ConfigError) as err:
        load_imagenet_weights(trunk, spec, str(tmp_path / "missing.pth"), "metric.imagenet_weights")
    assert "\n" not in str(err.value) and "never downloaded" in str(err.value) and "missing.pth" in str(err.value)
    torch.save(tvm.resnet50(weights=None).state_dict(), tmp_path / "resnet50.pth")
    with pytest.raises(CheckpointError) as err:
        load_imagenet_weights(trunk, spec, str(tmp_path / "resnet50.pth"), "metric.imagenet_weights")
    assert "\n" not in str(err.value) and "does not fit" in str(err.value)


def test_teacher_and_student_start_from_the_imagenet_file(tmp_path):
    torch.manual_seed(1)
    torch.save(tvm.resnet18(weights=None).state_dict(), tmp_path / "r18.pth")
    cfg = metric_config(imagenet_weights=str(tmp_path / "r18.pth"))
    teacher = ProxyAnchorModule(cfg, CLASSES, 3)
    student = build_metric_student(cfg, teacher.net, 3)  # transfer.student_init: scratch -> ImageNet weights
    reference = torch.load(tmp_path / "r18.pth", weights_only=True)["layer3.0.conv1.weight"]
    assert torch.equal(teacher.net.backbone.layer3[0].conv1.weight, reference)
    assert torch.equal(student.backbone.layer3[0].conv1.weight, reference)


def test_a_student_from_the_teacher_starts_at_the_teachers_embedding():
    torch.manual_seed(0)
    cfg = metric_config()
    teacher = ProxyAnchorModule(cfg, CLASSES, 1).eval()
    x = torch.randn(5, 1, 28, 28)
    same = config_from_dict({**cfg.to_dict(), "transfer": {**cfg.to_dict()["transfer"], "student_init": "teacher",
                                                           "embed_dim": 8}})
    student = build_metric_student(same, teacher.net, 1).eval()
    assert torch.equal(student.embed(x), teacher.net.embed(x))
    smaller = config_from_dict({**cfg.to_dict(), "transfer": {**cfg.to_dict()["transfer"], "student_init": "teacher",
                                                              "embed_dim": 4}})
    student = build_metric_student(smaller, teacher.net, 1).eval()  # 8 -> 4: the trunk is copied, a new head
    assert torch.equal(student.backbone(x), teacher.net.backbone(x)) and student.embed(x).shape == (5, 4)
    assert student.embed_dim == 4
