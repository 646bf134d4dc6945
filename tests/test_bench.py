"""Smoke checks of the benchmark entry points (``python -m bench.<name>``) on tiny sizes, and the
rule they are built on: choosing rows hold no test-split number; ``bench.final`` reads the test
split once per model and refuses a second time."""

import json
import subprocess
import sys

import pytest
import torch

from bench import final, quality, rows, seeds, sweep

TINY = ["data.batch_size=16", "data.train_subset=64", "data.val_size=60", "data.eval_train_subset=80",
        "data.test_subset=60", "data.num_workers=0", "source.epochs=0.25", "transfer.epochs=0.25", "eval.knn_k=5",
        "eval.linear_Cs=[1.0]", "trainer.num_threads=1", "trainer.enable_progress_bar=false"]


@pytest.fixture(autouse=True)
def keep_threads():
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


def test_quality_quick_rows_hold_no_test_number_until_final_reads_it_once(tmp_path, repo_root):
    out = tmp_path / "q"
    argv = ["--quick", "--out", str(out)]
    assert quality.main(argv) == 0
    choices = rows.read_rows(out / "choices.jsonl")
    expected = ["teacher", *(m for name in quality.MODELS for m in (name, *(["dim64_backbone"] if name == "dim64"
                                                                             else [])))]
    assert [r["model"] for r in choices] == expected
    for r in choices:
        assert "linear_acc" not in r and "knn_acc" not in r and 0 <= r["val_linear_acc"] <= 1
    feat = {r["model"]: r["feat_dim"] for r in choices}
    assert (feat["teacher"], feat["dim64"], feat["dim64_backbone"], feat["compression"]) == (512, 64, 512, 256)
    assert quality.main(argv) == 0  # a rerun finds every row done
    assert len(rows.read_rows(out / "choices.jsonl")) == len(choices)
    # the final step: test numbers once per model, with the val numbers of the choosing step
    final.main([str(out)])
    done = rows.read_rows(out / "final.jsonl")
    assert len(done) == len(choices) and all(0 <= r["linear_acc"] <= 1 and r["test_read_at"] for r in done)
    for r in done:
        assert r["val_linear_acc_final"] == pytest.approx(r["val_linear_acc"], abs=1e-6)
    with pytest.raises(SystemExit, match="already read"):
        final.main([str(out), "--models", "teacher"])
    results, plot = tmp_path / "results.md", tmp_path / "quality.png"
    assert quality.main(["--render", str(out), "--results", str(results), "--plot", str(plot)]) == 0
    text = results.read_text()
    assert "read the test split once" in text and "| relaxed_s3: relaxed contrastive, sigma 3 | 1 |" in text
    assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_sweep_shares_teacher_and_control_and_reads_validation_only(tmp_path, repo_root):
    variants = tmp_path / "v.yaml"
    variants.write_text("lr5e-4: [transfer.optimizer.lr=5e-4]\nmlp: [transfer.student_head=mlp]\n")
    out = tmp_path / "s"
    assert sweep.main([str(repo_root / "configs" / "smoke.yaml"), "--variants", str(variants), "--out", str(out),
                       "--set", *TINY]) == 0
    got = rows.read_rows(out / "choices.jsonl")
    assert [r["model"] for r in got] == ["teacher", "teacher_continued", "lr5e-4", "mlp"]
    assert all("linear_acc" not in r for r in got)
    assert got[2]["config"]["transfer"]["optimizer"]["lr"] == 5e-4 and got[3]["config"]["transfer"]["student_head"] == "mlp"
    assert "| sweep | 0 | mlp | student_head=mlp |" in (out / "choices.md").read_text()


def test_seeds_summarises_whole_runs(tmp_path, repo_root):
    out = tmp_path / "seeds"
    md = tmp_path / "t.md"
    assert seeds.main([str(repo_root / "configs" / "smoke.yaml"), "--seeds", "0", "--out", str(out), "--markdown",
                       str(md), "--set", *TINY, "controls.teacher_continued=false"]) == 0
    results = json.loads((out / "seed0" / "results.json").read_text())
    got = rows.read_rows(out / "seeds.jsonl")
    assert [r["model"] for r in got] == ["teacher", "student"]
    assert got[1]["linear_acc"] == results["student"]["linear_acc"]
    assert "| student | 1 |" in md.read_text()


def test_aggregate_pairs_deltas_by_seed():
    r = [{"group": "g", "seed": s, "model": m, "val_linear_acc": v, "val_knn_acc": v}
         for s, m, v in [(0, "teacher", 0.5), (1, "teacher", 0.6), (0, "x", 0.7), (1, "x", 0.7)]]
    agg = rows.aggregate(r)["g"]
    assert agg["x"]["val_linear_acc"][:2] == pytest.approx((70.0, 0.0))
    assert agg["x"]["d_teacher_val_linear_acc"][:2] == pytest.approx((15.0, 7.0710678))  # (20, 10): mean 15, std
    assert "linear_acc" not in agg["x"]  # no test numbers in choosing rows


@pytest.mark.parametrize("module,args", [
    ("bench.loss_memory", ["--quick"]),
    ("bench.eval_speed", ["--quick"]),
    ("bench.speed", ["--n", "64", "--d", "16", "--rounds", "1", "--loss-per-round", "2", "--step-per-round", "1",
                     "--warmup-steps", "1", "--json", "{tmp}/s.json", "--config", "configs/smoke.yaml",
                     "--set", *TINY]),
    ("bench.source_baseline", ["configs/smoke.yaml", "--json", "{tmp}/b.json", "--set", *TINY]),
])  # bench.pipeline_speed's measurement runs in tests/test_bench_entry.py (S3 of python -m bench --quick)
def test_entries_run_on_tiny_sizes(module, args, tmp_path, repo_root, monkeypatch):
    """Each entry's main, in this process (its measuring children, if any, are ``python -m`` runs)."""
    import importlib

    monkeypatch.chdir(repo_root)
    args = [a.replace("{tmp}", str(tmp_path)) for a in args]
    out = ["--out", str(tmp_path / ("run" if module == "bench.source_baseline" else "o.md"))]
    assert importlib.import_module(module).main([*args, *out]) == 0
    if module == "bench.source_baseline":
        got = json.loads((tmp_path / "b.json").read_text())
        assert 0 <= got["plain_lightly"]["linear_acc"] <= 1 and 0 <= got["ssl_transfer"]["knn_acc"] <= 1
    else:
        assert (tmp_path / "o.md").read_text().startswith("#")


@pytest.mark.parametrize("module", ["bench.loss_memory", "bench.eval_speed", "bench.seeds"])
def test_entries_start_as_modules(module, repo_root):
    """``python -m`` reaches main and its exit status (the entries that import torch late: others take
    seconds to import lightning, and their main is run above or by their own tests)."""
    p = subprocess.run([sys.executable, "-m", module, "--help"], cwd=repo_root, capture_output=True, text=True,
                       timeout=300)
    assert p.returncode == 0 and p.stdout.startswith("usage: "), p.stderr[-2000:]
    p = subprocess.run([sys.executable, "-m", module, "--no-such-option"], cwd=repo_root, capture_output=True,
                       text=True, timeout=300)
    assert p.returncode == 2 and "error: " in p.stderr
