"""Task metric under DDP: ``trainer.devices=2`` on CPU (gloo) trains every stage on the same
global batches as one process (class-balanced: each process holds its own classes), with the
Proxy-Anchor loss and the transfer loss computed on the gathered batch, and ends with the
one-process numbers. Both runs in float64, so only the order of float reductions differs
(tests/test_ddp_run.py explains the tolerance)."""

import csv
import json
import shutil
import sys
from pathlib import Path

import pytest
import yaml
from conftest import finish_logged, start_logged
from test_metric_task import CONFIG, make_cub

SETTINGS = ["trainer.precision=64-true", "trainer.num_threads=1", "source.epochs=1", "transfer.epochs=1"]
STAGES = ("source", "teacher_continued", "transfer")
MODELS = ("teacher", "student")
METRICS = ("recall@1", "recall@2", "map@r", "val_recall@1", "val_map@r")


def start(command: list[str], config: Path, out: Path, *extra: str):
    return start_logged([*command, "metric", str(config), "--out", str(out), "--set", *SETTINGS, *extra], out)


def step_losses(out: Path, stage: str) -> list[float]:
    rows = csv.DictReader((out / "logs" / stage / "metrics.csv").open())
    return [float(r["train_loss_step"]) for r in rows if r.get("train_loss_step")]


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    base = tmp_path_factory.mktemp("metric_ddp")
    make_cub(base)
    config = base / "cub.yaml"
    config.write_text(yaml.safe_dump({**CONFIG, "data": {**CONFIG["data"], "root": str(base)}}))
    script = shutil.which("ssl-transfer", path=str(Path(sys.executable).parent))
    assert script, "the ssl-transfer entry point is not installed next to this Python; pip install -e ."
    # both at once (CPU runs are deterministic, so running them side by side changes no number)
    procs = [start([sys.executable, "-m", "ssl_transfer"], config, base / "one"),
             start([script], config, base / "two", "trainer.devices=2", "trainer.strategy=ddp")]
    _, two = (finish_logged(p, 900) for p in procs)
    return base / "one", base / "two", two


def test_two_processes_train_the_same_models_as_one(runs):
    one, two, proc = runs
    assert "GLOBAL_RANK: 1, MEMBER: 2/2" in proc.stderr
    for stage in STAGES:
        a, b = step_losses(one, stage), step_losses(two, stage)
        assert len(a) == len(b) == 3, stage  # one epoch of 3 balanced batches (4 classes x 2 images)
        assert b == pytest.approx(a, rel=1e-9), stage
    r1, r2 = (json.loads((p / "results.json").read_text()) for p in (one, two))
    for model in MODELS:
        for metric in METRICS:
            assert r2[model][metric] == pytest.approx(r1[model][metric], abs=1e-9), (model, metric)
