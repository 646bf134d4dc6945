"""bench.classify in one command on a tiny subset: every row, choices on val, the test split once."""

import json

from bench import classify as bench
from bench.rows import read_rows


def test_quick_benchmark_chooses_on_val_then_reads_the_test_split_once(tmp_path):
    out = tmp_path / "c"
    results, plot = tmp_path / "section.md", tmp_path / "plot.png"
    argv = ["--quick", "--out", str(out), "--seeds", "0", "--fractions", "0.2", "--results", str(results),
            "--plot", str(plot)]
    assert bench.main(argv) == 0
    choices = read_rows(out / "choices.jsonl")
    models = {r["model"] for r in choices}
    assert set(bench.ROWS) <= models  # every row, plus the grids' candidates
    assert all(r["val_top1_acc"] is not None and "top1_acc" not in r for r in choices)  # val only while choosing
    chosen = json.loads((out / "chosen.json").read_text())["labels20%"]
    assert set(chosen) == set(bench.GRIDS)
    for grid, c in chosen.items():
        assert c["candidate"] == max(c["val_top1_acc"], key=c["val_top1_acc"].get), grid
    final = read_rows(out / "final.jsonl")
    assert sorted(r["model"] for r in final) == sorted(bench.ROWS)
    assert all(0 <= r["top1_acc"] <= 1 and r["test_read_at"] for r in final)
    # the chosen candidate of the choose seed is reused as its row (same overrides, same model file)
    relaxed = next(r for r in choices if r["model"] == "relaxed")
    assert relaxed["from_candidate"] == chosen["relaxed"]["candidate"]
    text = results.read_text()
    assert "CE + relaxed contrastive" in text and "Reproduce: `python -m bench.classify --quick" in text
    assert plot.is_file()
    # a rerun trains nothing and never reads the test split again
    before = (out / "final.jsonl").read_text(), (out / "choices.jsonl").read_text()
    assert bench.main(argv) == 0
    assert ((out / "final.jsonl").read_text(), (out / "choices.jsonl").read_text()) == before
