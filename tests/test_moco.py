"""MoCo v2 source stage: momentum update and schedule, FIFO queue, InfoNCE value, training on
every dataset format, checkpoint and teacher.pt round trips, online classifier, end to end."""

import json
import math

import lightning as L
import pytest
import torch
import torch.nn.functional as F
from test_datasets_formats import WNIDS, make_cifar, make_stl10, make_tree
from torch.utils.data import DataLoader, Dataset

from ssl_transfer.config import DataConfig, OptimizerConfig, SourceConfig, load_config
from ssl_transfer.data import DataBundle
from ssl_transfer.errors import CheckpointError, ConfigError
from ssl_transfer.io import load_model, save_model
from ssl_transfer.stages.pretrain import MoCoV2Module, SimCLRModule, build_ssl_module

torch.set_num_threads(1)


def moco_cfg(lr=0.06, **kw):
    return SourceConfig(**{"method": "mocov2", "moco_queue_size": 16, "proj_hidden_dim": 32, "proj_out_dim": 8,
                           "optimizer": OptimizerConfig(lr=lr, warmup_fraction=0.0), **kw})


def data(batch_size=4):
    return DataConfig(batch_size=batch_size)


def make_moco(in_channels=1, batch_size=4, **kw):
    torch.manual_seed(0)
    module = MoCoV2Module(moco_cfg(**kw), data(batch_size), in_channels)
    module.log_loss = lambda *a: None
    return module


class Views(Dataset):
    """Two noisy views of fixed random 16x16 images, labels i % 4."""

    def __init__(self, n=16):
        self.x = torch.randn(n, 1, 16, 16, generator=torch.Generator().manual_seed(0))

    def __len__(self):
        return len(self.x)

    def __getitem__(self, i):
        return {"views": [self.x[i] + 0.1 * torch.randn_like(self.x[i]) for _ in range(2)], "label": i % 4,
                "index": i}


def fixed_batch(n=4):
    return next(iter(DataLoader(Views(n), batch_size=n)))


def trainer(steps, tmp_path=None, **kw):
    return L.Trainer(max_steps=steps, accelerator="cpu", logger=False, enable_checkpointing=False,
                     enable_progress_bar=False, enable_model_summary=False,
                     default_root_dir=str(tmp_path) if tmp_path else None, **kw)


def key_pairs(module):
    return list(zip(list(module.backbone.parameters()) + list(module.projection_head.parameters()),
                    list(module.key_backbone.parameters()) + list(module.key_head.parameters())))


# ----------------------------------------------------------------------------------------
# momentum encoder
# ----------------------------------------------------------------------------------------


def test_key_encoder_is_a_frozen_copy_outside_the_optimiser():
    module = make_moco()
    for q, k in key_pairs(module):
        assert torch.equal(q, k) and not k.requires_grad and q.requires_grad
    trained = {id(p) for p in module.parameters_to_train()}
    assert not trained & {id(p) for p in module.key_backbone.parameters()}
    assert not trained & {id(p) for p in module.key_head.parameters()}


def test_momentum_update_is_the_ema_formula():
    module = make_moco()
    with torch.no_grad():  # make query and key encoders differ
        for q, _ in key_pairs(module):
            q.add_(torch.randn_like(q))
    before = [(q.clone(), k.clone()) for q, k in key_pairs(module)]
    bn_before = module.key_backbone.bn1.running_mean.clone()
    module.update_key_encoder(0.9)
    for (q0, k0), (q, k) in zip(before, key_pairs(module)):
        torch.testing.assert_close(k, 0.9 * k0 + 0.1 * q0, rtol=0, atol=1e-6)
        assert torch.equal(q, q0)  # the query encoder is not touched
    assert torch.equal(module.key_backbone.bn1.running_mean, bn_before)  # parameters only


def test_momentum_follows_a_cosine_from_the_start_value_to_one():
    module = make_moco(moco_momentum=0.9)
    seen = []
    update = module.update_key_encoder
    module.update_key_encoder = lambda m: (seen.append(m), update(m))
    trainer(5).fit(module, DataLoader(Views(), batch_size=4, shuffle=True))
    # independent: m_t = 1 - (1 - m_0) (1 + cos(pi t / (T - 1))) / 2 for t = 0..T-1, T = 5 steps
    expected = [1 - 0.1 * (1 + math.cos(math.pi * t / 4)) / 2 for t in range(5)]
    assert seen == pytest.approx(expected, abs=1e-12)
    assert seen[0] == pytest.approx(0.9) and seen[-1] == 1.0


# ----------------------------------------------------------------------------------------
# queue and loss value
# ----------------------------------------------------------------------------------------


def record_keys_and_queries(module):
    keys, queries = [], []
    original = module.keys
    module.keys = lambda x: keys.append(original(x)) or keys[-1]
    module.projection_head.register_forward_hook(lambda m, i, o: queries.append(o.detach()))
    return keys, queries


def test_queue_is_fifo_of_previous_keys_and_loss_is_infonce_against_it():
    module = make_moco(moco_queue_size=12, moco_temperature=0.2)  # 3 batches of 4 keys
    keys, queries = record_keys_and_queries(module)
    start = module.queue.clone()
    assert torch.allclose(start.norm(dim=1), torch.ones(12))  # lightly's random unit init
    batches = [fixed_batch() for _ in range(4)]  # different noise each time
    losses, queues_before = [], []
    for b in batches:
        queues_before.append(module.queue.clone())
        losses.append(module.training_step(b, 0).item())
    k = [F.normalize(x, dim=1) for x in keys]
    # after 4 batches of 4 in 12 slots: slots 0-3 hold batch 4 (batch 1 dequeued), then batches 2, 3
    assert torch.equal(module.queue, torch.cat([k[3], k[1], k[2]]))
    assert int(module.queue_ptr) == 4
    # the negatives of step t are exactly the queue before step t (previous keys, not the current ones)
    assert torch.equal(queues_before[1], torch.cat([k[0], start[4:]]))
    assert torch.equal(queues_before[2], torch.cat([k[0], k[1], start[8:]]))
    for t in range(4):
        q = F.normalize(queries[t], dim=1)
        logits = torch.cat([(q * k[t]).sum(1, keepdim=True), q @ queues_before[t].T], dim=1) / 0.2
        expected = F.cross_entropy(logits, torch.zeros(4, dtype=torch.long))
        assert losses[t] == pytest.approx(expected.item(), rel=1e-5)


# ----------------------------------------------------------------------------------------
# training on each dataset format
# ----------------------------------------------------------------------------------------


def _bundle(tmp_path, name):
    if name in ("cifar10", "cifar100"):
        make_cifar(tmp_path, name)
        kw = {"val_size": 6}
    elif name == "stl10":
        make_stl10(tmp_path)
        kw = {"val_size": 4, "input_size": 32}
    else:
        make_tree(tmp_path, WNIDS[:2])
        kw = {"val_size": 2, "input_size": 32}
    cfg = DataConfig(name=name, root=str(tmp_path), batch_size=4, num_workers=0, **kw)
    return DataBundle.from_config(cfg, seed=0, method="mocov2")


@pytest.mark.parametrize("name", ["cifar10", "cifar100", "stl10", "imagenet"])
def test_moco_trains_on_each_dataset_format(tmp_path, name):
    bundle = _bundle(tmp_path, name)
    module = make_moco(in_channels=bundle.channels, moco_queue_size=32, lr=0.05)
    batch = next(iter(bundle.train_loader(seed=0)))
    assert batch["views"][0].shape == (4, 3, 32, 32)
    opt = torch.optim.SGD(module.parameters_to_train(), lr=0.05, momentum=0.9)
    start_queue, start_ptr = module.queue.clone(), module.queue_ptr.clone()
    losses = []
    for _ in range(8):
        # the queue is held at its initial keys: otherwise the batch's own keys from the previous
        # step become its negatives and the loss on a fixed batch is not expected to fall
        module._set_queue(start_queue, start_ptr)
        opt.zero_grad()
        loss = module.training_step(batch, 0)
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0] - 0.05, losses


# ----------------------------------------------------------------------------------------
# checkpoints
# ----------------------------------------------------------------------------------------


def test_lightning_checkpoint_restores_key_encoder_and_queue(tmp_path):
    module = make_moco()
    t = trainer(3)
    t.fit(module, DataLoader(Views(), batch_size=4, shuffle=True))
    ckpt = tmp_path / "moco.ckpt"
    t.save_checkpoint(ckpt)
    assert int(module.queue_ptr) == 12
    fresh = MoCoV2Module(moco_cfg(), data(), 1)  # different random weights and queue
    assert not torch.equal(fresh.queue, module.queue)
    # Lightning's resume path: restores state_dict, then calls on_load_checkpoint; max_steps is
    # already reached, so nothing trains afterwards
    trainer(3).fit(fresh, DataLoader(Views(), batch_size=4), ckpt_path=str(ckpt))
    assert torch.equal(fresh.queue, module.queue) and torch.equal(fresh.queue_ptr, module.queue_ptr)
    for name in ("key_backbone", "key_head", "backbone", "projection_head"):
        a, b = getattr(module, name).state_dict(), getattr(fresh, name).state_dict()
        assert all(torch.equal(a[k], b[k]) for k in a), name


def test_teacher_file_round_trip_and_method_check(tmp_path):
    from ssl_transfer.config import RunConfig
    from ssl_transfer.stages.source import SourceStage

    def load_teacher(cfg, path, bundle):
        return SourceStage(cfg).from_file(path, bundle).model

    module = make_moco()
    trainer(2).fit(module, DataLoader(Views(), batch_size=4, shuffle=True))
    save_model(tmp_path / "teacher.pt", module.backbone, module.spec, extra=module.teacher_state())
    _, payload = load_model(tmp_path / "teacher.pt")
    assert payload["method"] == "mocov2"
    fresh = MoCoV2Module(moco_cfg(), data(), 1)
    fresh.backbone.load_state_dict(module.backbone.state_dict())
    fresh.load_teacher_state(payload)
    assert torch.equal(fresh.queue, module.queue) and torch.equal(fresh.queue_ptr, module.queue_ptr)
    for name in ("key_backbone", "key_head", "projection_head"):
        a, b = getattr(module, name).state_dict(), getattr(fresh, name).state_dict()
        assert all(torch.equal(a[k], b[k]) for k in a), name

    class Bundle:  # what load_teacher reads from a DataBundle
        channels, num_classes = 1, 4

    cfg = RunConfig(source=moco_cfg())
    loaded = load_teacher(cfg, tmp_path / "teacher.pt", Bundle())
    assert isinstance(loaded, MoCoV2Module) and torch.equal(loaded.queue, module.queue)
    cfg.source.method = "simclr"
    with pytest.raises(CheckpointError, match="trained with mocov2 but source.method = simclr; pass --set "
                                              "source.method=mocov2"):
        load_teacher(cfg, tmp_path / "teacher.pt", Bundle())


def test_queue_of_another_size_is_a_clear_error():
    module = make_moco()
    with pytest.raises(CheckpointError, match="moco_queue_size"):
        module._set_queue(torch.zeros(5, 8), torch.zeros(1, dtype=torch.long))


# ----------------------------------------------------------------------------------------
# config
# ----------------------------------------------------------------------------------------


def test_config_dispatch_and_validation(repo_root):
    smoke = repo_root / "configs" / "smoke.yaml"
    cfg = load_config(smoke, ["source.method=mocov2"])
    assert cfg.source.temperature == 0.5 and cfg.source.moco_temperature == 0.2  # SimCLR default kept
    assert isinstance(build_ssl_module(cfg.source, cfg.data, 1), MoCoV2Module)
    assert isinstance(build_ssl_module(load_config(smoke).source, cfg.data, 1), SimCLRModule)
    for override, needle in [("source.moco_momentum=1.5", "must be >= 0 and <= 1"),
                             ("source.moco_queue_size=0", "must be >= 1"),
                             ("source.moco_queue_size=32", "smaller than data.batch_size = 64"),
                             ("source.moco_temperature=0", "must be > 0"),
                             ("source.method=byol", "use one of 'simclr', 'mocov2'")]:
        with pytest.raises(ConfigError, match=None) as e:
            load_config(smoke, ["source.method=mocov2", override])
        assert needle in str(e.value) and "\n" not in str(e.value)


# ----------------------------------------------------------------------------------------
# online linear classifier (lightly's, a pytorch_lightning module) inside a lightning Trainer
# ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("cls", [SimCLRModule, MoCoV2Module])
def test_online_classifier_trains_in_lightning_and_leaves_the_backbone_alone(cls, tmp_path):
    from lightning.pytorch.loggers import CSVLogger

    cfg = moco_cfg(method=cls.method, online_classifier=True)
    torch.manual_seed(0)
    with_probe = cls(cfg, data(), 1, num_classes=4)
    head_before = with_probe.online_classifier.classification_head.weight.clone()
    t = L.Trainer(max_steps=3, accelerator="cpu", enable_checkpointing=False, enable_progress_bar=False,
                  enable_model_summary=False, log_every_n_steps=1,
                  logger=CSVLogger(str(tmp_path), name="", version=""))
    t.fit(with_probe, DataLoader(Views(), batch_size=4, shuffle=True))
    assert not torch.equal(with_probe.online_classifier.classification_head.weight, head_before)
    header = (tmp_path / "metrics.csv").read_text().splitlines()[0]
    assert "train_online_cls_top1_step" in header and "train_online_cls_loss_step" in header
    # the classifier sees detached features: backbone gradients equal those without it
    torch.manual_seed(1)
    a = cls(cfg, data(), 1, num_classes=4)
    b = cls(moco_cfg(method=cls.method), data(), 1)
    b.load_state_dict({k: v for k, v in a.state_dict().items() if not k.startswith("online_classifier")})
    if cls is MoCoV2Module:
        b._set_queue(a.queue, a.queue_ptr)
    for m in (a, b):
        m.log_loss = m.log_dict = lambda *args, **kw: None
    batch = fixed_batch()
    for m in (a, b):
        torch.manual_seed(2)
        m.training_step(batch, 0).backward()
    for (name, pa), pb in zip(a.backbone.named_parameters(), b.backbone.parameters()):
        torch.testing.assert_close(pa.grad, pb.grad, rtol=0, atol=0, msg=name)
    assert a.online_classifier.classification_head.weight.grad is not None


def test_online_classifier_skips_unlabeled_images():
    module = MoCoV2Module(moco_cfg(online_classifier=True), data(), 1, num_classes=4)
    module.log_dict = lambda *a, **kw: None
    feats = torch.randn(4, module.spec.feat_dim)
    assert module.online_step(feats, torch.full((4,), -1), 0).item() == 0.0
    labels = torch.tensor([-1, 2, -1, 3])
    head = module.online_classifier.classification_head
    expected = F.cross_entropy(head(feats[[1, 3]]), labels[[1, 3]])
    assert module.online_step(feats, labels, 0).item() == pytest.approx(expected.item(), rel=1e-6)


# ----------------------------------------------------------------------------------------
# end to end
# ----------------------------------------------------------------------------------------


def test_smoke_run_with_mocov2_end_to_end(repo_root, tmp_path, capsys):
    from conftest import TINY_RUN

    from ssl_transfer.cli import main

    out = tmp_path / "run"
    tiny = [s for s in TINY_RUN if not s.startswith("controls.")]  # the control stage trains on with MoCo
    code = main(["run", str(repo_root / "configs" / "smoke.yaml"), "--set", *tiny, "source.method=mocov2",
                 "--out", str(out)])
    assert code == 0, capsys.readouterr().err
    results = json.loads((out / "results.json").read_text())
    assert results["config"]["source"]["method"] == "mocov2"
    for block in (results["teacher"], results["student"], results["controls"]["teacher_continued"]):
        assert 0 <= block["linear_acc"] <= 1 and 0 <= block["knn_acc"] <= 1
    _, teacher = load_model(out / "teacher.pt")
    _, continued = load_model(out / "teacher_continued.pt")
    assert teacher["method"] == continued["method"] == "mocov2"
    # the control kept training with MoCo: its queue moved on from the teacher's
    assert not torch.equal(teacher["moco_queue"], continued["moco_queue"])


# ----------------------------------------------------------------------------------------
# two processes (gloo): the queue receives the keys of every process, in rank order
# ----------------------------------------------------------------------------------------


def _ddp_worker(rank, port, results):
    import os

    import torch.distributed as dist

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=2)
    try:
        torch.set_num_threads(1)
        module = make_moco(moco_queue_size=16)
        keys = []
        original = module.keys
        module.keys = lambda x: keys.append(original(x)) or keys[-1]
        batch = fixed_batch(8)  # same 8 images on both ranks (same seed); each takes its half
        torch.manual_seed(1)
        local = {"views": [v[rank * 4:(rank + 1) * 4] for v in batch["views"]], "label": batch["label"][:4]}
        start = module.queue.clone()
        module.training_step(local, 0)
        results[rank] = {"start": start, "queue": module.queue.clone(), "ptr": int(module.queue_ptr),
                         "keys": F.normalize(keys[0], dim=1)}
        # shuffle-BN: seeded by (seed, step), not by the global RNG; the shuffle changes the keys
        x_k = local["views"][1]
        rng = torch.get_rng_state()
        k1, k2 = original(x_k), original(x_k)
        plain = module.key_head(module.key_backbone(x_k))
        results[rank] = {**results[rank], "repeatable": torch.equal(k1, k2),
                         "rng_untouched": torch.equal(rng, torch.get_rng_state()),
                         "shuffle_matters": not torch.allclose(k1, plain, atol=1e-4)}
    finally:
        dist.destroy_process_group()


def test_two_processes_enqueue_the_global_batch_of_keys():
    import socket

    import torch.multiprocessing as mp

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    results = mp.Manager().dict()
    mp.spawn(_ddp_worker, args=(port, results), nprocs=2, join=True)
    r0, r1 = results[0], results[1]
    assert torch.equal(r0["start"], r1["start"])  # same initial queue on every process
    expected = torch.cat([r0["keys"], r1["keys"], r0["start"][8:]])
    assert r0["ptr"] == r1["ptr"] == 8  # 2 processes x 4 keys
    assert torch.equal(r0["queue"], expected) and torch.equal(r1["queue"], expected)
    for r in (r0, r1):
        assert r["repeatable"] and r["rng_untouched"] and r["shuffle_matters"]


def test_one_process_keys_are_the_key_encoder_on_the_batch_and_draw_no_random_numbers():
    module = make_moco()
    x = fixed_batch(8)["views"][1]
    rng = torch.get_rng_state()
    keys = module.keys(x)
    assert torch.equal(rng, torch.get_rng_state())
    with torch.no_grad():
        assert torch.equal(keys, module.key_head(module.key_backbone(x)))
