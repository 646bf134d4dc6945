"""Kill a run with SIGKILL mid-epoch, resume it, and get the uninterrupted run's numbers."""

import csv
import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch

from ssl_transfer.cli import main

SETTINGS = ["trainer.checkpoint_every_n_steps=3", "trainer.log_every_n_steps=1", "transfer.epochs=2", "transfer.memory_size=96",
            "controls.teacher_continued=false"]
METRICS = ("linear_acc", "knn_acc", "val_linear_acc", "val_knn_acc")


def cmd(repo_root, out, *extra):
    return [sys.executable, "-m", "ssl_transfer", "run", str(repo_root / "configs" / "smoke.yaml"),
            "--out", str(out), "--set", *SETTINGS, *extra]


def checkpoint_step(path):
    try:
        return torch.load(path, map_location="cpu", weights_only=False)["global_step"]
    except Exception:  # not there yet
        return -1


@pytest.fixture(scope="module")
def reference(repo_root, tmp_path_factory):
    out = tmp_path_factory.mktemp("ref") / "run"
    subprocess.run(cmd(repo_root, out), check=True, capture_output=True)
    return json.loads((out / "results.json").read_text())


def test_sigkill_mid_epoch_then_resume_gives_identical_results(repo_root, tmp_path, reference):
    out = tmp_path / "run"
    proc = subprocess.Popen(cmd(repo_root, out), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    ckpt = out / "checkpoints" / "transfer" / "last.ckpt"
    deadline = time.time() + 300
    # 8 steps per epoch: step 9 is in the middle of the second epoch of the transfer stage
    while checkpoint_step(ckpt) < 9:
        assert proc.poll() is None, "the run ended before it could be killed"
        assert time.time() < deadline
        time.sleep(0.05)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert not (out / "results.json").exists()
    state = json.loads((out / "run.json").read_text())
    assert state["status"] == "running" and "source" in state["finished"]
    assert "transfer" not in state["finished"]

    before_kill = state["elapsed_s"]  # wall time up to the last finished stage (the source)
    ckpt_elapsed = torch.load(ckpt, map_location="cpu", weights_only=False)["elapsed_s"]
    code = main(["run", str(repo_root / "configs" / "smoke.yaml"), "--out", str(out), "--resume",
                 "--set", *SETTINGS])
    assert code == 0
    resumed = json.loads((out / "results.json").read_text())
    assert resumed["resumed"] is True
    # timings_s counts the time before the interruption: the whole run, and the interrupted stage
    assert resumed["timings_s"]["total"] > before_kill + resumed["timings_s"]["eval"]
    assert resumed["timings_s"]["transfer"] > ckpt_elapsed > 0
    for model in ("teacher", "student"):
        for key in METRICS:
            assert resumed[model][key] == pytest.approx(reference[model][key], abs=1e-6), (model, key)
    # the loss curve of the interrupted stage is whole: every logged step once, in order
    with open(out / "logs" / "transfer" / "metrics.csv") as f:
        steps = [int(r["step"]) for r in csv.DictReader(f) if r.get("train_loss_step")]
    assert steps == list(range(16))  # 2 epochs of 8 steps


MOCO = ["source.method=mocov2", "source.epochs=2", "source.moco_queue_size=128", "transfer.epochs=0.25"]


def test_mocov2_source_stage_killed_mid_epoch_resumes_with_its_queue(repo_root, tmp_path_factory):
    """MoCo v2 keeps state outside the state_dict (lightly's queue is a non-persistent buffer):
    killed in its second epoch and resumed, the source stage ends with the uninterrupted run's
    weights, key encoder and queue (2 batches of keys, so a lost pointer or queue would show)."""
    from ssl_transfer.io import load_model

    ref_out = tmp_path_factory.mktemp("moco_ref") / "run"
    subprocess.run(cmd(repo_root, ref_out, *MOCO), check=True, capture_output=True)
    out = tmp_path_factory.mktemp("moco_kill") / "run"
    proc = subprocess.Popen(cmd(repo_root, out, *MOCO), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    ckpt = out / "checkpoints" / "source" / "last.ckpt"
    deadline = time.time() + 300
    while checkpoint_step(ckpt) < 9:  # 8 steps per epoch: step 9 is inside the second epoch
        assert proc.poll() is None, "the run ended before it could be killed"
        assert time.time() < deadline
        time.sleep(0.05)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert "source" not in json.loads((out / "run.json").read_text())["finished"]
    assert main(["run", str(repo_root / "configs" / "smoke.yaml"), "--out", str(out), "--resume",
                 "--set", *SETTINGS, *MOCO]) == 0
    ref_net, ref = load_model(ref_out / "teacher.pt")
    got_net, got = load_model(out / "teacher.pt")
    for key, value in ref_net.state_dict().items():
        assert torch.allclose(got_net.state_dict()[key].double(), value.double(), atol=1e-6), key
    assert got["method"] == "mocov2" and int(got["moco_queue_ptr"]) == int(ref["moco_queue_ptr"])
    assert torch.allclose(got["moco_queue"], ref["moco_queue"], atol=1e-6)
    for part in ("key_backbone", "projection_head"):
        for key, value in ref[part].items():
            assert torch.allclose(got[part][key].double(), value.double(), atol=1e-6), (part, key)
    resumed = json.loads((out / "results.json").read_text())
    reference = json.loads((ref_out / "results.json").read_text())
    for key in METRICS:
        assert resumed["teacher"][key] == pytest.approx(reference["teacher"][key], abs=1e-6), key


def test_resume_refuses_a_changed_config(repo_root, tmp_path, reference, capsys):
    out = tmp_path / "run"
    assert main(["run", str(repo_root / "configs" / "smoke.yaml"), "--out", str(out), "--set", *SETTINGS,
                 "source.epochs=0.25"]) == 0
    code = main(["run", str(repo_root / "configs" / "smoke.yaml"), "--out", str(out), "--resume",
                 "--set", *SETTINGS, "source.epochs=0.25", "transfer.loss_args.sigma=2"])
    assert code == 2 and "differs from the interrupted run's at 'transfer.loss_args.sigma'" in capsys.readouterr().err


def test_resume_needs_a_run(repo_root, tmp_path, capsys):
    code = main(["run", str(repo_root / "configs" / "smoke.yaml"), "--out", str(tmp_path / "none"), "--resume"])
    assert code == 2 and "no run to resume" in capsys.readouterr().err
    code = main(["run", str(repo_root / "configs" / "smoke.yaml"), "--out", str(tmp_path), "--resume", "--overwrite"])
    assert code == 2 and "contradict" in capsys.readouterr().err


def test_resume_refuses_another_teacher_than_the_interrupted_runs(repo_root, tmp_path, capsys):
    """run.json records the teacher a run transfers from; --resume with another (or with none,
    which would train a new teacher) is refused before anything is loaded or written."""
    from ssl_transfer.config import load_config

    smoke = repo_root / "configs" / "smoke.yaml"
    cfg = load_config(smoke, [])
    out = tmp_path / "run"
    out.mkdir()
    state = {"config": cfg.to_dict(), "teacher_checkpoint": str(tmp_path / "a.pt"), "finished": {},
             "status": "running"}
    (out / "run.json").write_text(json.dumps(state))
    before = sorted(p.name for p in out.rglob("*"))
    code = main(["run", str(smoke), "--out", str(out), "--resume"])
    err = capsys.readouterr().err
    assert code == 2 and "transferred from --teacher" in err and "would train a new one" in err
    code = main(["transfer", str(smoke), "--teacher", str(tmp_path / "b.pt"), "--out", str(out), "--resume"])
    assert code == 2 and "b.pt" in capsys.readouterr().err
    state["teacher_checkpoint"] = None
    (out / "run.json").write_text(json.dumps(state))
    code = main(["transfer", str(smoke), "--teacher", str(tmp_path / "a.pt"), "--out", str(out), "--resume"])
    err = capsys.readouterr().err
    assert code == 2 and "trained its own teacher" in err and len(err.strip().splitlines()) == 1
    assert sorted(p.name for p in out.rglob("*")) == before

