"""The smoke pipeline end to end: a well-formed results.json, report, plots, logs, checkpoints."""

import json

import pytest
import torch

from ssl_transfer.cli import main
from ssl_transfer.io import load_model


@pytest.fixture(scope="module")
def smoke_run(tmp_path_factory, repo_root):
    out = tmp_path_factory.mktemp("smoke") / "run"
    code = main(["run", str(repo_root / "configs" / "smoke.yaml"), "--out", str(out)])
    assert code == 0
    return out


def test_results_json_schema(smoke_run):
    r = json.loads((smoke_run / "results.json").read_text())
    assert {"teacher", "student", "controls", "config", "timings_s"} <= set(r)
    models = [r["teacher"], r["student"], r["controls"]["teacher_continued"]]
    for m in models:
        for key in ("linear_acc", "knn_acc", "val_linear_acc", "val_knn_acc"):
            assert 0.0 <= m[key] <= 1.0
        assert m["linear_acc"] > 0.3 and m["knn_acc"] > 0.3  # 10 classes: chance is 0.1
        assert m["knn"]["k"] == 20 and m["linear"]["C"] in (0.1, 1.0)
        assert m["linear"]["params"]["n_test"] == 300 and m["linear"]["params"]["n_val"] == 300
    assert r["config"]["transfer"]["loss"] == "relaxed_contrastive"
    assert r["data"]["sizes"] == {"train": 512, "eval_train": 600, "val": 300, "test": 300}
    for key in ("source", "teacher_continued", "transfer", "eval", "total"):
        assert r["timings_s"][key] > 0
    assert r["status"] == "completed"


def test_report_plots_logs_checkpoints(smoke_run):
    report = (smoke_run / "report.md").read_text()
    for row in ("| teacher |", "| teacher continued |", "| student |"):
        assert row in report
    for png in ("loss_curves.png", "accuracy.png"):
        assert (smoke_run / "plots" / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    for stage in ("source", "teacher_continued", "transfer"):
        assert (smoke_run / "logs" / stage / "metrics.csv").stat().st_size > 0
        assert (smoke_run / "checkpoints" / stage / "last.ckpt").is_file()


def test_saved_models_rebuild_and_differ(smoke_run):
    teacher, t_payload = load_model(smoke_run / "teacher.pt")
    student, s_payload = load_model(smoke_run / "student.pt")
    assert t_payload["spec"]["arch"] == "resnet18" and t_payload["spec"]["feat_dim"] == 512
    x = torch.randn(4, 1, 28, 28)
    teacher.eval(), student.eval()
    with torch.no_grad():
        assert teacher(x).shape == (4, 512)
        assert not torch.allclose(teacher(x), student(x))  # the student was trained


def test_second_run_refuses_then_overwrites(smoke_run, repo_root, capsys):
    cfg = str(repo_root / "configs" / "smoke.yaml")
    before = (smoke_run / "results.json").read_text()
    assert main(["run", cfg, "--out", str(smoke_run)]) == 2
    assert (smoke_run / "results.json").read_text() == before
