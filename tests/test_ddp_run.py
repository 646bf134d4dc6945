"""Distributed end to end: ``ssl-transfer run`` with ``trainer.devices=2 trainer.strategy=ddp`` on
CPU (gloo) gives the final metrics of the one-process run on the same global batch.

Both runs train in float64 (``trainer.precision=64-true``): then the only difference between
them, the order of float reductions (a batch split over two processes, gathered, all-reduced
gradients, global-batch BatchNorm statistics), stays near 1e-13, so the comparison is tight and
any real mismatch (data order, lr, BatchNorm, loss, cross-batch memory, gradient scale) shows.
In float32 the same rounding differences are amplified by training, as much as changing the
number of CPU threads of a one-process run does (docs/reliability.md "Distributed").
"""

import csv
import json
import shutil
import sys
from pathlib import Path

import pytest
from conftest import finish_logged, start_logged

#: the smoke config made smaller (4 steps per stage, small evaluation splits) to fit the suite's
#: time budget; the cross-batch memory (48 rows: it wraps around in the second step) is on
SETTINGS = ["trainer.precision=64-true", "trainer.num_threads=1", "trainer.log_every_n_steps=1",
            "data.train_subset=64", "data.batch_size=16", "data.eval_train_subset=200",
            "data.val_size=100", "data.test_subset=100", "transfer.memory_size=48"]
STAGES = ("source", "teacher_continued", "transfer")
MODELS = ("teacher", "controls.teacher_continued", "student")
METRICS = ("linear_acc", "knn_acc", "val_linear_acc", "val_knn_acc")
LOSS_RTOL = 1e-9


def cli() -> list[str]:
    """The installed ``ssl-transfer`` entry point (Lightning's DDP launcher re-runs it)."""
    script = shutil.which("ssl-transfer", path=str(Path(sys.executable).parent))
    assert script, "the ssl-transfer entry point is not installed next to this Python; pip install -e ."
    return [script]


def start(command: list[str], repo_root: Path, out: Path, *extra: str):
    return start_logged([*command, "run", str(repo_root / "configs" / "smoke.yaml"), "--out", str(out),
                         "--set", *SETTINGS, *extra], out, cwd=repo_root)


def losses(out: Path, stage: str) -> tuple[list[float], float]:
    rows = list(csv.DictReader((out / "logs" / stage / "metrics.csv").open()))
    steps = [float(r["train_loss_step"]) for r in rows if r.get("train_loss_step")]
    (epoch,) = [float(r["train_loss_epoch"]) for r in rows if r.get("train_loss_epoch")]
    return steps, epoch


def get(results: dict, dotted: str) -> dict:
    for part in dotted.split("."):
        results = results[part]
    return results


@pytest.fixture(scope="module")
def runs(tmp_path_factory, repo_root):
    base = tmp_path_factory.mktemp("ddp")
    # both at once (1 + 2 one-thread processes on the suite's 2 cores): CPU runs are deterministic
    procs = [start([sys.executable, "-m", "ssl_transfer"], repo_root, base / "one"),
             start(cli(), repo_root, base / "two", "trainer.devices=2", "trainer.strategy=ddp")]
    one, two = (finish_logged(p, 600) for p in procs)
    return base / "one", base / "two", one, two


def test_two_processes_really_ran_and_only_rank_0_reported(runs):
    _, two_dir, _, two = runs
    assert "GLOBAL_RANK: 1, MEMBER: 2/2" in two.stderr  # Lightning started the second process
    assert two.stdout.count("results written to") == 1  # the worker trained, printed nothing
    assert two.stdout.count("# ssl-transfer run report") == 1
    results = json.loads((two_dir / "results.json").read_text())
    assert results["config"]["trainer"]["devices"] == 2 and results["status"] == "completed"
    assert json.loads((two_dir / "run.json").read_text())["status"] == "completed"
    assert not list(two_dir.rglob("*.tmp"))  # no half-written file of a second writer


def test_final_metrics_equal_the_single_process_run(runs):
    one_dir, two_dir, _, _ = runs
    one = json.loads((one_dir / "results.json").read_text())
    two = json.loads((two_dir / "results.json").read_text())
    image = 1 / one["data"]["sizes"]["test"]  # accuracies: within one test image (observed: equal)
    for model in MODELS:
        for metric in METRICS:
            a, b = get(one, model)[metric], get(two, model)[metric]
            assert abs(a - b) <= image + 1e-12, (model, metric, a, b)


def test_every_logged_loss_equals_the_single_process_run(runs):
    """Per-step and final losses of every stage (source, teacher continued, transfer with the
    cross-batch memory) agree to LOSS_RTOL: float64 reduction order, nothing else."""
    one_dir, two_dir, _, _ = runs
    for stage in STAGES:
        (steps_1, final_1), (steps_2, final_2) = losses(one_dir, stage), losses(two_dir, stage)
        assert len(steps_1) == len(steps_2) == 4, stage
        assert steps_2 == pytest.approx(steps_1, rel=LOSS_RTOL), stage
        assert final_2 == pytest.approx(final_1, rel=LOSS_RTOL), stage


@pytest.mark.parametrize("settings, message", [
    (["trainer.devices=2", "trainer.strategy=ddp", "data.batch_size=63"],
     "data.batch_size = 63 (the global batch) does not split evenly over 2 processes; set data.batch_size "
     "to a multiple of 2"),
    (["trainer.devices=2", "trainer.strategy=ddp_spawn"],
     "trainer.strategy = 'ddp_spawn' with 2 processes is not supported"),
    (["trainer.accelerator=cpu", "trainer.devices=0"], "are refused by Lightning ("),
    # processes = devices x num_nodes: two one-process nodes split the global batch in two
    (["trainer.num_nodes=2", "trainer.strategy=ddp", "data.batch_size=63"],
     "data.batch_size = 63 (the global batch) does not split evenly over 2 processes"),
    (["trainer.num_nodes=0"], "trainer.num_nodes = 0 must be >= 1"),
])
@pytest.mark.parametrize("command", ["run", "pretrain"])
def test_bad_distributed_settings_fail_before_anything_is_written(command, settings, message, repo_root, tmp_path,
                                                                  capsys):
    from ssl_transfer.cli import main

    out = tmp_path / "run"
    assert main([command, str(repo_root / "configs" / "smoke.yaml"), "--out", str(out), "--set", *settings]) == 2
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1, err
    assert not out.exists()


def test_mocov2_with_global_batchnorm_under_ddp_warns(repo_root, caplog):
    """Global BatchNorm makes MoCo's cross-process batch shuffle a no-op: say so (the MoCo
    recipe configs set sync_batchnorm: false)."""
    import logging

    from ssl_transfer.config import load_config
    from ssl_transfer.runtime import check_processes

    smoke = repo_root / "configs" / "smoke.yaml"
    ddp = ["trainer.devices=2", "trainer.strategy=ddp", "source.method=mocov2"]
    with caplog.at_level(logging.WARNING, logger="ssl_transfer"):
        assert check_processes(load_config(smoke, ddp)) == 2
    assert "trainer.sync_batchnorm: false" in caplog.text
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="ssl_transfer"):
        assert check_processes(load_config(smoke, [*ddp, "trainer.sync_batchnorm=false"])) == 2
        assert check_processes(load_config(smoke, ["source.method=mocov2"])) == 1
    assert "sync_batchnorm" not in caplog.text
