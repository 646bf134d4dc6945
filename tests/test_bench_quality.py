"""bench/quality.py: the --quick run produces every row of the table and the plot; the
aggregation over seeds and budgets is mean ± std with paired deltas."""

import importlib.util
import json
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
spec = importlib.util.spec_from_file_location("bench_quality", ROOT / "bench" / "quality.py")
quality = importlib.util.module_from_spec(spec)
spec.loader.exec_module(quality)


def test_quick_run_writes_every_row_the_table_and_the_plot(tmp_path):
    out = tmp_path / "q"
    argv = ["--quick", "--out", str(out), "--results", str(tmp_path / "results.md"),
            "--plot", str(tmp_path / "quality.png")]
    threads = torch.get_num_threads()
    try:
        assert quality.main(argv) == 0
        rows = quality.read_rows(out / "quality.jsonl")
        # a rerun finds every row done: nothing is trained or evaluated again
        assert quality.main(argv) == 0
        assert len(quality.read_rows(out / "quality.jsonl")) == len(rows)
    finally:
        torch.set_num_threads(threads)  # --quick runs with 1 thread
    assert [r["model"] for r in rows] == quality.ORDER  # teacher, control, every loss and setting
    for r in rows:
        assert r["teacher_epochs"] == 0.25 and r["seed"] == 0
        for key, _ in quality.METRICS:
            assert 0.0 <= r[key] <= 1.0
    feat = {r["model"]: r["feat_dim"] for r in rows}
    assert (feat["teacher"], feat["dim64"], feat["dim64_backbone"], feat["compression"]) == (512, 64, 512, 256)
    text = (tmp_path / "results.md").read_text()
    for model in quality.ORDER:
        assert f"| {model}: " in text
    assert "Reproduce: `python bench/quality.py --quick" in text
    assert (tmp_path / "quality.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def fake_rows():
    rows = []
    for epochs in (1.0, 4.0):
        for seed, shift in ((0, 0.0), (1, 0.02)):
            for i, model in enumerate(["teacher", "teacher_continued", "relaxed_s3", "rkd", "pkt"]):
                acc = 0.80 + 0.01 * i + shift + (0.05 if epochs == 4.0 else 0.0)
                rows.append({"teacher_epochs": epochs, "seed": seed, "model": model, "linear_acc": acc,
                             "knn_acc": acc - 0.1, "val_linear_acc": acc, "val_knn_acc": acc - 0.1})
    return rows


def test_aggregate_is_mean_std_over_seeds_with_paired_deltas():
    agg = quality.aggregate(fake_rows())
    assert list(agg) == [1.0, 4.0]
    mean, std, n = agg[1.0]["relaxed_s3"]["linear_acc"]
    assert (mean, n) == (pytest.approx(83.0), 2) and std == pytest.approx(1.41421356, rel=1e-6)
    d_mean, d_std, _ = agg[4.0]["relaxed_s3"]["d_teacher_linear_acc"]
    assert d_mean == pytest.approx(2.0) and d_std == pytest.approx(0.0, abs=1e-9)
    assert "d_teacher_linear_acc" not in agg[1.0]["teacher"]


def test_render_states_the_verdict_for_each_budget(tmp_path):
    text = quality.render(fake_rows(), tmp_path / "r.md", None, "python bench/quality.py X", "# Head\n")
    assert "### Teacher of 1 epochs" in text and "### Teacher of 4 epochs" in text
    assert "83.00 ± 1.41" in text
    # relaxed_s3 (index 2) is below rkd (3) and pkt (4), above the control (1)
    assert "**relaxed_s3 vs rkd** (2 seed(s)): does not beat it" in text
    assert "**relaxed_s3 vs teacher_continued** (2 seed(s)): beats it on both test metrics" in text
    assert (tmp_path / "r.md").read_text().startswith("# Head")
    json.dumps(quality.aggregate(fake_rows()))  # serialisable


def test_render_merges_the_rows_of_several_files_and_plots_each_budget(tmp_path):
    rows = fake_rows()
    short, long = tmp_path / "short.jsonl", tmp_path / "long.jsonl"
    short.write_text("".join(json.dumps(r) + "\n" for r in rows if r["teacher_epochs"] == 1.0))
    long.write_text("".join(json.dumps(r) + "\n" for r in rows if r["teacher_epochs"] == 4.0))
    argv = ["--render", str(short), str(long), "--results", str(tmp_path / "r.md"),
            "--plot", str(tmp_path / "q.png"), "--command", "CMD"]
    assert quality.main(argv) == 0
    text = (tmp_path / "r.md").read_text()
    merged = quality.render(rows, None, None, "CMD")  # the same table as from one file of all rows
    assert text == "# Transfer quality benchmark\n\n" + merged + "\n![quality plot](q.png)\n"
    assert "### Teacher of 1 epochs" in text and "### Teacher of 4 epochs" in text
    from PIL import Image

    with Image.open(tmp_path / "q.png") as img:  # one row of panels per budget: taller than wide / 2
        width, height = img.size
    assert height > width / 2
