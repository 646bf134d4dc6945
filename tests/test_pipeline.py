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
        assert m["knn"]["k"] == 20 and m["linear"]["C"] in m["linear"]["Cs_searched"]
        assert min(m["linear"]["Cs_searched"]) < m["linear"]["C"] < max(m["linear"]["Cs_searched"])
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


def test_second_run_refuses_without_overwrite(smoke_run, repo_root, capsys):
    cfg = str(repo_root / "configs" / "smoke.yaml")
    before = (smoke_run / "results.json").read_text()
    assert main(["run", cfg, "--out", str(smoke_run)]) == 2
    assert (smoke_run / "results.json").read_text() == before


def test_eval_command_on_a_saved_student(smoke_run, repo_root, tmp_path, capsys):
    out = tmp_path / "eval.json"
    code = main(["eval", str(smoke_run / "student.pt"), "--config", str(repo_root / "configs" / "smoke.yaml"),
                 "--set", "eval.retrieval=true", "--out", str(out)])
    assert code == 0
    r = json.loads(out.read_text())
    run = json.loads((smoke_run / "results.json").read_text())
    # the same backbone on the same data gives the numbers of the run
    assert r["knn_acc"] == pytest.approx(run["student"]["knn_acc"], abs=1e-6)
    assert r["linear_acc"] == pytest.approx(run["student"]["linear_acc"], abs=0.02)
    for key in ("recall@1", "recall@2", "recall@4", "recall@8", "map@r"):
        assert 0 <= r["retrieval"][key] <= 1
    assert r["retrieval"]["recall@1"] <= r["retrieval"]["recall@8"]
    assert main(["eval", str(smoke_run / "student.pt"), "--config", str(repo_root / "configs" / "smoke.yaml"),
                 "--out", str(out)]) == 2  # never overwrites


def test_eval_command_rejects_missing_and_truncated_checkpoints(smoke_run, repo_root, tmp_path, capsys):
    cfg = str(repo_root / "configs" / "smoke.yaml")
    assert main(["eval", str(tmp_path / "none.pt"), "--config", cfg]) == 2
    assert "does not exist" in capsys.readouterr().err
    bad = tmp_path / "half.pt"
    bad.write_bytes((smoke_run / "student.pt").read_bytes()[:1000])
    assert main(["eval", str(bad), "--config", cfg]) == 2
    assert "truncated" in capsys.readouterr().err


def test_transfer_command_from_saved_teacher(smoke_run, repo_root, tmp_path):
    out = tmp_path / "t"
    code = main(["transfer", str(repo_root / "configs" / "smoke.yaml"), "--teacher", str(smoke_run / "teacher.pt"),
                 "--out", str(out), "--set", "controls.teacher_continued=false"])
    assert code == 0
    r = json.loads((out / "results.json").read_text())
    run = json.loads((smoke_run / "results.json").read_text())
    assert "source" not in r["timings_s"] and r["teacher_checkpoint"].endswith("teacher.pt")
    # same teacher, same seed: the same teacher numbers and the same student as the full run
    assert r["teacher"]["knn_acc"] == pytest.approx(run["teacher"]["knn_acc"], abs=1e-6)
    assert r["student"]["knn_acc"] == pytest.approx(run["student"]["knn_acc"], abs=1e-6)
