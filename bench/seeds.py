"""The whole pipeline (``ssl-transfer run``) over several seeds, summarised as mean ± std.

    python -m bench.seeds configs/quickstart.yaml --seeds 0 1 2 --out runs/quickstart_seeds \
        [--set key=value ...] [--markdown docs/data/quickstart_seeds.md]

Each seed is an ordinary run into ``OUT/seed<S>`` (a finished one is read back, an interrupted one
resumed), so each model's test split is read once, by the run's own final step, after every
choice was made on the validation split. The table gives, per model, the mean ± std over the
seeds of test and validation accuracy, and the paired differences against the teacher and the
control of the same seed: the README's quickstart table comes from here.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from ssl_transfer import load_config, run

from .report import summary_table
from .rows import TEST, VAL

MODELS = {"teacher": ("teacher",), "teacher_continued": ("controls", "teacher_continued"), "student": ("student",)}


def seed_rows(results: dict, seed: int, group: str) -> list[dict]:
    rows = []
    for name, path in MODELS.items():
        block = results
        for part in path:
            block = block.get(part, {}) if isinstance(block, dict) else {}
        if block:
            rows.append({"group": group, "seed": seed, "model": name,
                         **{m: block[m] for m, _ in VAL + TEST}, "linear_C": block["linear"].get("C")})
    return rows


def run_seeds(config: str, seeds: list[int], out: Path, overrides: list[str]) -> tuple[list[dict], dict]:
    rows, timings = [], {}
    for seed in seeds:
        folder = out / f"seed{seed}"
        done = folder / "results.json"
        results = json.loads(done.read_text()) if done.is_file() else None
        if results is None or results.get("status") != "completed":
            cfg = load_config(config, [*overrides, f"seed={seed}"])
            results = run(cfg, folder, resume=(folder / "run.json").is_file())
        rows += seed_rows(results, seed, Path(config).stem)
        timings[seed] = results["timings_s"]
    return rows, timings


def markdown(rows: list[dict], timings: dict, command: str) -> str:
    totals = [t["total"] for t in timings.values()]
    return "\n".join([
        summary_table(rows, order=list(MODELS)),
        f"Seeds: {', '.join(map(str, timings))}; wall time per run {min(totals):.0f}-{max(totals):.0f} s.",
        f"Command: `{command}`", ""])


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("config")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--out", required=True)
    ap.add_argument("--set", dest="overrides", nargs="+", action="extend", default=[])
    ap.add_argument("--markdown", help="also write the table here")
    args = ap.parse_args(argv)
    rows, timings = run_seeds(args.config, args.seeds, Path(args.out), args.overrides)
    command = "python -m bench.seeds " + " ".join(argv if argv is not None else sys.argv[1:])
    text = markdown(rows, timings, command)
    (Path(args.out) / "seeds.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    if args.markdown:
        Path(args.markdown).write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
