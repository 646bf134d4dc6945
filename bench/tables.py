"""Render sweep results (bench/sweep.py's sweep.jsonl) as markdown tables with deltas.

    python bench/tables.py docs/data/h100_defaults_short_seed0.jsonl [...]

Per seed, deltas are against that seed's teacher (when the file has one). The test columns are
reported for completeness; every choice in docs/ was made on the val columns.
"""

from __future__ import annotations

import json
import sys


def table(path: str) -> str:
    rows = [json.loads(line) for line in open(path)]
    teacher = {r["seed"]: r for r in rows if r["model"] == "teacher"}
    out = ["| seed | model | overrides | val linear | val kNN | test linear | test kNN |",
           "|---|---|---|---|---|---|---|"]
    for r in rows:
        t = teacher.get(r["seed"])

        def cell(key, r=r, t=t):
            d = "" if t is None or r is t else f" ({100 * (r[key] - t[key]):+.2f})"
            return f"{100 * r[key]:.2f}{d}"

        over = ", ".join(o.removeprefix("transfer.") for o in r.get("overrides", [])) or "-"
        out.append(f"| {r['seed']} | {r['model']} | {over} | {cell('val_linear_acc')} | {cell('val_knn_acc')} | "
                   f"{cell('linear_acc')} | {cell('knn_acc')} |")
    return "\n".join(out)


if __name__ == "__main__":
    for p in sys.argv[1:]:
        print(f"### {p}\n\n{table(p)}\n")
