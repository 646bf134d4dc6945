"""Task classify end to end through the CLI on the smoke subset: outputs, kill and --resume with
equal numbers, the supervised teacher, external teacher weights (with their ``fc``)."""

import csv
import json
import sys

import pytest
import torch
from conftest import reference_beside_killed

from ssl_transfer.cli import main

# one torch thread: the reference and the run to kill run side by side on the 2 cores, and the
# resumed run needs the reference's thread count to reproduce its numbers
SETTINGS = ["trainer.checkpoint_every_n_steps=3", "trainer.log_every_n_steps=1", "source.epochs=0.5",
            "trainer.num_threads=1"]
MODELS = {"teacher": ("teacher",), "student": ("student",), "ce_only": ("controls", "ce_only"),
          "teacher_finetuned": ("controls", "teacher_finetuned")}


def cmd(repo_root, out, *extra):
    return [sys.executable, "-m", "ssl_transfer", "classify", str(repo_root / "configs" / "smoke_classify.yaml"),
            "--out", str(out), "--set", *SETTINGS, *extra]


def block(results, model):
    for part in MODELS[model]:
        results = results[part]
    return results


@pytest.fixture(scope="module")
def runs(repo_root, tmp_path_factory):
    """The uninterrupted reference run and, side by side with it, a run SIGKILLed once its transfer
    stage saved the checkpoint of step 3 (4 steps per epoch: mid-epoch)."""
    base = tmp_path_factory.mktemp("cls")
    ref_out, out = base / "ref", base / "killed"
    reference_beside_killed(cmd(repo_root, ref_out), ref_out, cmd(repo_root, out), out, "transfer", step=3)
    return ref_out, out


@pytest.fixture(scope="module")
def reference(runs):
    return runs[0]


def test_classify_runs_end_to_end_through_the_cli(reference):
    results = json.loads((reference / "results.json").read_text())
    assert results["status"] == "completed" and results["config"]["task"] == "classify"
    for model in MODELS:
        b = block(results, model)
        assert 0 <= b["top1_acc"] <= 1 and 0 <= b["val_top1_acc"] <= 1, model
    assert results["teacher"]["classifier"] == "probe" and results["teacher"]["probe"]["n_labelled"] == 129
    assert set(results["timings_s"]) >= {"source", "ce_only", "teacher_finetuned", "transfer", "eval", "total"}
    report = (reference / "report.md").read_text()
    assert "classification report" in report and "CE only (same student)" in report and "teacher fine-tuned" in report
    for rel in ("teacher.pt", "student.pt", "ce_only.pt", "teacher_finetuned.pt", "plots/accuracy.png",
                "plots/loss_curves.png", "logs/transfer/metrics.csv", "checkpoints/transfer/last.ckpt"):
        assert (reference / rel).is_file(), rel
    with open(reference / "logs" / "transfer" / "metrics.csv") as f:
        rows = [r for r in csv.DictReader(f) if r.get("train_loss_step")]
    assert [int(r["step"]) for r in rows] == list(range(8))  # 2 epochs of 128 labelled images / 32
    assert all(float(r["transfer_loss"]) > 0 and float(r["kd_loss"]) >= 0 for r in rows)


def test_killed_mid_stage_then_resumed_gives_the_same_numbers(repo_root, runs, reference):
    out = runs[1]
    state = json.loads((out / "run.json").read_text())
    assert "transfer" not in state["finished"] and {"source", "ce_only", "teacher_finetuned"} <= set(state["finished"])
    assert main(["classify", str(repo_root / "configs" / "smoke_classify.yaml"), "--out", str(out), "--resume",
                 "--set", *SETTINGS]) == 0
    resumed = json.loads((out / "results.json").read_text())
    ref = json.loads((reference / "results.json").read_text())
    assert resumed["resumed"] is True
    for model in MODELS:
        for key in ("top1_acc", "val_top1_acc"):
            assert block(resumed, model)[key] == pytest.approx(block(ref, model)[key], abs=1e-6), (model, key)
    a, _ = torch.load(out / "student.pt", weights_only=True), None
    b = torch.load(reference / "student.pt", weights_only=True)
    for key, value in b["backbone"].items():
        assert torch.allclose(a["backbone"][key].double(), value.double(), atol=1e-6), key


TINY = ["classify.unlabelled=false", "classify.kd_weight=1", "classify.ce_only=false", "classify.epochs=0.5",
        "source.epochs=0.25"]


def test_supervised_teacher_by_pretrain_then_its_file_and_external_weights_as_teacher(repo_root, tmp_path, capsys):
    """``ssl-transfer pretrain`` trains the supervised teacher alone (the teacher configs of the
    CIFAR-100 pairs); its teacher.pt, and the same weights as an external state dict with an fc,
    are the same teacher for ``classify --teacher``."""
    smoke = str(repo_root / "configs" / "smoke_classify.yaml")
    sup = [*TINY, "source.method=supervised", "classify.student_backbone=small_cnn", "classify.loss=rkd",
           "classify.loss_args={}"]
    assert main(["pretrain", smoke, "--out", str(tmp_path / "sup"), "--set", "task=classify", *sup]) == 0
    assert "supervised teacher (resnet18, 0.25 epochs): top-1" in capsys.readouterr().out
    teacher = json.loads((tmp_path / "sup" / "results.json").read_text())["teacher"]
    assert teacher["classifier"] == "supervised" and 0 <= teacher["top1_acc"] <= 1
    assert main(["classify", smoke, "--teacher", str(tmp_path / "sup" / "teacher.pt"), "--out", str(tmp_path / "again"),
                 "--set", *sup]) == 0
    again = json.loads((tmp_path / "again" / "results.json").read_text())
    assert again["teacher"]["top1_acc"] == pytest.approx(teacher["top1_acc"], abs=1e-6)
    assert again["teacher"]["classifier"] == "supervised" and "teacher_finetuned" not in again["controls"]
    # external weights: a plain state dict with torchvision keys and its fc -> the classifier
    payload = torch.load(tmp_path / "sup" / "teacher.pt", weights_only=True)
    state = {**{f"module.{k}": v for k, v in payload["backbone"].items()},
             **{f"module.fc.{k}": v for k, v in payload["classifier"].items()}}
    torch.save({"state_dict": state}, tmp_path / "external.pth")
    assert main(["classify", smoke, "--teacher", str(tmp_path / "external.pth"), "--out", str(tmp_path / "ext"),
                 "--set", *sup]) == 0
    ext = json.loads((tmp_path / "ext" / "results.json").read_text())
    assert ext["teacher"]["classifier"] == "external fc"
    assert ext["teacher"]["top1_acc"] == pytest.approx(teacher["top1_acc"], abs=1e-6)
    assert ext["student"]["top1_acc"] == pytest.approx(again["student"]["top1_acc"], abs=1e-6)


def test_bad_input_exits_2_in_one_line_before_writing(repo_root, tmp_path, capsys):
    smoke = str(repo_root / "configs" / "smoke_classify.yaml")
    out = tmp_path / "run"
    assert main(["classify", smoke, "--out", str(out), "--set", "classify.batch_size=512"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "exceeds the 129 labelled training images" in err[0] and not out.exists()
