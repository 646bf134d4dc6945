"""``python -m bench``, the one benchmark entry point: a smoke run on tiny sizes checks that every
part (S1-S4, extraction throughput) lands in the JSON, the markdown and the plot with ratios
that are what they claim to be; the stage-time reader is checked on a hand-made run directory."""

import json

import pytest
import torch

from bench.__main__ import main, markdown, run_stages, s4_cases


@pytest.fixture
def keep_threads():
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


def test_bench_quick_writes_every_part(tmp_path, repo_root, keep_threads):
    assert main(["--quick", "--config", str(repo_root / "configs" / "smoke.yaml"), "--out-dir", str(tmp_path)]) == 0
    res = json.loads((tmp_path / "docs" / "data" / "benchmarks.json").read_text())
    assert set(res["S1"]) == {"1", "2"}
    for r in res["S1"].values():
        assert r["ratio"] == pytest.approx(r["median_s"]["loss_fwd_bwd"] / r["median_s"]["matmul"])
    s2 = res["S2"]
    assert s2["ratio"] == pytest.approx(s2["median_s"]["transfer_step"] / s2["median_s"]["simclr_step"])
    for data in ("fashion_mnist", "cifar_sized"):
        for kind in ("simclr", "transfer"):
            r = res["S3"][data][kind]
            assert r["ratio"] == pytest.approx(r["real_median_s"] / r["preloaded_median_s"])
            assert r["real_images_per_s"] == pytest.approx(res["S3"]["batch_size"] / r["real_median_s"])
    assert [(r["n"], r["block"]) for r in res["S4"]] == [(64, None), (64, 32)]  # --quick: n = 64, block 32
    assert all(r["seconds"] > 0 for r in res["S4"])
    assert res["extraction"]["images"] == 60  # the --quick val split
    md = (tmp_path / "docs" / "benchmarks.md").read_text()
    assert md.startswith("# Benchmarks") and "| S1 " in md and "| S3 " in md and "feature extraction" in md
    assert (tmp_path / "docs" / "benchmarks.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # --render rebuilds the same report from the JSON, with the notes appended
    (tmp_path / "notes.md").write_text("## Why\n\nbecause\n")
    assert main(["--render", str(tmp_path / "docs" / "data" / "benchmarks.json"), "--notes",
                 str(tmp_path / "notes.md"), "--out-dir", str(tmp_path)]) == 0
    assert (tmp_path / "docs" / "benchmarks.md").read_text() == md.rstrip("\n") + "\n\n## Why\n\nbecause\n\n"


def test_s4_is_dense_at_every_n_and_blocked_only_where_n_exceeds_the_block():
    got = [(c["n"], c["block"]) for c in s4_cases((32, 64, 128), 16, 64)]
    assert got == [(32, None), (64, None), (128, None), (128, 64)]
    assert all(c["kind"] == "relaxed" and c["backward"] and c["d"] == 16 for c in s4_cases((128,), 16, 64))


def test_run_stages_reads_times_steps_and_eval_share(tmp_path):
    run = tmp_path / "run"
    (run / "logs" / "source").mkdir(parents=True)
    (run / "logs" / "source" / "metrics.csv").write_text(
        "epoch,step,train_loss_step\n" + "".join(f"0,{s},5.0\n" for s in range(9, 100, 10)))
    results = {"config": {"data": {"batch_size": 256}},
               "timings_s": {"source": 50.0, "transfer": 20.0, "eval": 30.0, "total": 100.0},
               "teacher": {"eval_s": 10.0}, "student": {"eval_s": 12.0}, "controls": {"c": {"eval_s": 8.0}}}
    (run / "results.json").write_text(json.dumps(results))
    got = run_stages(run)
    assert got["source"] == {"seconds": 50.0, "steps": 100, "images_per_s": pytest.approx(100 * 256 / 50.0)}
    assert got["transfer"]["steps"] is None and got["transfer"]["images_per_s"] is None  # no log: no count
    assert got["eval_per_model_s"] == {"teacher": 10.0, "student": 12.0, "c": 8.0}
    assert got["eval_share"] == pytest.approx(0.3)
    res = {"command": "python -m bench", "date": "d", "json": "j", "plot": "p", "threads": 2, "S4": [],
           "machine": {"cpu": "c", "cores": 2, "torch": "t", "lightning": "l", "loadavg_start": 0.0,
                       "loadavg_end": 0.0}, "run_dir": str(run), "run": got}
    assert "evaluation share of the run: 30.0 %" in markdown(res)
