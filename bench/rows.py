"""Result rows of the benchmarks: JSON lines, mean ± std over seeds, paired deltas.

A *choice row* (written while choosing: ``bench.sweep``, ``bench.quality``) holds validation
numbers only; a *final row* (``bench.final``, the one step that reads the test split) adds the
test numbers and ``test_read_at``. Rows are keyed by ``(group, seed, model)``, ``group`` being
e.g. the teacher budget.
"""

from __future__ import annotations

import json
import statistics
from pathlib import Path

VAL = (("val_linear_acc", "val linear"), ("val_knn_acc", "val kNN"))
TEST = (("linear_acc", "test linear"), ("knn_acc", "test kNN"))


def read_rows(*paths: str | Path) -> list[dict]:
    """The rows of JSON-lines files, in order (missing files give none)."""
    rows = []
    for path in paths:
        path = Path(path)
        if path.is_file():
            rows += [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return rows


def append_row(path: str | Path, row: dict) -> None:
    with open(path, "a") as f:
        f.write(json.dumps(row) + "\n")


def key(row: dict) -> tuple:
    return (row.get("group", ""), row["seed"], row["model"])


def mean_std(vals: list[float]) -> tuple[float, float | None, int]:
    return (statistics.fmean(vals), statistics.stdev(vals) if len(vals) > 1 else None, len(vals))


def fmt(ms, signed: bool = False) -> str:
    if ms is None:
        return "–"
    mean, std, _ = ms
    s = f"{mean:+.2f}" if signed else f"{mean:.2f}"
    return s + (f" ± {std:.2f}" if std is not None else "")


def aggregate(rows: list[dict], metrics=VAL + TEST, refs=("teacher", "teacher_continued"),
              order: list[str] | None = None) -> dict[str, dict[str, dict]]:
    """group -> model -> {metric: (mean, std, n) in %, ``d_<ref>_<metric>``: paired deltas against
    the reference model of the same seed, ``seeds``}; metrics a row lacks are skipped."""
    by = {key(r): r for r in rows}  # the last row of a key wins
    out: dict[str, dict[str, dict]] = {}
    for group in sorted({k[0] for k in by}, key=str):
        models = [k[2] for k in by if k[0] == group]
        names = [m for m in (order or []) if m in models] + sorted({m for m in models if m not in (order or [])})
        out[group] = {}
        for model in dict.fromkeys(names):
            seeds = sorted(k[1] for k in by if k[0] == group and k[2] == model)
            entry: dict = {"seeds": seeds}
            for metric, _ in metrics:
                vals = [by[(group, s, model)].get(metric) for s in seeds]
                if any(v is None for v in vals):
                    continue
                entry[metric] = mean_std([100 * v for v in vals])
                for ref in refs:
                    paired = [100 * (by[(group, s, model)][metric] - by[(group, s, ref)][metric])
                              for s in seeds if by.get((group, s, ref), {}).get(metric) is not None]
                    if paired and model != ref:
                        entry[f"d_{ref}_{metric}"] = mean_std(paired)
            out[group][model] = entry
    return out
