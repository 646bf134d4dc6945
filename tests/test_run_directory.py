"""The run directory: nothing is deleted before everything is validated, --overwrite replaces a
run only when the new one completes and removes only what a run wrote, one run per directory."""

import json
import os
import signal
import subprocess
import sys
import time

import pytest
from conftest import TINY_RUN as TINY
from conftest import snapshot

from ssl_transfer.cli import main
from ssl_transfer.runs import RunDirectory, read_manifest
from ssl_transfer.runs.directory import MOVED, NEXT, OLD


def test_a_run_records_every_file_it_writes(finished):
    files = {p for p in snapshot(finished) if p != ".lock"}
    assert files == read_manifest(finished)
    assert {"results.json", "run.json", "teacher.pt", "student.pt", "plots/accuracy.png",
            "checkpoints/transfer/last.ckpt", "logs/source/metrics.csv"} <= files


def test_outputs_follow_the_umask(finished):
    mask = os.umask(0)
    os.umask(mask)
    for name in ("results.json", "student.pt", "manifest.json"):
        assert (finished / name).stat().st_mode & 0o777 == 0o666 & ~mask, name


@pytest.mark.parametrize("override", ["trainer.precision=bogus", "seed=-1", "eval.knn_temperature=.nan",
                                      "transfer.loss_args.sigma=.nan", "data.batch_size=100000",
                                      "trainer.devices=3", "transfer.optimizer.lr=-1"])
def test_a_failed_overwrite_leaves_the_finished_run_byte_identical(finished, smoke, override, capsys):
    before = snapshot(finished)
    assert main(["run", smoke, "--out", str(finished), "--overwrite", "--set", *TINY, override]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and "Traceback" not in err[0]
    assert snapshot(finished) == before


def test_a_run_failing_midway_under_overwrite_leaves_the_old_run_and_stages_the_new_one(finished, smoke, tmp_path,
                                                                                         capsys, monkeypatch):
    out = tmp_path / "run"
    import shutil

    shutil.copytree(finished, out)
    before = {k: v for k, v in snapshot(out).items() if k != ".lock"}
    from ssl_transfer.losses import RelaxedContrastiveLoss

    with monkeypatch.context() as m:  # the loss diverges in the new run's transfer stage
        m.setattr(RelaxedContrastiveLoss, "forward", lambda self, s, t: s.sum() * float("nan"))
        code = main(["run", smoke, "--out", str(out), "--overwrite", "--set", *TINY])
    assert code == 2 and "non-finite" in capsys.readouterr().err
    after = snapshot(out)
    assert {k: v for k, v in after.items() if not k.startswith(NEXT) and k != ".lock"} == before
    assert json.loads((out / NEXT / "results.json").read_text())["status"] == "failed"
    # the next --overwrite discards the failed staged run and replaces the old one on completion
    assert main(["run", smoke, "--out", str(out), "--overwrite", "--set", *TINY, "seed=1"]) == 0
    assert not (out / NEXT).exists() and not (out / OLD).exists()
    r = json.loads((out / "results.json").read_text())
    assert r["config"]["seed"] == 1 and r["status"] == "completed"
    assert snapshot(out)["teacher.pt"] != before["teacher.pt"]
    assert set(snapshot(out)) - {".lock"} == read_manifest(out)


@pytest.mark.parametrize("foreign", ["checkpoints/my.ckpt", "logs/notes.txt", "student_v2_final.pt",
                                     "checkpoints/transfer/best.ckpt", "plots/mine.png"])
def test_overwrite_refuses_a_directory_holding_anything_a_run_did_not_write(finished, smoke, tmp_path, foreign,
                                                                             capsys):
    import shutil

    out = tmp_path / "run"
    shutil.copytree(finished, out)
    (out / foreign).write_text("precious")
    before = snapshot(out)
    assert main(["run", smoke, "--out", str(out), "--overwrite", "--set", *TINY]) == 2
    err = capsys.readouterr().err
    assert "no ssl-transfer run wrote" in err and foreign in err
    assert snapshot(out) == before


def test_an_interrupted_commit_is_finished_or_rolled_back(tmp_path):
    out = tmp_path / "run"
    (out / OLD).mkdir(parents=True)
    (out / NEXT).mkdir()
    (out / OLD / "results.json").write_text("old")
    (out / NEXT / "results.json").write_text("new")
    (out / NEXT / "manifest.json").write_text(json.dumps({"files": ["results.json"]}))
    RunDirectory.open(out, resume=False, overwrite=True).close()  # no marker: the old run moves back
    assert (out / "results.json").read_text() == "old"
    # the staged run was incomplete and --overwrite starts afresh: .next was discarded
    assert not (out / NEXT).exists() or not (out / NEXT / "results.json").exists()
    out2 = tmp_path / "run2"
    (out2 / OLD).mkdir(parents=True)
    (out2 / NEXT).mkdir()
    (out2 / OLD / "results.json").write_text("old")
    (out2 / OLD / MOVED).touch()
    (out2 / NEXT / "results.json").write_text("new")
    with RunDirectory.open(out2, resume=False, overwrite=True) as rd:  # marker: the commit completes
        assert rd.work == out2 / NEXT
    assert (out2 / "results.json").read_text() == "new" and not (out2 / OLD).exists()


@pytest.mark.parametrize("make,needle", [
    (lambda t: (t / "target").mkdir() or os.symlink(t / "target", t / "out"), "is a symbolic link"),
    (lambda t: (t / "file").write_text("x"), "which is a file"),
])
def test_out_paths_that_cannot_be_a_run_directory(tmp_path, smoke, make, needle, capsys):
    make(tmp_path)
    out = tmp_path / ("out" if "symbolic" in needle else "file/run")
    assert main(["run", smoke, "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and needle in err[0]


def test_empty_out_is_refused(smoke, capsys):
    assert main(["run", smoke, "--out", ""]) == 2
    assert "--out is empty" in capsys.readouterr().err


def test_two_concurrent_runs_on_one_directory_exactly_one_runs(tmp_path, smoke):
    out = tmp_path / "run"
    cmd = [sys.executable, "-m", "ssl_transfer", "run", smoke, "--out", str(out), "--set", *TINY,
           "trainer.num_threads=1"]
    first = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 300
    while not ((out / "run.json").is_file() and (out / ".lock").read_text().strip()) and time.time() < deadline:
        time.sleep(0.05)
    os.kill(first.pid, signal.SIGSTOP)  # the first holds the lock, and cannot finish while the others start
    try:
        # the same command with --overwrite, or --resume, fails at once
        others = [subprocess.Popen([*cmd, flag], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
                  for flag in ("--overwrite", "--resume")]
        results = [p.communicate(timeout=600) for p in others]
    finally:
        os.kill(first.pid, signal.SIGCONT)
    _, err = first.communicate(timeout=900)
    assert first.returncode == 0, err[-2000:]
    for p, (_, err) in zip(others, results):
        assert p.returncode == 2 and "another ssl-transfer run" in err, err[-2000:]
        assert "Traceback" not in err and len(err.strip().splitlines()) == 1
    r = json.loads((out / "results.json").read_text())
    assert r["status"] == "completed" and r["resumed"] is False
    assert set(snapshot(out)) - {".lock"} == read_manifest(out)


def test_the_checks_before_a_run_fail_on_a_held_lock_and_take_none(tmp_path):
    """RunDirectory.check probes the lock (a second run is refused before it loads anything) and
    leaves it free: the run that holds it, and a later run, are not disturbed."""
    import fcntl

    out = tmp_path / "run"
    out.mkdir()
    fd = os.open(out / ".lock", os.O_RDWR | os.O_CREAT)
    os.write(fd, b"4242")
    RunDirectory.check(out, overwrite=True)  # nobody holds it yet
    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)  # the probe released its shared lock
    with pytest.raises(Exception, match=r"another ssl-transfer run \(pid 4242\) is writing to"):
        RunDirectory.check(out, resume=True)
    RunDirectory.check(out, overwrite=True, holding_lock=True)  # the run's own check under its lock
    os.close(fd)
    RunDirectory.check(out, overwrite=True)


def test_the_checks_read_the_rank_a_launcher_set_without_importing_torch(tmp_path):
    """Before torch is imported, the rank is the environment's, read as Lightning reads it: a DDP
    worker (LOCAL_RANK=1) leaves --out to rank 0, which refuses a directory that is not empty."""
    (tmp_path / "notes.txt").write_text("x")
    code = ("import sys; from ssl_transfer.runs import RunDirectory\n"
            "try:\n    RunDirectory.check(sys.argv[1]); print('ok', 'torch' in sys.modules)\n"
            "except Exception as e:\n    print(type(e).__name__, 'torch' in sys.modules)")
    for env, expected in [({"LOCAL_RANK": "1"}, "ok False"), ({"RANK": "0", "LOCAL_RANK": "1"}, "OutputExistsError False"),
                          ({}, "OutputExistsError False")]:
        clean = {k: v for k, v in os.environ.items() if k not in ("RANK", "LOCAL_RANK", "SLURM_PROCID")}
        p = subprocess.run([sys.executable, "-c", code, str(tmp_path)], capture_output=True, text=True,
                           env={**clean, **env}, timeout=120)
        assert p.stdout.strip() == expected, (env, p.stdout, p.stderr[-2000:])


def test_snapshot_reuses_digests_only_of_files_nothing_touched(tmp_path, monkeypatch):
    """The byte-identical checks above reuse the digest of a file whose inode, size, mtime and
    ctime did not change (conftest._sha256): a rewrite of the same size with its old mtime put
    back still changes the ctime, and is seen."""
    import conftest

    f = tmp_path / "weights.pt"
    f.write_bytes(b"x" * 1000)
    st = os.stat(f)
    time.sleep(0.05)  # past the kernel's coarse clock tick
    now = time.time_ns
    monkeypatch.setattr(time, "time_ns", lambda: now() + 10**10)  # as if the file had been still for 10 s
    first = snapshot(tmp_path)
    assert any(key[0] == str(f) for key in conftest._DIGESTS)  # remembered
    time.sleep(0.05)
    f.write_bytes(b"y" * 1000)
    os.utime(f, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert os.stat(f).st_mtime_ns == st.st_mtime_ns and os.stat(f).st_size == st.st_size
    assert snapshot(tmp_path) != first


def test_a_resumed_run_state_counts_the_time_before_the_interruption(tmp_path):
    from ssl_transfer.config import config_from_dict
    from ssl_transfer.runs import RunState

    cfg = config_from_dict({})
    out = tmp_path / "run"
    out.mkdir()
    (out / "run.json").write_text(json.dumps({"config": cfg.to_dict(), "teacher_checkpoint": None,
                                              "finished": {"source": 90.0}, "status": "running",
                                              "elapsed_s": 120.0}))
    with RunDirectory.open(out, resume=True) as rd:
        state = RunState.resume(rd, cfg)
        assert 120.0 <= state.elapsed() < 130.0 and state.finished == {"source": 90.0}
        state.finish_stage("transfer", 5.0)
    assert json.loads((out / "run.json").read_text())["elapsed_s"] >= 120.0
