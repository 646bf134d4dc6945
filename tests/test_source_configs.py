"""Every shipped config loads; the source-stage recipes ({cifar10,cifar100,stl10,imagenet}_{simclr,
mocov2}.yaml) name their public numbers, agree with the transfer configs that load their teachers,
and take a training step on tiny files of their dataset's official format."""

import math
from pathlib import Path

import pytest
import torch
from test_datasets_formats import WNIDS, make_cifar, make_stl10, make_tree

from ssl_transfer.config import load_config
from ssl_transfer.data import DataBundle
from ssl_transfer.stages.pretrain import MoCoV2Module, SimCLRModule, build_ssl_module

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = sorted(p.name for p in (ROOT / "configs").glob("*.yaml"))
SOURCE = [f"{d}_{m}.yaml" for d in ("cifar10", "cifar100", "stl10", "imagenet") for m in ("simclr", "mocov2")]


@pytest.fixture(autouse=True)
def _no_env_data(monkeypatch):
    monkeypatch.delenv("SSL_TRANSFER_DATA", raising=False)


@pytest.mark.parametrize("name", SOURCE)
def test_source_config_is_the_recipe_its_name_says(name):
    cfg = load_config(ROOT / "configs" / name)
    dataset, method = name[:-5].split("_")
    assert cfg.data.name == dataset and cfg.source.method == method
    if method == "mocov2":
        assert cfg.source.moco_queue_size >= cfg.data.batch_size
        assert cfg.trainer.sync_batchnorm is False  # shuffle-BN needs per-device BatchNorm
    else:
        assert cfg.trainer.sync_batchnorm is True  # SimCLR recipes: global-batch BatchNorm


@pytest.mark.parametrize("dataset", ["cifar10", "stl10", "imagenet"])
def test_transfer_configs_describe_the_teacher_of_the_source_config(dataset):
    """teacher.pt written with X_simclr.yaml must load under X_simclr_transfer.yaml."""
    src = load_config(ROOT / "configs" / f"{dataset}_simclr.yaml").source
    dst = load_config(ROOT / "configs" / f"{dataset}_simclr_transfer.yaml").source
    for key in ("method", "backbone", "stem", "proj_hidden_dim", "proj_out_dim", "temperature"):
        assert getattr(src, key) == getattr(dst, key), key


def _tiny(tmp_path, dataset):
    if dataset in ("cifar10", "cifar100"):
        make_cifar(tmp_path, dataset)
        return ["data.val_size=6"]
    if dataset == "stl10":
        make_stl10(tmp_path)
        return ["data.val_size=4", "data.input_size=32"]
    make_tree(tmp_path, WNIDS[:2])
    return ["data.val_size=2", "data.input_size=32", "data.eval_train_subset=null"]


@pytest.mark.parametrize("name", SOURCE)
def test_source_config_trains_a_step_on_its_dataset_format(tmp_path, name):
    dataset = name.split("_")[0]
    overrides = _tiny(tmp_path, dataset) + [f"data.root={tmp_path}", "data.batch_size=4", "data.num_workers=0"]
    cfg = load_config(ROOT / "configs" / name, overrides)
    bundle = DataBundle.from_config(cfg.data, cfg.seed, method=cfg.source.method)
    torch.manual_seed(0)
    module = build_ssl_module(cfg.source, cfg.data, bundle.channels, bundle.num_classes)
    assert isinstance(module, {"simclr": SimCLRModule, "mocov2": MoCoV2Module}[cfg.source.method])
    assert module.online_classifier is not None  # every recipe monitors with the online probe
    module.log_loss = module.log_dict = lambda *a, **kw: None
    batch = next(iter(bundle.train_loader(cfg.seed)))
    loss = module.training_step(batch, 0)
    loss.backward()
    assert math.isfinite(loss.item())
    assert module.backbone.conv1.weight.grad is not None
