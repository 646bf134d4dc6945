import os
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
torch.set_num_threads(min(2, os.cpu_count() or 1))


def checkpoint_step(path) -> int:
    """The global step of a Lightning checkpoint being written by another process (-1: not there yet)."""
    try:  # mmap: the step without reading the 100-200 MB of tensors (polled every 50 ms)
        return torch.load(path, map_location="cpu", weights_only=False, mmap=True)["global_step"]
    except Exception:  # not there yet, or half written
        return -1


def start_logged(args: list[str], out: Path, cwd=None):
    """Start a command whose output goes to files beside ``out`` (two runs side by side on pipes
    would stall: a full pipe blocks the run nobody reads yet)."""
    import subprocess

    logs = [open(out.parent / f"{out.name}.{name}", "w+") for name in ("stdout", "stderr")]
    proc = subprocess.Popen(args, cwd=cwd, stdout=logs[0], stderr=logs[1], text=True)
    proc.logs = logs
    return proc


def finish_logged(proc, timeout: float):
    """Wait for :func:`start_logged`'s process; assert it succeeded; its CompletedProcess."""
    import subprocess

    proc.wait(timeout=timeout)
    stdout, stderr = (f.seek(0) or f.read() for f in proc.logs)
    for f in proc.logs:
        f.close()
    assert proc.returncode == 0, stdout[-2000:] + stderr[-4000:]
    return subprocess.CompletedProcess(proc.args, proc.returncode, stdout, stderr)


def reference_beside_killed(ref_cmd: list[str], ref_out: Path, kill_cmd: list[str], kill_out: Path, stage: str,
                            step: int, timeout: float = 900) -> None:
    """Start an uninterrupted reference run and a run to kill side by side (on 2 cores, with one
    torch thread each, this takes about the time of the longer one alone); SIGKILL the second once
    its ``stage`` has saved the checkpoint of ``step``; wait for the reference to succeed."""
    import subprocess
    import time

    ref = start_logged(ref_cmd, ref_out)
    proc = subprocess.Popen(kill_cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        ckpt = kill_out / "checkpoints" / stage / "last.ckpt"
        deadline = time.time() + timeout
        while checkpoint_step(ckpt) < step:
            assert proc.poll() is None, "the run ended before it could be killed"
            assert time.time() < deadline
            time.sleep(0.05)
    finally:
        proc.kill()  # SIGKILL (also when the wait above failed)
        proc.wait()
        finish_logged(ref, timeout=timeout)


@pytest.fixture(scope="session")
def repo_root() -> Path:
    return ROOT


def loaded(bundle, split: str):
    """All ``(x, y)`` of a split through the bundle's evaluation loader (what every model sees)."""
    xs, ys = zip(*bundle.eval_loader(split))
    return torch.cat(xs), torch.cat(ys)


#: A run small enough for tests that need a finished run directory (about 20 s on 2 cores).
TINY_RUN = ["source.epochs=0.25", "transfer.epochs=0.25", "data.train_subset=128", "data.eval_train_subset=200",
            "data.val_size=100", "data.test_subset=100", "eval.knn_k=5", "eval.linear_Cs=[0.3, 1.0, 3.0]",
            "controls.teacher_continued=false"]


#: sha256 of files by (path, inode, size, mtime, ctime): see :func:`snapshot`.
_DIGESTS: dict[tuple, str] = {}


def _sha256(path: str) -> str:
    """The file's sha256, remembered while its inode, size, mtime and ctime stay the same.

    Any write, truncation, rename over it, chmod or utime sets a new ctime (which no call can set
    back), so an unchanged key means unchanged bytes. A digest is remembered only once the file
    has been still for 2 s: a write within the same coarse kernel clock tick as the one before
    could otherwise keep the old ctime.
    """
    import hashlib
    import time

    st = os.stat(path)
    key = (path, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)
    if key in _DIGESTS:
        return _DIGESTS[key]
    with open(path, "rb") as fh:
        digest = hashlib.file_digest(fh, "sha256").hexdigest()
    if time.time_ns() - st.st_ctime_ns > 2_000_000_000:
        _DIGESTS[key] = digest
    return digest


def snapshot(root):
    """{relative path: sha256} of every file under root (byte-identical comparison).

    The finished run it is mostly taken of holds 350 MB of checkpoints and is compared before and
    after hundreds of refused commands; digests of files whose inode and times did not change are
    reused (:func:`_sha256`), so only what changed is read again.
    """
    out = {}
    for dirpath, _, files in os.walk(root):
        for f in files:
            p = os.path.join(dirpath, f)
            out[os.path.relpath(p, root)] = _sha256(p)
    return out


@pytest.fixture(scope="session")
def smoke(repo_root) -> str:
    return str(repo_root / "configs" / "smoke.yaml")


@pytest.fixture(scope="session")
def finished(tmp_path_factory, smoke):
    """A finished tiny run (do not modify it: copy it first)."""
    from ssl_transfer.cli import main

    out = tmp_path_factory.mktemp("finished") / "run"
    assert main(["run", smoke, "--out", str(out), "--set", *TINY_RUN]) == 0
    return out


@pytest.fixture
def diverging_loss(monkeypatch):
    """The relaxed loss turns NaN from its third call on, as a diverging run's would (in-process runs)."""
    from ssl_transfer.losses import RelaxedContrastiveLoss

    original = RelaxedContrastiveLoss.forward
    calls = {"n": 0}

    def forward(self, student, teacher):
        calls["n"] += 1
        loss = original(self, student, teacher)
        return loss * float("nan") if calls["n"] > 2 else loss

    monkeypatch.setattr(RelaxedContrastiveLoss, "forward", forward)
    return calls
