"""The paper's metric-learning configs ({cub,cars,sop}_{proxy_anchor,self512,dim64,r50_r18}.yaml):
the recipes their comments state, one teacher for the three settings of a dataset, and a training
step of every config on tiny trees of the official layouts."""

from pathlib import Path

import pytest
import test_metric_datasets as tiny
import torch

from ssl_transfer.config import load_config
from ssl_transfer.data import DataBundle
from ssl_transfer.data import metric as metric_data
from ssl_transfer.losses.registry import build_loss
from ssl_transfer.stages.metric import MetricTransferStage, plan
from ssl_transfer.stages.proxy_anchor import ProxyAnchorModule, training_classes

ROOT = Path(__file__).resolve().parents[1]
DATASETS = ("cub", "cars", "sop")
SETTINGS = {"self512": ("resnet50", 512), "dim64": ("resnet50", 64), "r50_r18": ("resnet18", 128)}
PAPER = {"cub": ("69.1", "72.1", "67.4", "66.6"), "cars": ("86.4", "89.6", "86.5", "86.0"),
         "sop": ("79.2", "79.8", "76.3", "78.4")}  # teacher, self-transfer, 512 -> 64, R50 -> R18 (Recall@1)


def config(dataset: str, setting: str, *overrides: str):
    return load_config(ROOT / "configs" / f"{dataset}_{setting}.yaml", list(overrides))


@pytest.mark.parametrize("dataset", DATASETS)
def test_the_settings_of_a_dataset_share_one_proxy_anchor_teacher(dataset):
    teacher = config(dataset, "proxy_anchor")
    assert teacher.task == "metric" and teacher.source.method == "proxy_anchor" and teacher.data.name == dataset
    assert (teacher.source.backbone, teacher.metric.embed_dim, teacher.metric.margin, teacher.metric.alpha,
            teacher.metric.proxy_lr_multiplier) == ("resnet50", 512, 0.1, 32.0, 100.0)
    assert teacher.data.batch_size == 180 and teacher.data.images_per_class is None  # the Proxy-Anchor recipe
    for setting, (arch, dim) in SETTINGS.items():
        cfg = config(dataset, setting)
        # what a teacher.pt is checked against: training classes, architecture, pooling, width
        for section, key in (("data", "name"), ("data", "val_classes"), ("data", "split_seed"), ("source", "backbone"),
                             ("source", "stem"), ("metric", "pooling"), ("metric", "embed_dim")):
            assert getattr(getattr(cfg, section), key) == getattr(getattr(teacher, section), key), (setting, key)
        assert cfg.source == teacher.source  # `ssl-transfer metric` and the control use the teacher's recipe
        t, d = cfg.transfer, cfg.data
        assert (t.student_backbone or cfg.source.backbone, t.embed_dim) == (arch, dim)
        assert (t.loss, t.loss_args["sigma"], t.loss_args["delta"], t.teacher_views) == (
            "relaxed_contrastive", 1.0, 1.0, "augmented")
        assert (t.optimizer.name, t.optimizer.lr, t.optimizer.weight_decay, t.optimizer.schedule) == (
            "adamw", 1e-4, 1e-4, "cosine")
        assert t.epochs == (150 if dataset == "sop" else 90)
        assert (d.batch_size, d.images_per_class, d.views) == (90, 2, 2)
        assert cfg.eval.recall_ks == ([1, 10, 100, 1000] if dataset == "sop" else [1, 2, 4, 8])
        text = (ROOT / "configs" / f"{dataset}_{setting}.yaml").read_text()
        assert "72.1 / 89.6 / 79.8" in text and all(n in text for n in PAPER[dataset])


def tiny_tree(dataset, root, monkeypatch):
    """A tree of the official layout with 4 training classes (2 become validation classes)."""
    monkeypatch.setattr(tiny, "CUB", {1: 2, 2: 2, 3: 2, 4: 2, 101: 2, 150: 2})
    monkeypatch.setattr(tiny, "CARS", {1: 2, 5: 2, 7: 2, 98: 2, 99: 2, 196: 2})
    monkeypatch.setattr(tiny, "SOP_TRAIN", {1: 2, 2: 2, 3: 2, 4: 2})
    monkeypatch.setattr(tiny, "SOP_TEST", {11319: 2, 11320: 2})
    monkeypatch.setitem(metric_data.EXPECTED_COUNTS, dataset, (8, 4))
    monkeypatch.delenv("SSL_TRANSFER_DATA", raising=False)
    tiny.MAKERS[dataset][0](root)


TINY = ["data.val_classes=2", "data.batch_size=4", "data.images_per_class=2", "data.input_size=32",
        "data.num_workers=0", "metric.imagenet_weights=null", "metric.student_imagenet_weights=null"]


@pytest.mark.parametrize("dataset", DATASETS)
def test_every_config_takes_a_training_step_on_its_dataset_format(dataset, tmp_path, monkeypatch):
    tiny_tree(dataset, tmp_path, monkeypatch)
    teacher = None
    for setting in ("proxy_anchor", *SETTINGS):
        cfg = config(dataset, setting, f"data.root={tmp_path}", *TINY)
        stages = plan(cfg)
        bundle = DataBundle.from_config(cfg.data, cfg.seed)
        assert len(training_classes(bundle)) == 2  # 4 training classes, 2 held out for validation
        batch = next(iter(bundle.train_loader(cfg.seed)))
        assert [v.shape for v in batch["views"]] == [(4, 3, 32, 32)] * 2
        if teacher is None:  # one teacher for the three settings (the test above: the same recipe)
            torch.manual_seed(0)
            teacher = ProxyAnchorModule(cfg, training_classes(bundle).tolist(), 3)
            loss = teacher.criterion(teacher(batch["views"][0]), teacher.label_index[batch["label"]])
            loss.backward()
            assert torch.isfinite(loss) and teacher.net.head.weight.grad is not None
            continue
        result = type("R", (), {"model": teacher})()
        assert isinstance(stages.transfer, MetricTransferStage)
        student = stages.transfer.build_student(result, bundle)
        frozen = stages.transfer.frozen_teacher(result)
        x = torch.cat(batch["views"])
        s, t = student.embed(x), frozen(x)
        assert s.shape == (8, SETTINGS[setting][1]) and t.shape == (8, 512)
        relaxed = build_loss(cfg.transfer.loss, cfg.transfer.loss_args, student_dim=s.shape[1], teacher_dim=512,
                             views=2)
        relaxed(s, t).backward()
        assert student.head.weight.grad is not None and student.spec.arch == SETTINGS[setting][0]
