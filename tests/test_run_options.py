"""Run options on one smoke run: the kNN monitor (eval.knn_monitor_every: logged values equal the
final evaluation's, training unchanged) and the evaluation of a dimension-reduction student's
embedding (eval.student_embedding, ssl-transfer eval --embedding)."""

import json

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from linear_eval import extract_features, knn_accuracy
from ssl_transfer.cli import main
from ssl_transfer.config import load_config
from ssl_transfer.errors import ConfigError
from ssl_transfer.io import load_model
from ssl_transfer.monitor import KNNMonitor, read_monitor


@pytest.fixture(scope="module")
def monitored_run(tmp_path_factory, repo_root):
    out = tmp_path_factory.mktemp("monitor") / "run"
    # smoke: 512 training images, batch 64 -> 8 steps per epoch; every 0.5 epoch = every 4 steps;
    # a 16-d student embedding (dimension reduction 512 -> 16)
    code = main(["run", str(repo_root / "configs" / "smoke.yaml"), "--out", str(out),
                 "--set", "eval.knn_monitor_every=0.5", "transfer.embed_dim=16"])
    assert code == 0
    return out


def test_monitor_rows_and_final_values_equal_the_evaluation(monitored_run):
    r = json.loads((monitored_run / "results.json").read_text())
    mon = r["monitor"]
    assert mon["metric"] == "val_knn_acc" and mon["every_epochs"] == 0.5
    mon = mon["stages"]
    assert set(mon) == {"source", "teacher_continued", "transfer"}
    for stage in ("source", "teacher_continued", "transfer"):
        assert [row["step"] for row in mon[stage]] == [4, 8], stage
        assert all(0.1 < row["val_knn_acc"] <= 1.0 for row in mon[stage])
        assert mon[stage] == read_monitor(monitored_run / "logs" / stage / "metrics.csv")
    # the last row is the final model: the same bank, split, k and T as the final evaluation
    assert mon["source"][-1]["val_knn_acc"] == pytest.approx(r["teacher"]["val_knn_acc"], abs=1e-12)
    assert mon["teacher_continued"][-1]["val_knn_acc"] == pytest.approx(
        r["controls"]["teacher_continued"]["val_knn_acc"], abs=1e-12)
    assert mon["transfer"][-1]["val_knn_acc"] == pytest.approx(r["student"]["val_knn_acc"], abs=1e-12)
    assert "kNN monitor" in (monitored_run / "report.md").read_text()
    assert (monitored_run / "plots" / "knn_monitor.png").read_bytes()[:4] == b"\x89PNG"


def test_monitor_does_not_change_training(monitored_run, repo_root, tmp_path):
    """The source stage alone without the monitor ends with bit-identical teacher weights."""
    out = tmp_path / "plain"
    assert main(["pretrain", str(repo_root / "configs" / "smoke.yaml"), "--out", str(out)]) == 0
    plain, _ = load_model(out / "teacher.pt")
    monitored, _ = load_model(monitored_run / "teacher.pt")
    a, b = plain.state_dict(), monitored.state_dict()
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key
    assert "monitor" not in json.loads((out / "results.json").read_text())


def _toy():
    torch.manual_seed(0)
    x = torch.randn(120, 6)
    y = (x[:, 0] > 0).long() + 2 * (x[:, 1] > 0).long()
    bank = DataLoader(TensorDataset(x[:80], y[:80]), batch_size=32)
    val = DataLoader(TensorDataset(x[80:], y[80:]), batch_size=32)
    net = nn.Sequential(nn.Linear(6, 8), nn.BatchNorm1d(8), nn.ReLU(), nn.Linear(8, 5))
    return net, bank, val


def test_accuracy_is_knn_of_frozen_features_and_changes_no_state():
    net, bank, val = _toy()
    holder = nn.Module()
    holder.backbone = net
    net.train()
    before = {k: v.clone() for k, v in net.state_dict().items()}
    rng = torch.get_rng_state()
    mon = KNNMonitor(bank, val, every_steps=1, k=7, temperature=0.2)
    acc = mon.accuracy(holder)
    assert torch.equal(torch.get_rng_state(), rng)  # loaders draw seeds from it: restored
    bx, by = extract_features(net, bank)
    vx, vy = extract_features(net, val)
    assert acc == pytest.approx(knn_accuracy(bx, by, vx, vy, k=7, temperature=0.2), abs=1e-12)
    assert net.training  # training mode restored
    assert all(torch.equal(before[k], v) for k, v in net.state_dict().items())  # BN statistics untouched


def test_accuracy_of_a_float64_model_equals_float32():
    net, bank, val = _toy()
    holder = nn.Module()
    holder.backbone = net
    a32 = KNNMonitor(bank, val, every_steps=1, k=5).accuracy(holder)
    holder.backbone = net.double()
    assert KNNMonitor(bank, val, every_steps=1, k=5).accuracy(holder) == pytest.approx(a32, abs=0.05)


def test_steps_and_bad_settings(repo_root):
    from ssl_transfer.stages.base import steps_for  # what the pipeline gives the monitor

    assert steps_for(0.5, 8) == 4 and steps_for(0.01, 8) == 1 and steps_for(2, 8) == 16
    with pytest.raises(ValueError, match="every_steps"):
        KNNMonitor([], [], every_steps=0)
    with pytest.raises(ConfigError, match="eval.knn_monitor_every"):
        load_config(repo_root / "configs" / "smoke.yaml", ["eval.knn_monitor_every=-1"])


def test_dimension_reduction_student_embedding_is_evaluated(monitored_run, repo_root, tmp_path, capsys):
    r = json.loads((monitored_run / "results.json").read_text())
    emb = r["student_embedding"]
    assert emb["feat_dim"] == 16 and r["student"]["feat_dim"] == 512
    assert emb["features"] == "embedding (backbone + head)"
    assert 0.3 < emb["linear_acc"] <= 1.0 and 0.3 < emb["knn_acc"] <= 1.0
    assert emb["linear_acc"] != r["student"]["linear_acc"] or emb["knn_acc"] != r["student"]["knn_acc"]
    assert "| student embedding |" in (monitored_run / "report.md").read_text()
    # the same numbers through the eval command, which rebuilds backbone + head from student.pt
    out = tmp_path / "emb.json"
    assert main(["eval", str(monitored_run / "student.pt"), "--config", str(repo_root / "configs" / "smoke.yaml"),
                 "--embedding", "--out", str(out)]) == 0
    again = json.loads(out.read_text())
    assert again["feat_dim"] == 16
    for key in ("linear_acc", "knn_acc", "val_linear_acc", "val_knn_acc"):
        assert again[key] == pytest.approx(emb[key], abs=1e-9), key
    capsys.readouterr()
    # a teacher has no head; a head of another kind is named
    assert main(["eval", str(monitored_run / "teacher.pt"), "--config", str(repo_root / "configs" / "smoke.yaml"),
                 "--embedding"]) == 2
    assert "holds no student embedding head" in capsys.readouterr().err
    # student.pt records its head's kind; a file without the record takes transfer.student_head
    payload = torch.load(monitored_run / "student.pt", weights_only=True)
    assert payload.pop("head_kind") == "linear"
    torch.save(payload, tmp_path / "old_student.pt")
    assert main(["eval", str(tmp_path / "old_student.pt"), "--config", str(repo_root / "configs" / "smoke.yaml"),
                 "--embedding", "--set", "transfer.student_head=mlp"]) == 2
    assert "is not a mlp head to 16 dims" in capsys.readouterr().err


def test_which_students_get_their_embedding_evaluated(repo_root):
    from ssl_transfer.evaluation.frozen import evaluates_embedding
    from ssl_transfer.models import build_backbone
    from ssl_transfer.stages.transfer import build_student

    teacher, spec = build_backbone("small_cnn", "small", 1)

    def decide(*overrides):
        cfg = load_config(repo_root / "configs" / "smoke.yaml", ["transfer.student_init=scratch", *overrides])
        return evaluates_embedding(cfg, build_student(cfg.transfer, teacher, spec, 1))

    feat = spec.feat_dim
    assert decide("transfer.student_backbone=small_cnn", "transfer.embed_dim=16")  # auto: 16 != feat_dim
    assert not decide("transfer.student_backbone=small_cnn", f"transfer.embed_dim={feat}")  # auto: same size
    assert decide("transfer.student_backbone=small_cnn", f"transfer.embed_dim={feat}", "eval.student_embedding=always")
    assert not decide("transfer.student_backbone=small_cnn", "transfer.embed_dim=16", "eval.student_embedding=never")
    assert not decide("transfer.student_backbone=small_cnn", "transfer.student_head=none",
                      "eval.student_embedding=always")
