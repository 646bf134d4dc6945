"""Kill a run with SIGKILL mid-epoch, resume it, and get the uninterrupted run's numbers."""

import csv
import json
import sys

import pytest
import torch
from conftest import reference_beside_killed, snapshot

from ssl_transfer.cli import main

# one torch thread: the reference and the run to kill share the 2 cores side by side (with 2
# threads each they contend and take longer than one after the other), and the resumed run must
# use the reference's thread count to reproduce its numbers bit for bit. 256 images in batches of
# 32: 8 steps per epoch; a checkpoint at step 9, in the middle of the second epoch.
SETTINGS = ["trainer.checkpoint_every_n_steps=9", "trainer.log_every_n_steps=1", "transfer.epochs=2",
            "transfer.memory_size=96", "controls.teacher_continued=false", "trainer.num_threads=1",
            "data.batch_size=32", "data.train_subset=256", "data.eval_train_subset=200", "data.val_size=100",
            "data.test_subset=100"]
METRICS = ("linear_acc", "knn_acc", "val_linear_acc", "val_knn_acc")


def cmd(repo_root, out, *extra, command="run"):
    return [sys.executable, "-m", "ssl_transfer", command, str(repo_root / "configs" / "smoke.yaml"),
            "--out", str(out), "--set", *SETTINGS, *extra]


def start_reference_and_kill(repo_root, tmp_path, stage: str, *extra, command="run"):
    """Start the uninterrupted reference run and the run to kill side by side (on 2 cores this
    takes about the time of the longer one alone); SIGKILL the second once ``stage`` has saved
    the checkpoint of step 9 (8 steps per epoch: the middle of its second epoch). Returns the
    finished reference's directory and the killed run's."""
    ref_out, out = tmp_path / "ref" / "run", tmp_path / "kill" / "run"
    for d in (ref_out, out):
        d.parent.mkdir(parents=True)
    reference_beside_killed(cmd(repo_root, ref_out, *extra, command=command), ref_out,
                            cmd(repo_root, out, *extra, command=command), out, stage, step=9)
    return ref_out, out


def test_sigkill_mid_epoch_then_resume_gives_identical_results(repo_root, tmp_path):
    ref_out, out = start_reference_and_kill(repo_root, tmp_path, "transfer")
    reference = json.loads((ref_out / "results.json").read_text())
    ckpt = out / "checkpoints" / "transfer" / "last.ckpt"
    assert not (out / "results.json").exists()
    state = json.loads((out / "run.json").read_text())
    assert state["status"] == "running" and "source" in state["finished"]
    assert "transfer" not in state["finished"]

    before_kill = state["elapsed_s"]  # wall time up to the last finished stage (the source)
    saved = torch.load(ckpt, map_location="cpu", weights_only=False)
    ckpt_elapsed = saved["elapsed_s"]
    assert not any(k.startswith("teacher.") for k in saved["state_dict"])  # teacher.pt holds the teacher
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


MOCO = ["source.method=mocov2", "source.epochs=2", "source.moco_queue_size=64"]


def test_mocov2_source_stage_killed_mid_epoch_resumes_with_its_queue(repo_root, tmp_path):
    """MoCo v2 keeps state outside the state_dict (lightly's queue is a non-persistent buffer):
    killed in its second epoch and resumed, the source stage (``pretrain``) ends with the
    uninterrupted run's weights, key encoder and queue (2 batches of keys, so a lost pointer or
    queue would show)."""
    from ssl_transfer.io import load_model

    ref_out, out = start_reference_and_kill(repo_root, tmp_path, "source", *MOCO, command="pretrain")
    assert "source" not in json.loads((out / "run.json").read_text())["finished"]
    assert main(["pretrain", str(repo_root / "configs" / "smoke.yaml"), "--out", str(out), "--resume",
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


def test_resume_refuses_a_changed_config(repo_root, tmp_path, capsys):
    """run.json records the resolved config (a real run's round trip is resumed in the SIGKILL
    test above); --resume with another setting is refused, naming the key, with nothing written."""
    from ssl_transfer.config import load_config

    smoke = repo_root / "configs" / "smoke.yaml"
    out = tmp_path / "run"
    out.mkdir()
    state = {"config": load_config(smoke, [*SETTINGS, "source.epochs=0.25"]).to_dict(), "finished": {},
             "status": "running"}
    (out / "run.json").write_text(json.dumps(state))
    before = snapshot(out)
    code = main(["run", str(smoke), "--out", str(out), "--resume",
                 "--set", *SETTINGS, "source.epochs=0.25", "transfer.loss_args.sigma=2"])
    assert code == 2 and "differs from the interrupted run's at 'transfer.loss_args.sigma'" in capsys.readouterr().err
    assert snapshot(out) == before


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



def test_a_checkpoint_carries_its_steps_log_row_written_after_it(tmp_path):
    """Lightning writes a step's checkpoint before that step's log row: the checkpoint carries the
    row (equal to the one the CSV gets), and a resume after a kill in between puts it back."""
    import lightning as L

    from ssl_transfer.config import config_from_dict
    from ssl_transfer.runtime import _merge_logs, make_trainer

    class Tiny(L.LightningModule):
        def __init__(self):
            super().__init__()
            self.w = torch.nn.Linear(3, 1)

        def training_step(self, batch, _):
            loss = self.w(batch).pow(2).mean()
            self.log("train_loss", loss)
            return loss

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=0.1)

    from ssl_transfer.runtime import PendingLogRow

    cfg = config_from_dict({"trainer": {"log_every_n_steps": 1, "checkpoint_every_n_steps": 1,
                                        "enable_progress_bar": False}})
    torch.manual_seed(0)
    loader = torch.utils.data.DataLoader(torch.randn(40, 3), batch_size=8)
    trainer = make_trainer(cfg, tmp_path, "tiny", 4, [PendingLogRow()])
    trainer.fit(Tiny(), train_dataloaders=loader)
    log = tmp_path / "logs" / "tiny" / "metrics.csv"
    rows = list(csv.DictReader(log.open()))
    ckpt = torch.load(tmp_path / "checkpoints" / "tiny" / "last.ckpt", map_location="cpu", weights_only=False)
    pending = ckpt["pending_log_row"]
    assert pending["step"] == ckpt["global_step"] - 1 == 3
    assert pending["train_loss"] == pytest.approx(float(rows[3]["train_loss"]), rel=1e-6)
    # a kill after step 3's checkpoint and before its row: the resumed log has no step 3 ...
    old = "".join([log.read_text().splitlines(True)[0], *log.read_text().splitlines(True)[1:4]])
    header = log.read_text().splitlines(True)[0]
    log.write_text(header + ",".join({"epoch": "0", "step": "4"}.get(k, "0.5") for k in header.strip().split(",")) + "\n")
    _merge_logs(log, old, pending)
    steps = [int(r["step"]) for r in csv.DictReader(log.open())]
    assert steps == [0, 1, 2, 3, 4]  # ... and gets it back from the checkpoint


def test_the_frozen_teacher_is_not_saved_in_checkpoints_and_comes_back_on_load():
    """last.ckpt holds the student, not the frozen teacher (teacher.pt holds it); on load the
    teacher rebuilt for the run is put back, and an older checkpoint holding it loads as it is."""
    from torch import nn

    from ssl_transfer.config import config_from_dict
    from ssl_transfer.stages.base import StageModule
    from ssl_transfer.stages.transfer import FrozenTeacher

    class Module(StageModule):
        def __init__(self):
            super().__init__(config_from_dict({}).transfer.optimizer, 8, 1.0)
            self.student, self.teacher = nn.Linear(3, 2), FrozenTeacher(nn.Linear(3, 4), 4)
            self.register_buffer("memory_teacher", torch.zeros(2, 4))

    torch.manual_seed(0)
    saved, other = Module(), Module()
    checkpoint = {"state_dict": saved.state_dict()}
    saved.on_save_checkpoint(checkpoint)
    assert set(checkpoint["state_dict"]) == {"student.weight", "student.bias", "memory_teacher"}
    own_teacher = other.teacher.backbone.weight.clone()
    other.on_load_checkpoint(checkpoint)
    other.load_state_dict(checkpoint["state_dict"])  # strict: every key is there again
    assert torch.equal(other.student.weight, saved.student.weight)
    assert torch.equal(other.teacher.backbone.weight, own_teacher)
    old = {"state_dict": saved.state_dict()}  # written before the teacher was left out
    other.on_load_checkpoint(old)
    assert torch.equal(old["state_dict"]["teacher.backbone.weight"], saved.teacher.backbone.weight)
