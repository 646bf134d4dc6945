"""Task metric end to end through the CLI on a tiny CUB-200-2011 tree: Proxy-Anchor teacher ->
control -> relaxed transfer -> retrieval on unseen classes; resume, the test classes never read
while choosing, teacher files, student initialisation."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from PIL import Image

from ssl_transfer.cli import main

# official CUB class ids -> images: 6 training classes (2 become validation classes), 4 test classes
TRAIN = {c: 6 for c in range(1, 7)}
TEST = {c: 4 for c in range(101, 105)}
CONFIG = {
    "task": "metric", "seed": 0,
    "data": {"name": "cub", "verify_counts": False, "val_classes": 2, "images_per_class": 2, "batch_size": 8,
             "input_size": 32, "num_workers": 0, "eval_batch_size": 64},
    "source": {"method": "proxy_anchor", "backbone": "resnet18", "epochs": 2.0,
               "optimizer": {"name": "adamw", "lr": 1.0e-3, "weight_decay": 1.0e-4, "warmup_fraction": 0.0,
                                 "lr_scale_with_batch": False}},
    "metric": {"warmup_epochs": 1.0, "embed_dim": 32, "select_every": 1.0},
    "transfer": {"epochs": 2.0, "student_init": "teacher", "embed_dim": 16,
                 "optimizer": {"name": "adamw", "lr": 1.0e-4, "weight_decay": 1.0e-4}},
    # checkpoints at epoch ends only (each is ~100-180 MB: every step would double a run's time);
    # the resume test below asks for one at every step
    "trainer": {"accelerator": "cpu", "num_threads": 2, "enable_progress_bar": False, "log_every_n_steps": 1,
                "checkpoint_every_n_steps": 0},
}


def make_cub(root: Path) -> Path:
    """A CUB-200-2011 tree in the official layout (index files + class folders of JPEGs)."""
    base = root / "CUB_200_2011"
    rng = np.random.default_rng(0)
    images, labels, k = [], [], 0
    for c, count in {**TRAIN, **TEST}.items():
        tint = rng.integers(0, 256, 3)  # images of a class share a colour: retrieval has signal
        for j in range(count):
            k += 1
            rel = f"{c:03d}.Bird_{c}/Bird_{c}_{j}.jpg"
            (base / "images" / rel).parent.mkdir(parents=True, exist_ok=True)
            pixels = np.clip(tint + rng.normal(0, 40, (20, 24, 3)), 0, 255).astype(np.uint8)
            Image.fromarray(pixels).save(base / "images" / rel, "JPEG")
            images.append(f"{k} {rel}")
            labels.append(f"{k} {c}")
    (base / "images.txt").write_text("\n".join(images) + "\n")
    (base / "image_class_labels.txt").write_text("\n".join(labels) + "\n")
    (base / "classes.txt").write_text("".join(f"{c} {c:03d}.Bird_{c}\n" for c in range(1, 201)))
    return base


@pytest.fixture(scope="module")
def cub_config(tmp_path_factory) -> str:
    root = tmp_path_factory.mktemp("data")
    make_cub(root)
    path = root / "cub_tiny.yaml"
    path.write_text(yaml.safe_dump({**CONFIG, "data": {**CONFIG["data"], "root": str(root)}}))
    return str(path)


@pytest.fixture(scope="module")
def finished(cub_config, tmp_path_factory):
    out = tmp_path_factory.mktemp("metric") / "run"
    assert main(["metric", cub_config, "--out", str(out)]) == 0
    return out


KS = ("recall@1", "recall@2", "recall@4", "recall@8")


def test_the_whole_task_runs_through_the_cli_and_writes_retrieval_blocks(finished):
    results = json.loads((finished / "results.json").read_text())
    assert results["config"]["task"] == "metric" and results["status"] == "completed"
    blocks = {"teacher": results["teacher"], "control": results["controls"]["teacher_continued"],
              "student": results["student"]}
    for name, block in blocks.items():
        for key in (*KS, "map@r", "r_precision", "nmi", *(f"val_{k}" for k in (*KS, "map@r"))):
            assert 0.0 <= block[key] <= 1.0, (name, key)
        assert block["test_classes"] == 4 and block["test_images"] == 16  # CUB classes 101-104
        assert block["val_classes"] == 2 and block["val_images"] == 12  # 2 whole training classes
        assert block["selection"]["metric"] == "val_recall@1" and block["selection"]["chosen_step"] in range(1, 7)
    assert blocks["teacher"]["embed_dim"] == 32 and blocks["student"]["embed_dim"] == 16
    assert results["models"]["student_embed_dim"] == 16
    report = (finished / "report.md").read_text()
    assert "| teacher continued |" in report and "R@8" in report and "MAP@R" in report
    for path in ("plots/loss_curves.png", "plots/retrieval.png", "teacher.pt", "teacher_continued.pt", "student.pt",
                 "logs/source/selection.json", "logs/transfer/selection.json"):
        assert (finished / path).is_file(), path
    manifest = set(json.loads((finished / "manifest.json").read_text())["files"])
    assert {"logs/source/selection.json", "plots/retrieval.png"} <= manifest
    teacher = torch.load(finished / "teacher.pt", weights_only=True)
    assert teacher["method"] == "proxy_anchor" and teacher["proxies"].shape == (4, 32)  # 6 classes - 2 for val
    assert teacher["pooling"] == "avg_max" and len(teacher["classes"]) == 4


def test_the_chosen_weights_are_the_best_on_validation_classes(finished):
    selection = json.loads((finished / "logs" / "transfer" / "selection.json").read_text())
    scores = [h["recall@1"] for h in selection["history"]]
    assert [h["step"] for h in selection["history"]] == [3, 6]  # every epoch of 3 steps, and the last step
    assert selection["chosen_score"] == max(scores) and selection["chosen_step"] == [3, 6][scores.index(max(scores))]
    results = json.loads((finished / "results.json").read_text())
    assert results["student"]["val_recall@1"] == pytest.approx(selection["chosen_score"])


def test_choosing_never_reads_the_test_classes(cub_config, tmp_path, monkeypatch):
    from ssl_transfer.data import DataBundle
    from ssl_transfer.stages import metric

    reads, phase = [], {"now": "training"}
    original = DataBundle.eval_loader

    def eval_loader(self, split):
        reads.append((phase["now"], split))
        return original(self, split)

    evaluate = metric.evaluate

    def evaluating(*args, **kw):
        phase["now"] = "evaluation"
        return evaluate(*args, **kw)

    monkeypatch.setattr(DataBundle, "eval_loader", eval_loader)
    monkeypatch.setattr(metric, "evaluate", evaluating)
    assert main(["metric", cub_config, "--out", str(tmp_path / "run"), "--set", "source.epochs=1",
                 "transfer.epochs=1"]) == 0
    training = [split for when, split in reads if when == "training"]
    assert training and set(training) == {"val"}  # the selector read the validation classes only
    final = [split for when, split in reads if when == "evaluation"]
    assert final == ["val", "test"] * 3  # teacher, control, student: val, then test once each


def test_pretrain_then_transfer_from_the_saved_teacher(cub_config, finished, tmp_path):
    out = tmp_path / "pre"
    assert main(["pretrain", cub_config, "--out", str(out)]) == 0
    pre = json.loads((out / "results.json").read_text())
    ran = json.loads((finished / "results.json").read_text())
    assert pre["teacher"]["recall@1"] == pytest.approx(ran["teacher"]["recall@1"])  # the same teacher
    assert main(["transfer", cub_config, "--teacher", str(out / "teacher.pt"), "--out", str(tmp_path / "t"),
                 "--set", "controls.teacher_continued=false"]) == 0
    again = json.loads((tmp_path / "t" / "results.json").read_text())
    assert again["student"]["recall@1"] == pytest.approx(ran["student"]["recall@1"])


def test_a_teacher_of_other_classes_is_refused_in_one_line(cub_config, finished, tmp_path, capsys):
    code = main(["transfer", cub_config, "--teacher", str(finished / "teacher.pt"), "--out", str(tmp_path / "t"),
                 "--set", "data.split_seed=3"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "data.val_classes and data.split_seed" in err[0]


def test_an_ssl_teacher_file_is_refused_in_one_line(cub_config, tmp_path, capsys):
    from ssl_transfer.io import save_model
    from ssl_transfer.models import build_backbone

    net, spec = build_backbone("resnet18", "imagenet", 3)
    save_model(tmp_path / "simclr.pt", net, spec, extra={"method": "simclr"})
    code = main(["transfer", cub_config, "--teacher", str(tmp_path / "simclr.pt"), "--out", str(tmp_path / "t")])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "not a Proxy-Anchor teacher" in err[0]


@pytest.mark.parametrize("override, message", [
    ("metric.imagenet_weights=/nonexistent/resnet18.pth", "metric.imagenet_weights = '/nonexistent/resnet18.pth' "
                                                          "is not a file; ImageNet weights are never downloaded"),
    ("source.method=simclr", "task metric trains a Proxy-Anchor teacher"),
    ("data.val_classes=null", "data.val_classes is not set"),
    ("transfer.student_backbone=small_cnn transfer.student_init=scratch", "not a ResNet"),
    ("eval.knn_monitor_every=1", "metric.select_every"),
])
def test_bad_metric_settings_stop_in_one_line_before_anything_is_written(cub_config, tmp_path, capsys, override,
                                                                         message):
    out = tmp_path / "run"
    assert main(["metric", cub_config, "--out", str(out), "--set", *override.split()]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0] and "Traceback" not in err[0]
    assert not out.exists()


def test_proxy_anchor_outside_task_metric_is_refused(repo_root, capsys):
    code = main(["run", str(repo_root / "configs" / "smoke.yaml"), "--out", "/nonexistent/x", "--set",
                 "source.method=proxy_anchor"])
    assert code == 2 and "belongs to task metric" in capsys.readouterr().err


def test_an_interrupted_transfer_resumes_to_the_uninterrupted_numbers(cub_config, finished, tmp_path, monkeypatch):
    """Stopped after step 4 of the transfer stage (past its first choice on validation classes),
    ``--resume`` continues from last.ckpt (weights, sampler position, the selector's curve and
    best weights) and ends with the uninterrupted run's numbers."""
    from ssl_transfer.stages.metric_select import ValSelector

    original = ValSelector.on_train_batch_end

    def interrupting(self, trainer, pl_module, *args):
        original(self, trainer, pl_module, *args)
        if pl_module.stage == "transfer" and trainer.global_step == 4:
            raise RuntimeError("simulated crash")

    out = tmp_path / "run"
    every_step = ["--set", "trainer.checkpoint_every_n_steps=1"]
    monkeypatch.setattr(ValSelector, "on_train_batch_end", interrupting)
    assert main(["metric", cub_config, "--out", str(out), *every_step]) == 1
    state = json.loads((out / "run.json").read_text())
    assert "transfer" not in state["finished"] and {"source", "teacher_continued"} <= set(state["finished"])
    monkeypatch.setattr(ValSelector, "on_train_batch_end", original)
    # the crash comes in the selector's hook of step 4, before that step's checkpoint: the run goes
    # on from step 3's, taken after the first choice on validation classes (every epoch of 3 steps)
    assert torch.load(out / "checkpoints" / "transfer" / "last.ckpt", weights_only=False, mmap=True)["global_step"] == 3
    assert main(["metric", cub_config, "--out", str(out), "--resume", *every_step]) == 0
    resumed, reference = (json.loads((p / "results.json").read_text()) for p in (out, finished))
    assert resumed["resumed"] is True
    for model in ("teacher", "student"):
        for key in (*KS, "map@r", "nmi", "val_recall@1", "val_map@r"):
            assert resumed[model][key] == pytest.approx(reference[model][key], abs=1e-6), (model, key)
    assert resumed["student"]["selection"] == reference["student"]["selection"]
