"""Sweep transfer-stage options against one shared teacher and its "teacher continued" control,
on the validation split only.

    python -m bench.sweep configs/quickstart.yaml --variants bench/variants/lr.yaml --out runs/sweep \
        [--set key=value ...] [--seeds 0 1 2] [--only NAME ...] [--teacher RUN/teacher.pt] [--no-control]
    python -m bench.final runs/sweep [--models NAME ...]     # afterwards: the test split, once

``variants.yaml`` maps a variant name to a list of ``key=value`` overrides applied on top of the
base config for the student only (the teacher and the control are shared; all see the same
batches). Every model is saved under ``OUT/work`` and evaluated on the validation split; rows are
appended to ``OUT/choices.jsonl`` as each model finishes and summarised in ``OUT/choices.md``.
No number of the test split is computed here: ``bench.final`` does that once for the chosen rows.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import yaml

from .engine import Variant, run
from .report import choice_table


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("config")
    ap.add_argument("--variants", required=True, help="YAML: name -> [key=value, ...]")
    ap.add_argument("--out", required=True)
    ap.add_argument("--set", dest="overrides", nargs="+", action="extend", default=[])
    ap.add_argument("--seeds", type=int, nargs="+", default=[0])
    ap.add_argument("--only", nargs="+", help="run only these variants")
    ap.add_argument("--work", help="folder for models, checkpoints and logs (default: OUT/work)")
    ap.add_argument("--teacher", help="teacher.pt of an earlier run (every seed): skip the source stage")
    ap.add_argument("--no-control", action="store_true", help="skip teacher continued")
    args = ap.parse_args(argv)
    spec = yaml.safe_load(Path(args.variants).read_text())
    variants = {"teacher_continued": Variant("teacher + SSL for the transfer steps", kind="control")}
    if args.no_control:
        variants = {}
    variants.update({name: Variant(", ".join(over) or "the base config", list(over)) for name, over in spec.items()
                     if not args.only or name in args.only})
    out = Path(args.out)
    teachers = {("sweep", s): args.teacher for s in args.seeds} if args.teacher else None
    rows = run(args.config, args.overrides, args.seeds, {"sweep": []}, variants, out,
               Path(args.work) if args.work else None, teachers)
    (out / "choices.md").write_text(choice_table(rows))
    print(choice_table(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
