"""``python -m bench.metric`` (the embedded zero-shot benchmark) on a tiny run: choosing rows hold
validation-class numbers only, the final step reads the test classes once per model, a rerun
reads nothing again, and the table and plot are written."""

import json

from bench import metric

TEST_KEYS = ("recall@1", "recall@8", "map@r", "test_read_at")


def test_one_command_trains_chooses_on_val_reads_test_once_and_tabulates(tmp_path):
    out = tmp_path / "bench"
    args = ["--quick", "--out", str(out), "--seeds", "0", "--only", "teacher", "teacher_continued",
            "relaxed_teacher", "relaxed_dim64", "--results", str(tmp_path / "table.md"), "--plot",
            str(tmp_path / "plot.png")]
    assert metric.main(args) == 0
    choices = [json.loads(line) for line in (out / "choices.jsonl").read_text().splitlines()]
    assert [r["model"] for r in choices] == ["teacher", "teacher_continued", "relaxed_teacher", "relaxed_dim64"]
    for row in choices:
        assert 0 <= row["val_recall@1"] <= 1 and 0 <= row["val_map@r"] <= 1
        assert not any(k in row for k in TEST_KEYS)  # nothing of the test classes while choosing
    assert [r["embed_dim"] for r in choices] == [512, 512, 512, 64]
    final = (out / "final.jsonl").read_text()
    rows = [json.loads(line) for line in final.splitlines()]
    assert [r["model"] for r in rows] == [r["model"] for r in choices]
    assert all(all(k in r for k in TEST_KEYS) and r["test_classes"] == 5 for r in rows)  # digits 5-9
    assert all(r["val_recall@1"] == c["val_recall@1"] for r, c in zip(rows, choices))
    table = (tmp_path / "table.md").read_text()
    assert "relaxed_teacher: relaxed contrastive, student from the teacher" in table and "72.1" in table
    assert (tmp_path / "plot.png").stat().st_size > 0
    assert metric.main(args) == 0  # everything recorded: nothing trained, the test classes not read again
    assert (out / "final.jsonl").read_text() == final
