"""Standard linear probe (Lightning), backbone loading, feature extraction and the kNN backends."""

import logging

import lightning as L
import numpy as np
import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from linear_eval import extract_features, knn_accuracy, knn_predictions, load_backbone, standard_linear_probe
from linear_eval.knn import default_chunk_size
from linear_eval.models import BackboneError
from linear_eval.standard import standard_transforms

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


class HeadSpy(L.Callback):
    """Copies of the probe head's state after each validation epoch, after each training epoch
    and when testing starts."""

    def __init__(self, events=None):
        self.val_states, self.test_states, self.last_state, self.events = [], [], None, events

    @staticmethod
    def _copy(module):
        return {k: v.detach().clone() for k, v in module.head.state_dict().items()}

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
    head.load_state_dict({k[2:]: v for k, v in spy.val_states[1].items()})  # "1.weight" -> "weight"
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
    from linear_eval.standard import LinearProbeModule

    m = LinearProbeModule(bn_backbone(), 32, K, lr=0.1, batch_size=64, feature_bn=True)
    bn = m.head[0]
    assert isinstance(bn, nn.BatchNorm1d) and not bn.affine and bn.eps == 1e-6
    assert [n for n, p in m.named_parameters() if p.requires_grad] == ["head.1.weight", "head.1.bias"]
    m.train()
    assert not m.backbone.training and m.head.training  # train() never reaches the backbone
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


# --------------------------------------------------------------------------- load_backbone
def test_load_backbone_from_ssl_transfer_checkpoint(tmp_path):
    from ssl_transfer.io import save_model
    from ssl_transfer.models import build_backbone

    torch.manual_seed(0)
    net, spec = build_backbone("resnet18", "cifar", 1)
    save_model(tmp_path / "student.pt", net, spec)
    loaded, info = load_backbone(tmp_path / "student.pt")
    assert info["source"] == "checkpoint" and info["feat_dim"] == 512 and info["spec"]["stem"] == "cifar"
    assert not loaded.training
    x = torch.randn(2, 1, 8, 8)
    torch.testing.assert_close(loaded(x), net.eval()(x))
    with pytest.raises(ValueError, match="drop the weights"):
        load_backbone(tmp_path / "student.pt", weights=tmp_path / "w.pth")
    from ssl_transfer.errors import CheckpointError

    with pytest.raises(CheckpointError, match="does not exist"):
        load_backbone(tmp_path / "missing" / "teacher.pt")


def test_load_backbone_torchvision_penultimate_features_and_weights(tmp_path):
    from torchvision.models import resnet18

    torch.manual_seed(1)
    ref = resnet18(weights=None).eval()
    torch.save(ref.state_dict(), tmp_path / "full.pth")
    x = torch.randn(2, 3, 16, 16)
    ref_feats = torch.flatten(ref.avgpool(ref.layer4(ref.layer3(ref.layer2(ref.layer1(
        ref.maxpool(ref.relu(ref.bn1(ref.conv1(x))))))))), 1)

    net, info = load_backbone("torchvision:resnet18", weights=tmp_path / "full.pth")
    assert isinstance(net.fc, nn.Identity) and info["feat_dim"] == 512 and info["removed_classifier"] == "fc"
    torch.testing.assert_close(net(x), ref_feats)
    # a headless state dict (no fc.*), wrapped and DDP-prefixed, loads the same weights
    headless = {f"module.{k}": v for k, v in ref.state_dict().items() if not k.startswith("fc.")}
    torch.save({"state_dict": headless}, tmp_path / "headless.pth")
    net2, _ = load_backbone("torchvision:resnet18", weights=tmp_path / "headless.pth")
    torch.testing.assert_close(net2(x), ref_feats)
    # without weights: random init, never a download, still penultimate features
    net3, _ = load_backbone("torchvision:resnet18")
    out3 = net3(x)
    assert out3.shape == (2, 512) and not torch.allclose(out3, ref_feats)


def test_load_backbone_other_torchvision_heads():
    net, info = load_backbone("torchvision:mobilenet_v3_small")
    assert info["removed_classifier"] == "classifier.3" and info["feat_dim"] == 1024
    assert net(torch.randn(1, 3, 64, 64)).shape == (1, 1024)


def test_load_backbone_errors(tmp_path):
    from torchvision.models import resnet18

    with pytest.raises(ValueError, match="unknown torchvision model 'resnet999'"):
        load_backbone("torchvision:resnet999")
    with pytest.raises(ValueError, match="unknown backbone 'resnet50'"):
        load_backbone("resnet50")
    with pytest.raises(ValueError, match="does not end in a linear"):
        load_backbone("torchvision:squeezenet1_1")
    sd = resnet18(weights=None).state_dict()
    bad = {k: v for k, v in sd.items() if k != "conv1.weight"}
    bad["extra.weight"] = torch.zeros(1)
    bad["bn1.weight"] = torch.zeros(3)
    torch.save(bad, tmp_path / "bad.pth")
    with pytest.raises(BackboneError) as e:
        load_backbone("torchvision:resnet18", weights=tmp_path / "bad.pth")
    msg = str(e.value)
    assert "\n" not in msg and "1 missing (conv1.weight)" in msg
    assert "1 unexpected (extra.weight)" in msg and "bn1.weight (3,) vs (64,)" in msg
    torch.save({"a": 1}, tmp_path / "notsd.pth")
    with pytest.raises(ValueError, match="not a state_dict"):
        load_backbone("torchvision:resnet18", weights=tmp_path / "notsd.pth")
    with pytest.raises(ValueError, match="does not exist"):
        load_backbone("torchvision:resnet18", weights=tmp_path / "nope.pth")


# --------------------------------------------------------------------------- extract_features
def test_extract_features_max_batches_and_mixed_modes_restored():
    net = nn.Sequential(nn.Linear(4, 8), nn.BatchNorm1d(8), nn.Dropout(0.5))
    net.train()
    net[1].eval()  # a mixed state (e.g. a frozen part) must come back exactly as it was
    loader = [(torch.randn(16, 4), torch.arange(16)) for _ in range(5)]
    seen = []
    net.register_forward_hook(lambda m, i, o: seen.append([c.training for c in m]))
    feats, labels = extract_features(net, loader, max_batches=2, dtype=torch.float64)
    assert feats.shape == (32, 8) and feats.dtype == torch.float64 and torch.equal(labels, torch.arange(16).repeat(2))
    assert seen == [[False] * 3] * 2  # eval mode (no dropout) during extraction
    assert [m.training for m in net] == [True, False, True] and net.training
    again, _ = extract_features(net, loader, max_batches=2, dtype=torch.float64)
    assert torch.equal(feats, again)  # deterministic
    with pytest.raises(ValueError, match="max_batches"):
        extract_features(net, loader, max_batches=0)


# --------------------------------------------------------------------------- kNN
def clustered(n, d, k, seed, spread):
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(k, d))
    y = rng.integers(0, k, n)
    return (centres[y] + spread * rng.normal(size=(n, d))).astype(np.float32), y


def reference_votes(bank, bank_y, queries, k, T, num_classes):
    """float64 brute force: predictions, relative margin between the two best class scores,
    and the similarity gap between the k-th and (k+1)-th neighbour (near-tie detectors)."""
    b = bank / np.linalg.norm(bank, axis=1, keepdims=True)
    q = queries / np.linalg.norm(queries, axis=1, keepdims=True)
    sim = q.astype(np.float64) @ b.astype(np.float64).T
    order = np.argsort(-sim, axis=1)
    votes = np.zeros((len(q), num_classes))
    for i in range(len(q)):
        for j in order[i, :k]:
            votes[i, bank_y[j]] += np.exp(sim[i, j] / T)
    top2 = np.sort(votes, axis=1)[:, -2:]
    srt = np.take_along_axis(sim, order, 1)
    gap = srt[:, k - 1] - srt[:, k] if k < sim.shape[1] else np.full(len(q), np.inf)
    return votes.argmax(1), (top2[:, 1] - top2[:, 0]) / top2[:, 1], gap


def assert_same_up_to_ties(pred, ref, margin, gap):
    differ = np.asarray(pred) != ref
    assert differ.mean() <= 0.02
    assert np.all((margin[differ] < 1e-4) | (gap[differ] < 1e-5)), "a non-tied prediction differs"


@pytest.mark.parametrize("k", [1, 20, 200])
def test_knn_torch_backend_matches_lightly_knn_predict(k):
    from lightly.utils.benchmarking import knn_predict

    x, y = clustered(750, 24, 10, seed=k, spread=1.5)
    bank, bank_y, q = x[:600], y[:600], x[600:]
    bank_t = torch.nn.functional.normalize(torch.tensor(bank), dim=1)
    lightly_pred = knn_predict(torch.nn.functional.normalize(torch.tensor(q), dim=1), bank_t.T,
                               torch.tensor(bank_y), 10, k, 0.1)[:, 0].numpy()
    ours = knn_predictions(bank, bank_y, q, k=k, temperature=0.1, num_classes=10, chunk_size=64)
    _, margin, gap = reference_votes(bank, bank_y, q, k, 0.1, 10)
    assert_same_up_to_ties(ours.numpy(), lightly_pred, margin, gap)
    assert (ours.numpy() == lightly_pred).mean() >= 0.98


@pytest.mark.parametrize("k,T", [(1, 0.1), (10, 0.07), (100, 0.5)])
def test_knn_faiss_backend_matches_torch_backend(k, T):
    pytest.importorskip("faiss")
    x, y = clustered(2300, 32, 10, seed=k, spread=2.0)
    bank, bank_y, q, q_y = x[:2000], y[:2000], x[2000:], y[2000:]
    torch_pred = knn_predictions(bank, bank_y, q, k=k, temperature=T, backend="torch")
    faiss_pred = knn_predictions(bank, bank_y, q, k=k, temperature=T, backend="faiss", chunk_size=128)
    ref, margin, gap = reference_votes(bank, bank_y, q, k, T, 10)
    assert_same_up_to_ties(torch_pred.numpy(), ref, margin, gap)
    assert_same_up_to_ties(faiss_pred.numpy(), ref, margin, gap)
    assert 0.3 < (ref == q_y).mean() < 1.0  # a non-trivial problem: the votes matter
    assert knn_accuracy(bank, bank_y, q, q_y, k, T, backend="faiss") == pytest.approx(
        knn_accuracy(bank, bank_y, q, q_y, k, T), abs=0.01)


def test_knn_rejects_unknown_backend_and_bad_chunk():
    x, y = clustered(20, 4, 2, seed=0, spread=1.0)
    with pytest.raises(ValueError, match="unknown kNN backend 'annoy'"):
        knn_accuracy(x, y, x, y, backend="annoy")
    with pytest.raises(ValueError, match="chunk_size"):
        knn_predictions(x, y, x, chunk_size=0)


def test_knn_torch_memory_is_bounded_by_chunk_times_bank():
    """No tensor created during the search is larger than chunk_size x n: no copy of the
    (n, d) bank (d > chunk here), no (chunk * k, classes) one-hot (k * classes > n here)."""
    from torch.utils._python_dispatch import TorchDispatchMode

    class Largest(TorchDispatchMode):
        def __init__(self):
            super().__init__()
            self.numel = 0

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            out = func(*args, **(kwargs or {}))
            flat = list(args) + list((kwargs or {}).values())
            inputs = {a.untyped_storage().data_ptr() for a in flat if isinstance(a, torch.Tensor)}
            for t in out if isinstance(out, (tuple, list)) else (out,):
                # new allocations only: views (detach, transpose) share an input's storage
                if isinstance(t, torch.Tensor) and t.untyped_storage().data_ptr() not in inputs:
                    self.numel = max(self.numel, t.untyped_storage().nbytes() // t.element_size())
            return out

    n, d, chunk, k, classes = 600, 64, 16, 50, 200
    bank = torch.randn(n, d)
    labels = torch.randint(0, classes, (n,))
    queries = torch.randn(100, d)
    with Largest() as spy:
        pred = knn_predictions(bank, labels, queries, k=k, num_classes=classes, chunk_size=chunk)
    assert pred.shape == (100,)
    assert 0 < spy.numel <= chunk * n
    # the default chunk keeps an ImageNet-sized similarity block within 2**28 floats (1 GiB)
    n_imagenet = 1_281_167
    assert 100 < default_chunk_size(n_imagenet) and default_chunk_size(n_imagenet) * n_imagenet <= 2 ** 28
    assert default_chunk_size(50_000) == 1024 and default_chunk_size(10 ** 10) == 1
