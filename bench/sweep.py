"""Sweep transfer-stage options against one shared teacher and its "teacher continued" control.

    python bench/sweep.py configs/quickstart.yaml --variants bench/variants.yaml --out runs/sweep \
        [--set key=value ...] [--seeds 0 1 2]

``variants.yaml`` maps a variant name to a list of ``key=value`` overrides applied on top of
the base config for the student only (the teacher and the control are shared). Every model is
evaluated on the validation split (for choosing defaults) and the test split (reported, never
used for choosing). Results are appended to ``OUT/sweep.jsonl`` as each model finishes and
summarised in ``OUT/sweep.md``.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from pathlib import Path

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from ssl_transfer.config import apply_overrides, config_from_dict, load_yaml  # noqa: E402
from ssl_transfer.data import DataBundle  # noqa: E402
from ssl_transfer.pipeline import (  # noqa: E402
    continue_teacher,
    evaluate,
    load_teacher,
    pretrain_teacher,
    setup_runtime,
    transfer_student,
)


def summarise(rows: list[dict]) -> str:
    lines = ["| seed | model | val linear | val kNN | test linear | test kNN | train s |", "|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['seed']} | {r['model']} | {100 * r['val_linear_acc']:.2f} | {100 * r['val_knn_acc']:.2f} | "
                     f"{100 * r['linear_acc']:.2f} | {100 * r['knn_acc']:.2f} | {r['train_s']:.0f} |")
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("config")
    ap.add_argument("--variants", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--set", dest="overrides", nargs="+", action="extend", default=[])
    ap.add_argument("--seeds", type=int, nargs="+", default=[0])
    ap.add_argument("--only", nargs="*", help="run only these variants")
    ap.add_argument("--work", help="folder for checkpoints and logs (default: OUT)")
    ap.add_argument("--teacher", help="teacher.pt of an earlier run: skip the source stage")
    ap.add_argument("--no-control", action="store_true", help="skip teacher continued")
    args = ap.parse_args(argv)
    variants = yaml.safe_load(Path(args.variants).read_text())
    if args.only:
        variants = {k: v for k, v in variants.items() if k in args.only}
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    rows = []
    for seed in args.seeds:
        base = apply_overrides(load_yaml(args.config), [*args.overrides, f"seed={seed}"])
        cfg = config_from_dict(base)
        setup_runtime(cfg)
        bundle = DataBundle.from_config(cfg.data, cfg.seed, method=cfg.source.method)
        run_dir = Path(args.work or out) / f"seed{seed}"

        def record(model, module, seconds, extra=None, seed=seed, bundle=bundle, cfg=cfg):
            res = evaluate(module, bundle, cfg)
            row = {"seed": seed, "model": model, "train_s": seconds, **{k: res[k] for k in (
                "linear_acc", "knn_acc", "val_linear_acc", "val_knn_acc")}, "overrides": extra or []}
            rows.append(row)
            with open(out / "sweep.jsonl", "a") as f:
                f.write(json.dumps(row) + "\n")
            (out / "sweep.md").write_text(summarise(rows))
            print(json.dumps(row), flush=True)

        if args.teacher:
            teacher = load_teacher(cfg, args.teacher, bundle)
        else:
            teacher, t = pretrain_teacher(cfg, bundle, run_dir)
            record("teacher", teacher.backbone, t)
        if cfg.controls.teacher_continued and not args.no_control:
            cont, t = continue_teacher(cfg, teacher, bundle, run_dir)
            record("teacher_continued", cont.backbone, t)
        for name, overrides in variants.items():
            vcfg = config_from_dict(apply_overrides(dataclasses.asdict(cfg), list(overrides)))
            # data.* overrides (views, augmentation) need the variant's own loaders
            vbundle = bundle if vcfg.data == cfg.data else DataBundle.from_config(
                vcfg.data, vcfg.seed, method=vcfg.source.method)
            start = time.perf_counter()
            student, _ = transfer_student(vcfg, teacher, vbundle, run_dir, name=f"student_{name}")
            record(name, student.backbone, time.perf_counter() - start, overrides, bundle=vbundle)
    return 0


if __name__ == "__main__":
    sys.exit(main())
