"""Standard linear probe (lightly's LinearClassifier on pytorch_lightning): frozen backbone,
selection on val, test read once after fit, determinism, transforms."""

import logging

import numpy as np
import pytest
import pytorch_lightning as pl
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from ssl_transfer.evaluation.standard import StandardProbe, standard_linear_probe, standard_transforms

logging.getLogger("pytorch_lightning").setLevel(logging.ERROR)
logging.getLogger("lightning.pytorch").setLevel(logging.ERROR)
CPU = {"accelerator": "cpu", "devices": 1}
K = 12  # classes: > 10, so top-5 is reported


# --------------------------------------------------------------------------- helpers
def blobs(n, seed, k=K, d=16, spread=0.3):
    """Well separated Gaussian clusters; the centres are shared by all splits."""
    g = torch.Generator().manual_seed(seed)
    centres = torch.randn(k, d, generator=torch.Generator().manual_seed(123)) * 2
    y = torch.randint(0, k, (n,), generator=g)
    return centres[y] + spread * torch.randn(n, d, generator=g), y


def bn_backbone():
    """Linear + BatchNorm1d with non-trivial running statistics: any train-mode forward pass
    would move them (and num_batches_tracked)."""
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(16, 32), nn.BatchNorm1d(32))
    with torch.no_grad():
        net[1].running_mean.normal_()
        net[1].running_var.uniform_(0.5, 2.0)
        net[1].num_batches_tracked.fill_(7)
    return net


class Recorded:
    """Iterable loader that appends ``name`` to ``events`` for every batch it yields."""

    def __init__(self, loader, name, events):
        self.loader, self.name, self.events = loader, name, events
        self.batch_size = loader.batch_size
        self.dataset = loader.dataset

    def __iter__(self):
        for batch in self.loader:
            self.events.append(self.name)
            yield batch

    def __len__(self):
        return len(self.loader)


class HeadSpy(pl.Callback):
    """Copies of the probe head's state after each validation epoch, after each training epoch
    and when testing starts."""

    def __init__(self, events=None):
        self.val_states, self.test_states, self.last_state, self.events = [], [], None, events

    @staticmethod
    def _copy(module):
        return {k: v.detach().clone() for k, v in module.classification_head.state_dict().items()}

    def on_validation_epoch_end(self, trainer, module):
        self.val_states.append(self._copy(module))

    def on_train_epoch_end(self, trainer, module):
        self.last_state = self._copy(module)

    def on_fit_end(self, trainer, module):
        if self.events is not None:
            self.events.append("fit_end")

    def on_test_start(self, trainer, module):
        self.test_states.append(self._copy(module))


def same_state(a, b):
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def loaders(seed=1, n_train=512, test_labels=None):
    tr = DataLoader(TensorDataset(*blobs(n_train, seed)), batch_size=64, shuffle=True)
    va = DataLoader(TensorDataset(*blobs(256, seed + 1)), batch_size=128)
    te_x, te_y = blobs(256, seed + 2)
    te = DataLoader(TensorDataset(te_x, te_y if test_labels is None else test_labels(te_y)), batch_size=128)
    return tr, va, te


# --------------------------------------------------------------------------- standard probe
def test_standard_probe_learns_with_frozen_eval_mode_backbone_and_reads_test_last():
    net = bn_backbone()
    net.train()  # the probe must switch it to eval itself, and put train mode back afterwards
    before = {k: v.clone() for k, v in net.state_dict().items()}
    modes_seen = []
    net.register_forward_hook(lambda m, i, o: modes_seen.append((m.training, m[1].training)))
    events = []
    tr, va, te = loaders()
    spy = HeadSpy(events)
    r = standard_linear_probe(net, Recorded(tr, "train", events), Recorded(va, "val", events),
                              Recorded(te, "test", events), K, 32, epochs=4, lr=1.0,
                              trainer_kwargs={**CPU, "callbacks": [spy]})
    # it learned a separable 12-class problem from a random linear layer (chance = 1/12)
    assert r["test_acc"] >= 0.95 and r["val_acc_best"] >= 0.95 and r["test_top5"] >= r["test_acc"]
    assert r["train_loss"][-1] < r["train_loss"][0]
    assert len(r["val_curve"]) == 4 and r["chosen_epoch"] == int(np.argmax(r["val_curve"]))
    p = r["params"]
    assert p["lr"] == pytest.approx(1.0 * 64 / 256) and p["momentum"] == 0.9 and p["epochs"] == 4
    assert p["total_steps"] == 4 * 8 and p["n_train"] == 512 and p["n_test"] == 256 and p["select"] == "val"
    # frozen: in eval mode at every forward pass, statistics and weights untouched, no gradient
    assert modes_seen and not any(a or b for a, b in modes_seen)
    for k, v in net.state_dict().items():
        assert torch.equal(v, before[k]), k
    assert all(q.grad is None and q.requires_grad for q in net.parameters())
    assert net.training and net[1].training  # caller's modes restored
    # test split: its 2 batches are read once, after fit ended; train / val batches before that
    assert events.count("test") == 2 and events[-3:] == ["fit_end", "test", "test"]
    assert events.count("train") == 4 * 8 and events.count("val") == 4 * 2
    assert len(spy.test_states) == 1


def test_standard_probe_tests_the_head_of_the_best_val_epoch():
    class ValRightOnlyAtEpoch1:
        """Val batches with true labels on the second pass only, wrong labels otherwise, so
        val top-1 peaks at epoch 1 while training goes on."""

        def __init__(self, loader):
            self.loader, self.batches = loader, 0

        def __len__(self):
            return len(self.loader)

        def __iter__(self):
            for x, y in self.loader:
                epoch = self.batches // len(self.loader)  # counts the batches actually read
                self.batches += 1
                yield x, (y + (0 if epoch == 1 else 1)) % K

    tr, va, te = loaders()
    spy = HeadSpy()
    r = standard_linear_probe(bn_backbone(), tr, ValRightOnlyAtEpoch1(va), te, K, 32, epochs=4, lr=1.0,
                              trainer_kwargs={**CPU, "callbacks": [spy]})
    assert r["chosen_epoch"] == 1 and r["val_acc_best"] == r["val_curve"][1] >= 0.95
    assert max(r["val_curve"][:1] + r["val_curve"][2:]) < 0.5
    assert len(spy.test_states) == 1
    assert same_state(spy.test_states[0], spy.val_states[1])  # the epoch-1 head was tested ...
    assert not same_state(spy.test_states[0], spy.last_state)  # ... not the final one
    # test_acc is that head's accuracy, recomputed by hand
    head = nn.Linear(32, K)
    head.load_state_dict(spy.val_states[1])
    x, y = te.dataset.tensors
    with torch.no_grad():
        manual = float((head(bn_backbone().eval()(x)).argmax(1) == y).float().mean())
    assert r["test_acc"] == pytest.approx(manual, abs=1e-6) and r["test_acc"] >= 0.95


def test_standard_probe_selection_ignores_test_labels_and_is_deterministic():
    r1 = standard_linear_probe(bn_backbone(), *loaders(), K, 32, epochs=3, lr=0.05, trainer_kwargs=CPU)
    r2 = standard_linear_probe(bn_backbone(), *loaders(test_labels=lambda y: (y + 1) % K), K, 32,
                               epochs=3, lr=0.05, trainer_kwargs=CPU)
    assert r1["val_curve"] == r2["val_curve"] and r1["train_loss"] == r2["train_loss"]
    assert r1["chosen_epoch"] == r2["chosen_epoch"]
    assert r1["test_acc"] >= 0.9 and r2["test_acc"] <= 0.1  # only the reported test number moved


def test_standard_probe_select_last_without_val_and_feature_bn():
    tr, _, te = loaders()
    spy = HeadSpy()
    r = standard_linear_probe(bn_backbone(), tr, None, te, K, 32, epochs=3, lr=1.0, select="last",
                              feature_bn=True, trainer_kwargs={**CPU, "callbacks": [spy]})
    assert r["chosen_epoch"] == 2 and r["val_curve"] == [] and r["val_acc_best"] is None
    assert len(spy.test_states) == 1 and same_state(spy.test_states[0], spy.last_state)
    assert r["test_acc"] >= 0.95 and r["params"]["feature_bn"].startswith("BatchNorm1d(affine=False")


def test_standard_probe_feature_bn_is_non_affine_and_learns_statistics():
    from lightly.utils.benchmarking import LinearClassifier

    m = StandardProbe(bn_backbone(), 64, 0.1, 32, K, feature_bn=True)
    assert isinstance(m, LinearClassifier)
    bn = m.classification_head[0]
    assert isinstance(bn, nn.BatchNorm1d) and not bn.affine and bn.eps == 1e-6
    assert [n for n, p in m.named_parameters() if p.requires_grad] == ["classification_head.1.weight",
                                                                       "classification_head.1.bias"]
    m.train()
    assert not m.model.training and m.classification_head.training  # train() never reaches the backbone
    m(torch.randn(8, 16))
    assert not torch.equal(bn.running_mean, torch.zeros(32))  # the probe's own BN does update


def test_standard_probe_rejects_bad_input():
    tr, va, te = loaders()
    with pytest.raises(ValueError, match="select"):
        standard_linear_probe(bn_backbone(), tr, va, te, K, 32, select="test")
    with pytest.raises(ValueError, match="val_loader"):
        standard_linear_probe(bn_backbone(), tr, None, te, K, 32)
    with pytest.raises(ValueError, match="epochs="):
        standard_linear_probe(bn_backbone(), tr, va, te, K, 32, trainer_kwargs={"max_epochs": 3})
    with pytest.raises(ValueError, match="batch_size"):
        standard_linear_probe(bn_backbone(), iter(tr), va, te, K, 32)
    net = bn_backbone()
    with pytest.raises(ValueError, match="feat_dim=64"):
        standard_linear_probe(net, tr, va, te, K, 64, epochs=1, trainer_kwargs=CPU)
    assert all(p.requires_grad for p in net.parameters())  # restored on error too


def test_standard_transforms():
    from PIL import Image
    from torchvision import transforms as T

    img = Image.fromarray(np.random.default_rng(0).integers(0, 255, (200, 300, 3), dtype=np.uint8))
    train, evaluation = standard_transforms(224)
    crop = next(t for t in train.transforms if isinstance(t, T.RandomResizedCrop))
    assert crop.scale == (0.08, 1.0) and any(isinstance(t, T.RandomHorizontalFlip) for t in train.transforms)
    assert train(img).shape == evaluation(img).shape == (3, 224, 224)
    assert torch.equal(evaluation(img), evaluation(img))  # deterministic eval transform
    torch.manual_seed(0)
    assert not torch.equal(train(img), train(img))  # augmented training views
    resize = next(t for t in evaluation.transforms if isinstance(t, T.Resize))
    assert resize.size == 256 and standard_transforms(32)[1].transforms[0].size == 32


def test_standard_probe_uses_lightlys_schedule_and_counts_accumulation_in_lr():
    from lightly.utils.scheduler import CosineWarmupScheduler

    class OptimizerSpy(pl.Callback):
        def on_train_start(self, trainer, module):
            self.group = dict(trainer.optimizers[0].param_groups[0])
            self.scheduler = trainer.lr_scheduler_configs[0]

    spy = OptimizerSpy()
    tr, va, te = loaders()
    r = standard_linear_probe(bn_backbone(), tr, va, None, K, 32, epochs=2, lr=0.4, momentum=0.8,
                              weight_decay=1e-4, trainer_kwargs={**CPU, "callbacks": [spy],
                                                                 "accumulate_grad_batches": 2})
    assert isinstance(spy.scheduler.scheduler, CosineWarmupScheduler) and spy.scheduler.interval == "step"
    assert spy.group["lr"] == pytest.approx(0.4 * 64 * 2 / 256) == r["params"]["lr"]
    assert spy.group["momentum"] == 0.8 and spy.group["weight_decay"] == 1e-4
    assert r["params"]["global_batch_size"] == 128 and r["params"]["total_steps"] == 2 * 4
    assert r["test_acc"] is None and r["test_top5"] is None and r["params"]["n_test"] is None


def test_eval_protocol_standard_is_reachable_from_the_config_and_reads_test_only_when_asked():
    """``eval.protocol: standard`` runs this probe inside the runner's evaluation: the labelled
    eval_train images with crops and flips, the epoch chosen on val, test once (or never)."""
    from ssl_transfer.config import config_from_dict
    from ssl_transfer.data import DataBundle
    from ssl_transfer.evaluation.frozen import evaluate
    from ssl_transfer.models import build_backbone

    cfg = config_from_dict({"data": {"name": "digits", "val_size": 200, "batch_size": 64, "num_workers": 0},
                            "eval": {"protocol": "standard", "standard_epochs": 2, "knn_k": 5, "device": "cpu"},
                            "trainer": {"accelerator": "cpu"}})
    bundle = DataBundle.from_config(cfg.data, 0)
    torch.manual_seed(0)
    net, _ = build_backbone("resnet18", "imagenet", 1)
    res = evaluate(net, bundle, cfg)
    assert res["linear"]["protocol"] == "standard" and len(res["linear"]["val_curve"]) == 2
    assert 0 <= res["linear_acc"] <= 1 and res["val_linear_acc"] == max(res["linear"]["val_curve"])
    choosing = evaluate(net, bundle, cfg, test=False)
    assert choosing["linear_acc"] is None and choosing["knn_acc"] is None
    assert choosing["val_linear_acc"] == res["val_linear_acc"]  # seeded: the same probe
