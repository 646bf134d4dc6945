"""Task classify, unit level: the combined loss, the labelled subset, the mixed batches (the
unlabelled images never reach the CE term), the CIFAR classifiers' parameter counts, the config."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from ssl_transfer.config import load_config
from ssl_transfer.data import DataBundle
from ssl_transfer.errors import ConfigError, DataError
from ssl_transfer.losses import KDLoss, PKTLoss, RelaxedContrastiveLoss
from ssl_transfer.models import build_backbone
from ssl_transfer.sampling import EpochBatchSampler
from ssl_transfer.stages.classifier import (
    Classifier,
    ClassifyModule,
    FrozenClassifierTeacher,
    linear_from_probe,
)
from ssl_transfer.stages.classify_data import MixedBatchSampler, check_pools, classify_loader, pools
from ssl_transfer.stages.source import transfer_data_seed

SMALL = ["data.train_subset=400", "data.val_size=100", "data.test_subset=100", "data.label_fraction=0.2",
         "data.num_workers=0", "classify.batch_size=16"]


@pytest.fixture(scope="module")
def cfg(repo_root):
    return load_config(repo_root / "configs" / "smoke_classify.yaml", SMALL)


@pytest.fixture(scope="module")
def bundle(cfg):
    return DataBundle.from_config(cfg.data, cfg.seed)


def tiny_classifier(classes=10, head="none", seed=0):
    torch.manual_seed(seed)
    backbone, spec = build_backbone("small_cnn", "cifar", 1)
    return Classifier(backbone, spec, classes, head, embed_dim=16)


def batch(n_lab=6, n_unl=4, seed=0):
    g = torch.Generator().manual_seed(seed)
    n = n_lab + n_unl
    labels = torch.cat([torch.randint(0, 10, (n_lab,), generator=g), torch.full((n_unl,), -1)])
    return {"image": torch.randn(n, 1, 12, 12, generator=g), "label": labels,
            "labelled": torch.arange(n) < n_lab, "index": torch.arange(n)}


@pytest.mark.parametrize("loss, args, weight", [("relaxed_contrastive", {"sigma": 3.0}, 0.7), ("pkt", {}, 300.0)])
def test_combined_loss_is_ce_plus_lambda_transfer_plus_kd_on_a_fixed_batch(cfg, loss, args, weight):
    student, t_net = tiny_classifier(head="linear", seed=0), tiny_classifier(seed=1)
    teacher = FrozenClassifierTeacher(t_net.backbone, t_net.spec.feat_dim, t_net.classifier)
    module = ClassifyModule(student, cfg.classify.optimizer, 10, 1.0, teacher, ce_weight=0.5, loss=loss,
                            loss_args=args, loss_weight=weight, kd_weight=0.9, kd_temperature=4.0)
    b = batch()
    student.eval()  # BatchNorm on running statistics: two forward passes give the same outputs
    terms = module.loss_terms(b)
    with torch.no_grad():
        f = student.backbone(b["image"])
        logits, emb = student.classifier(f), student.head(f)
        t_emb = t_net.backbone.eval()(b["image"])
        t_logits = t_net.classifier(t_emb)
    lab = b["labelled"]
    ce = F.cross_entropy(logits[lab], b["label"][lab])
    transfer = (RelaxedContrastiveLoss(**args) if loss != "pkt" else PKTLoss())(emb, t_emb)
    kd = KDLoss(4.0)(logits, t_logits)
    assert terms["ce"].item() == pytest.approx(ce.item(), rel=1e-5)
    assert terms["transfer"].item() == pytest.approx(transfer.item(), rel=1e-5)
    assert terms["kd"].item() == pytest.approx(kd.item(), rel=1e-5)
    assert terms["loss"].item() == pytest.approx((0.5 * ce + weight * transfer + 0.9 * kd).item(), rel=1e-5)
    terms["loss"].backward()  # gradients reach the student only
    assert student.backbone[0].weight.grad is not None
    assert all(p.grad is None and not p.requires_grad for p in teacher.parameters())


def test_without_teacher_terms_the_loss_is_the_cross_entropy(cfg):
    student = tiny_classifier().eval()
    module = ClassifyModule(student, cfg.classify.optimizer, 10, 1.0)
    b = batch(n_unl=0)
    terms = module.loss_terms(b)
    assert set(terms) == {"ce", "loss"}
    assert terms["loss"].item() == pytest.approx(F.cross_entropy(student(b["image"]), b["label"]).item(), rel=1e-6)


def test_the_unlabelled_rows_never_reach_the_cross_entropy(cfg, bundle, monkeypatch):
    """Through the real loader: mixed batches hold unlabelled images (label -1), and the rows the
    CE receives are exactly the labelled pool's images of the batch."""
    mixed = load_config(cfg_path(cfg), [*SMALL, "classify.unlabelled=true", "classify.unlabelled_ratio=2"])
    loader = classify_loader(mixed, bundle, transfer_data_seed(mixed), 16, unlabelled=True)
    lab_pool, unl_pool = pools(bundle)
    ds = loader.dataset.dataset
    seen = []
    original = F.cross_entropy

    def spy(logits, target, *a, **k):
        seen.append(target.clone())
        return original(logits, target, *a, **k)

    monkeypatch.setattr("ssl_transfer.stages.classifier.F.cross_entropy", spy)
    t_net = tiny_classifier(seed=1)
    module = ClassifyModule(tiny_classifier(), mixed.classify.optimizer, 16, 1.0,
                            FrozenClassifierTeacher(t_net.backbone, t_net.spec.feat_dim, t_net.classifier),
                            loss="relaxed_contrastive", loss_args={"sigma": 3.0}, loss_weight=1.0)
    for _, b in zip(range(3), loader):
        assert b["image"].shape[0] == 16 + 32 and int(b["labelled"].sum()) == 16
        pool = ds.pool[b["index"].numpy()]
        assert set(pool[b["labelled"].numpy()]) <= set(lab_pool)
        assert set(pool[~b["labelled"].numpy()]) <= set(unl_pool)
        assert (b["label"][~b["labelled"]] == -1).all()  # the true labels of unlabelled images stay hidden
        module.loss_terms(b)
        assert torch.equal(seen[-1], b["label"][b["labelled"]]) and (seen[-1] >= 0).all()


def cfg_path(cfg):
    from pathlib import Path

    return Path(__file__).resolve().parents[1] / "configs" / "smoke_classify.yaml"


def test_label_subset_is_stratified_and_identical_for_a_seed(cfg, bundle):
    lab, unl = pools(bundle)
    labels = bundle.raw.labels("train")
    train_labels = labels[bundle.train_idx]
    _, per_class_all = np.unique(train_labels, return_counts=True)
    _, per_class = np.unique(labels[lab], return_counts=True)
    # 0.2 of each class, rounded half up (ssl_transfer.data.labels)
    assert per_class.tolist() == [int(np.floor(0.2 * n + 0.5)) for n in per_class_all]
    assert len(np.intersect1d(lab, unl)) == 0 and len(lab) + len(unl) == len(bundle.train_idx)
    again = DataBundle.from_config(cfg.data, cfg.seed)
    assert np.array_equal(pools(again)[0], lab) and np.array_equal(pools(again)[1], unl)
    other = load_config(cfg_path(cfg), [*SMALL, "data.split_seed=5"])
    assert not np.array_equal(pools(DataBundle.from_config(other.data, other.seed))[0], lab)


def test_mixed_batches_are_a_pure_function_of_the_step_and_resume_mid_epoch():
    s = MixedBatchSampler(n_labelled=40, n_unlabelled=25, seed=3, labelled_batch=8, unlabelled_batch=12)
    first = [list(b) for e in range(3) for b in (s.set_epoch(e), list(s))[1]]
    assert len(first) == 15 and all(len(b) == 20 for b in first)
    n = 65
    unl = [[k % n - 40 for k in b[8:]] for b in first]
    assert all(0 <= u < 25 for b in unl for u in b)
    # the unlabelled stream walks through whole permutations: every image once per 25 draws
    stream = [u for b in unl for u in b]
    assert sorted(stream[:25]) == list(range(25)) and sorted(stream[25:50]) == list(range(25))
    # the labelled part equals the plain EpochBatchSampler's batches (same keys decode to the same
    # (epoch, image), hence the same augmentations, with or without unlabelled images)
    plain = EpochBatchSampler(40, 3, 8)
    for e in range(3):
        for k, b in enumerate(plain.batches(e)):
            assert [key - e * n for key in first[5 * e + k][:8]] == b
    resumed = MixedBatchSampler(40, 25, 3, 8, 12)
    resumed.position = lambda: (1, 2)  # a run restored at epoch 1 after 2 of its 5 steps
    assert [list(b) for b in resumed] == first[7:10]


def test_probe_folded_into_one_linear_layer_equals_the_standardised_probe():
    g = torch.Generator().manual_seed(0)
    x, W, b = torch.randn(20, 6, generator=g) * 3 + 1, torch.randn(6, 4, generator=g), torch.randn(4, generator=g)
    mean, std = x.mean(0), x.std(0)
    layer = linear_from_probe(W, b, mean, std)
    assert torch.allclose(layer(x), ((x - mean) / std) @ W + b, atol=1e-5)


#: Published CIFAR-100 parameter counts (CRD, Tian et al. 2020), 100-way classifier included.
PUBLISHED = {"resnet8x4": 1.23e6, "resnet32x4": 7.43e6, "wrn_16_2": 0.70e6, "wrn_40_2": 2.26e6}


@pytest.mark.parametrize("arch", list(PUBLISHED))
def test_cifar_classifiers_have_the_published_parameter_counts(arch):
    backbone, spec = build_backbone(arch, "cifar", 3)
    net = Classifier(backbone, spec, 100)
    assert sum(p.numel() for p in net.parameters()) == pytest.approx(PUBLISHED[arch], rel=0.02)
    assert net(torch.randn(2, 3, 32, 32)).shape == (2, 100)


def test_config_errors_are_one_line_with_the_fix(repo_root):
    smoke = repo_root / "configs" / "smoke_classify.yaml"
    cases = {
        "classify.unlabelled needs data.label_fraction": ["data.label_fraction=null"],
        "source.method = supervised (a cross-entropy teacher) belongs to task classify": [
            "task=metric", "source.method=supervised", "classify.unlabelled=false"],
        "source.method = proxy_anchor belongs to task metric": ["source.method=proxy_anchor"],
        "classify.teacher_output = projection needs an SSL teacher": [
            "source.method=supervised", "classify.teacher_output=projection"],
        "classify.student_init = teacher needs": ["classify.student_init=teacher", "classify.student_backbone=small_cnn"],
        "classify.loss_args.sigmaa is not an option": ["classify.loss_args.sigmaa=3"],
        "classify.loss_weight = -1.0 must be >= 0": ["classify.loss_weight=-1"],
    }
    for message, overrides in cases.items():
        with pytest.raises(ConfigError) as e:
            load_config(smoke, overrides)
        assert message in str(e.value) and "\n" not in str(e.value), str(e.value)


def test_a_batch_larger_than_the_labelled_images_is_refused_before_training(cfg, bundle):
    big = load_config(cfg_path(cfg), [*SMALL, "classify.batch_size=200"])
    with pytest.raises(DataError, match=r"classify.batch_size = 200 exceeds the 82 labelled training images"):
        check_pools(big, bundle)


def test_frozen_teacher_stays_in_eval_mode():
    t = tiny_classifier(seed=1)
    frozen = FrozenClassifierTeacher(t.backbone, t.spec.feat_dim, t.classifier)
    frozen.train()
    assert not any(m.training for m in frozen.modules())
    emb, logits = frozen(torch.randn(3, 1, 12, 12))
    assert emb.shape == (3, 256) and logits.shape == (3, 10) and not emb.requires_grad
    assert isinstance(frozen.classifier, nn.Linear)
