"""Quality benchmark of the transfer stage (issue 5, item 7): every loss and setting against the
same teacher, at one or two teacher budgets, over seeds; linear probe and kNN, mean ± std.

    python bench/quality.py configs/quickstart.yaml --seeds 0 1 2 --teacher-epochs 0.8 4 \
        --out docs/data/quality --set trainer.num_threads=1 [--teacher 0.8:0=RUN/teacher.pt]
    python bench/quality.py --quick --out /tmp/q          # tiny smoke run (tests)
    python bench/quality.py --render A.jsonl [B.jsonl ...]   # table + plot only (rows merged)

Per teacher budget (``source.epochs``) and seed: a SimCLR teacher (trained, or given with
``--teacher EPOCHS:SEED=PATH``), then every model of ``MODELS`` trained from it for the config's
``transfer.epochs`` on the same batches (same seed): "teacher continued" (the teacher trained
that much longer with SimCLR), students of each transfer loss (no cross-batch memory, so the
losses are compared alone), the relaxed contrastive loss with cross-batch memory (the
quickstart default), dimension reduction (512 -> 64 linear head, evaluated on the 64-d
embedding and on the backbone) and compression (a small 4-layer CNN from scratch, next to the
same CNN trained by SimCLR for the same steps). Everything else is the config's (quickstart:
student initialised from the teacher, teacher embedding the clean image, AdamW 1e-3).

Evaluation: frozen features, linear probe (C chosen on the validation split, test evaluated
once) and weighted kNN; final-epoch models, nothing selected on test. Rows are appended to
``OUT/quality.jsonl`` as each model finishes (a rerun skips rows already there and reloads saved
teachers); ``--results`` renders the markdown table and ``--plot`` the PNG.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

# name: (description, overrides applied to the transfer stage, kind)
# kind: "student" (transfer_student), "control" (teacher continued), "ssl_small" (small CNN SimCLR)
NO_MEM = "transfer.memory_size=0"
MODELS: dict[str, tuple[str, list[str], str]] = {
    "teacher_continued": ("teacher + SimCLR for the transfer steps", [], "control"),
    "relaxed_s1": ("relaxed contrastive, sigma 1", ["transfer.loss=relaxed_contrastive", "transfer.sigma=1",
                                                    NO_MEM], "student"),
    "relaxed_s3": ("relaxed contrastive, sigma 3", ["transfer.loss=relaxed_contrastive", "transfer.sigma=3",
                                                    NO_MEM], "student"),
    "relaxed_ms": ("relaxed MS, sigma 3", ["transfer.loss=relaxed_ms", "transfer.sigma=3", NO_MEM], "student"),
    "rkd": ("RKD (distance 1, angle 2)", ["transfer.loss=rkd", NO_MEM], "student"),
    "pkt": ("PKT", ["transfer.loss=pkt", NO_MEM], "student"),
    "darkrank": ("DarkRank (hard, k 4)", ["transfer.loss=darkrank", NO_MEM], "student"),
    "regression": ("regression (FitNet-style, linear map)", ["transfer.loss=regression", NO_MEM], "student"),
    "relaxed_s3_mem": ("relaxed contrastive, sigma 3, cross-batch memory 2048",
                       ["transfer.loss=relaxed_contrastive", "transfer.sigma=3", "transfer.memory_size=2048"],
                       "student"),
    "dim64": ("dimension reduction 512 -> 64 (relaxed s3 + memory), 64-d embedding",
              ["transfer.loss=relaxed_contrastive", "transfer.sigma=3", "transfer.memory_size=2048",
               "transfer.student_head=linear", "transfer.embed_dim=64"], "student"),
    "compression": ("compression: small CNN from scratch (relaxed s3 + memory)",
                    ["transfer.loss=relaxed_contrastive", "transfer.sigma=3", "transfer.memory_size=2048",
                     "transfer.student_backbone=small_cnn", "transfer.student_init=scratch"], "student"),
    "small_cnn_simclr": ("small CNN from scratch, SimCLR for the same steps (control)", [], "ssl_small"),
}
# extra evaluated rows (not trained separately)
DERIVED = {"dim64_backbone": "dimension reduction student, its 512-d backbone feature"}
ORDER = ["teacher", *(m for name in MODELS for m in (name, *(d for d in DERIVED if d.startswith(name + "_"))))]
DESCRIPTION = {"teacher": "teacher (SimCLR)", **{k: v[0] for k, v in MODELS.items()}, **DERIVED}

QUICK = [  # a few steps on a few hundred images: checks that every row is produced (tests)
    "data.batch_size=16", "data.train_subset=64", "data.val_size=60", "data.eval_train_subset=80",
    "data.test_subset=60", "data.num_workers=0", "data.eval_batch_size=256", "source.epochs=0.25",
    "transfer.epochs=0.25", "eval.knn_k=5", "eval.linear_Cs=[1.0]", "eval.linear_max_iter=10",
    "trainer.num_threads=1", "trainer.enable_progress_bar=false",
]
QUICK_MEMORY = 48  # memory_size in --quick (the batch has 32 embeddings)
METRICS = (("val_linear_acc", "val linear"), ("val_knn_acc", "val kNN"), ("linear_acc", "test linear"),
           ("knn_acc", "test kNN"))


# ---------------------------------------------------------------------------------- training
def run_benchmark(args) -> list[dict]:
    import torch
    from torch import nn

    from ssl_transfer.config import apply_overrides, config_from_dict, load_yaml
    from ssl_transfer.data import DataBundle
    from ssl_transfer.pipeline import (
        continue_teacher,
        evaluate,
        load_teacher,
        pretrain_teacher,
        setup_runtime,
        transfer_student,
    )
    from ssl_transfer.stages import pretrain

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    jsonl = out / "quality.jsonl"
    rows = read_rows(jsonl) if jsonl.is_file() else []
    done = {(r["teacher_epochs"], r["seed"], r["model"]) for r in rows}
    given = dict(parse_teacher(t) for t in args.teacher)
    overrides = [*(QUICK if args.quick else []), *args.overrides]
    only = set(args.only or ORDER)

    def record(row: dict) -> None:
        rows.append(row)
        with open(jsonl, "a") as f:
            f.write(json.dumps(row) + "\n")
        print(json.dumps({k: row[k] for k in ("teacher_epochs", "seed", "model", "linear_acc", "knn_acc",
                                               "val_linear_acc", "val_knn_acc")}), flush=True)

    for epochs in args.teacher_epochs:
        for seed in args.seeds:
            base = apply_overrides(load_yaml(args.config), [*overrides, f"seed={seed}", f"source.epochs={epochs}"])
            cfg = config_from_dict(base)
            setup_runtime(cfg)
            bundle = DataBundle.from_config(cfg.data, cfg.seed, method=cfg.source.method)
            work = Path(args.work or out / "work") / f"teacher{epochs:g}" / f"seed{seed}"
            work.mkdir(parents=True, exist_ok=True)
            key = (epochs, seed)

            def row(model, module, train_s, extra=None, cfg=cfg, seed=seed, epochs=epochs, bundle=bundle):
                res = evaluate(module, bundle, cfg)
                return {"teacher_epochs": epochs, "seed": seed, "model": model, "train_s": train_s,
                        "eval_s": res["eval_s"], "feat_dim": res["feat_dim"], "linear_C": res["linear"].get("C"),
                        **{k: res[k] for k, _ in METRICS}, **(extra or {})}

            wanted = [m for m in ORDER if m in only and (epochs, seed, m) not in done]
            if not wanted:
                continue
            # the teacher: given, saved by an earlier (interrupted) run, or trained now
            if key in given:
                teacher, t_s, source = load_teacher(cfg, given[key], bundle), None, str(given[key])
            elif (work / "teacher.pt").is_file():
                teacher, t_s, source = load_teacher(cfg, work / "teacher.pt", bundle), None, "trained (reloaded)"
            else:
                teacher, t_s = pretrain_teacher(cfg, bundle, work)
                source = "trained"
            if "teacher" in wanted:
                record(row("teacher", teacher.backbone, t_s, {"teacher_source": source,
                                                              "overrides": [f"source.epochs={epochs}"]}))
            for name in wanted:
                if name not in MODELS:
                    continue
                _, over, kind = MODELS[name]
                if args.quick:
                    over = [o.replace("memory_size=2048", f"memory_size={QUICK_MEMORY}") for o in over]
                vcfg = config_from_dict(apply_overrides(dataclasses.asdict(cfg), list(over)))
                start = time.perf_counter()
                if kind == "control":
                    model, _ = continue_teacher(vcfg, teacher, bundle, work)
                    record(row(name, model.backbone, time.perf_counter() - start, {"overrides": over}))
                elif kind == "ssl_small":  # the compression student's architecture, trained by SimCLR
                    torch.manual_seed(seed)
                    small_cfg = dataclasses.replace(vcfg.source, backbone="small_cnn")
                    fresh = pretrain.SimCLRModule(small_cfg, bundle.channels, vcfg.data.batch_size)
                    model, _ = continue_teacher(vcfg, fresh, bundle, work / name)
                    record(row(name, model.backbone, time.perf_counter() - start,
                               {"overrides": ["source.backbone=small_cnn (from scratch)"]}))
                else:
                    student, _ = transfer_student(vcfg, teacher, bundle, work, name=f"student_{name}")
                    train_s = time.perf_counter() - start
                    if name == "dim64":
                        embed = nn.Sequential(student.backbone, student.head)
                        record(row(name, embed, train_s, {"overrides": over, "features": "embedding"}))
                        if "dim64_backbone" in only:
                            record(row("dim64_backbone", student.backbone, 0.0,
                                       {"overrides": over, "features": "backbone"}))
                    else:
                        record(row(name, student.backbone, train_s, {"overrides": over}))
            del teacher
    return rows


def parse_teacher(text: str) -> tuple[tuple[float, int], str]:
    """``EPOCHS:SEED=PATH`` -> ((epochs, seed), path)."""
    try:
        key, path = text.split("=", 1)
        epochs, seed = key.split(":")
        return (float(epochs), int(seed)), path
    except ValueError:
        raise SystemExit(f"--teacher {text!r}: write EPOCHS:SEED=PATH, e.g. 0.8:0=runs/quickstart/teacher.pt") from None


def read_rows(path: Path) -> list[dict]:
    return [json.loads(line) for line in Path(path).read_text().splitlines() if line.strip()]


# ---------------------------------------------------------------------------------- reporting
def aggregate(rows: list[dict]) -> dict[float, dict[str, dict]]:
    """budget -> model -> {metric: (mean, std, n)} and paired deltas against the teacher and the
    control of the same seed (mean, std over seeds)."""
    out: dict[float, dict[str, dict]] = {}
    by = {(r["teacher_epochs"], r["seed"], r["model"]): r for r in rows}  # last row of a key wins
    for epochs in sorted({r["teacher_epochs"] for r in rows}):
        models: dict[str, dict] = {}
        for model in [m for m in ORDER if any(k[0] == epochs and k[2] == m for k in by)]:
            seeds = sorted(k[1] for k in by if k[0] == epochs and k[2] == model)
            entry: dict = {"seeds": seeds}
            train = [by[(epochs, s, model)].get("train_s") for s in seeds]
            entry["train_s"] = statistics.fmean(train) if all(t is not None for t in train) else None
            for key, _ in METRICS:
                vals = [100 * by[(epochs, s, model)][key] for s in seeds]
                entry[key] = mean_std(vals)
                for ref in ("teacher", "teacher_continued"):
                    paired = [100 * (by[(epochs, s, model)][key] - by[(epochs, s, ref)][key])
                              for s in seeds if (epochs, s, ref) in by]
                    if paired and model != ref:
                        entry[f"d_{ref}_{key}"] = mean_std(paired)
            models[model] = entry
        out[epochs] = models
    return out


def mean_std(vals: list[float]) -> tuple[float, float | None, int]:
    return (statistics.fmean(vals), statistics.stdev(vals) if len(vals) > 1 else None, len(vals))


def fmt(ms, signed=False) -> str:
    mean, std, _ = ms
    s = f"{mean:+.2f}" if signed else f"{mean:.2f}"
    return s + (f" ± {std:.2f}" if std is not None else "")


def table(agg: dict) -> str:
    lines = []
    for epochs, models in agg.items():
        lines += [f"### Teacher of {epochs:g} epochs", "",
                  "| model | seeds | val linear | val kNN | test linear | test kNN | Δ test linear vs teacher "
                  "| Δ test kNN vs teacher | Δ test linear vs continued | Δ test kNN vs continued | train s |",
                  "|---|---|---|---|---|---|---|---|---|---|---|"]
        for model, e in models.items():
            cells = [fmt(e[k]) for k, _ in METRICS]
            deltas = [fmt(e[f"d_{ref}_{k}"], signed=True) if f"d_{ref}_{k}" in e else "–"
                      for ref in ("teacher", "teacher_continued") for k in ("linear_acc", "knn_acc")]
            train = "–" if e["train_s"] is None else f"{e['train_s']:.0f}"
            lines.append(f"| {model}: {DESCRIPTION.get(model, model)} | {len(e['seeds'])} | "
                         + " | ".join(cells + deltas + [train]) + " |")
        lines.append("")
    return "\n".join(lines)


def verdict(agg: dict) -> str:
    """Does relaxed contrastive (sigma 3, alone and with memory) beat RKD, PKT and teacher
    continued on mean test linear and test kNN accuracy? (val shown alongside)"""
    lines = []
    for epochs, models in agg.items():
        for ours in ("relaxed_s3", "relaxed_s3_mem"):
            if ours not in models:
                continue
            for other in ("rkd", "pkt", "teacher_continued"):
                if other not in models:
                    continue
                parts = []
                for key, label in METRICS:
                    diff = models[ours][key][0] - models[other][key][0]
                    parts.append(f"{label} {diff:+.2f}")
                n = min(len(models[ours]["seeds"]), len(models[other]["seeds"]))
                wins = all(models[ours][k][0] > models[other][k][0] for k in ("linear_acc", "knn_acc"))
                lines.append(f"- teacher {epochs:g} ep, **{ours} vs {other}** ({n} seed(s)): "
                             f"{'beats it on both test metrics' if wins else 'does not beat it on both test metrics'}"
                             f" ({', '.join(parts)} points)")
    return "\n".join(lines)


def plot(agg: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    budgets = list(agg)  # one row of panels (linear, kNN) per teacher budget
    fig, axes = plt.subplots(len(budgets), 2, figsize=(14, 1.2 + 0.42 * sum(len(agg[e]) for e in budgets)
                                                       + 1.0 * len(budgets)), squeeze=False,
                             height_ratios=[len(agg[e]) + 2 for e in budgets])
    for b, epochs in enumerate(budgets):
        models = agg[epochs]
        names = list(models)[::-1]
        for j, (key, label) in enumerate((("linear_acc", "test linear accuracy (%)"),
                                          ("knn_acc", "test kNN accuracy (%)"))):
            ax = axes[b][j]
            means = [models[m][key][0] for m in names]
            errs = [models[m][key][1] or 0.0 for m in names]
            colors = ["tab:gray" if m in ("teacher", "teacher_continued", "small_cnn_simclr") else
                      "tab:blue" if m.startswith("relaxed") or m.startswith("dim64") or m == "compression"
                      else "tab:orange" for m in names]
            ax.barh(range(len(names)), means, xerr=errs, color=colors)
            if "teacher" in models:
                ax.axvline(models["teacher"][key][0], color="k", lw=0.8, ls="--")
            ax.set_yticks(range(len(names)), names)
            lo = min(means) - 2
            ax.set_xlim(max(0, lo), max(means) + 1)
            n = max(len(models[m]["seeds"]) for m in names)
            ax.set_title(f"teacher {epochs:g} ep: {label}\n(mean{' ± std' if n > 1 else ''}, {n} seed(s))",
                         fontsize=9)
            ax.set_xlabel(label)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def render(rows: list[dict], results: Path | None, plot_path: Path | None, command: str,
           notes: str | None = None) -> str:
    agg = aggregate(rows)
    budgets = ", ".join(f"{e:g}" for e in agg)
    seeds = sorted({r["seed"] for r in rows})
    text = "\n".join([
        "## Measured table",
        "",
        f"Teacher budgets (source epochs): {budgets}; seeds: {', '.join(map(str, seeds))}. "
        "Numbers are accuracies in %, mean ± std over seeds (no ± with one seed); Δ columns are "
        "paired differences against the teacher / teacher continued of the same seed.",
        "",
        table(agg),
        "Does relaxed contrastive beat RKD, PKT and teacher continued (mean test accuracy; "
        "differences in points for val linear, val kNN, test linear, test kNN)?",
        "",
        verdict(agg),
        "",
        f"Reproduce: `{command}`",
        "",
    ])
    if plot_path is not None:
        plot(agg, plot_path)
    if results is not None:
        head = notes or "# Transfer quality benchmark\n"
        results.write_text(head.rstrip() + "\n\n" + text + (
            f"\n![quality plot]({plot_path.name})\n" if plot_path is not None else ""))
    return text


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("config", nargs="?", default=str(ROOT / "configs" / "quickstart.yaml"))
    ap.add_argument("--out", help="folder for quality.jsonl and the work files")
    ap.add_argument("--work", help="folder for checkpoints and logs (default OUT/work)")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0])
    ap.add_argument("--teacher-epochs", type=float, nargs="+", default=None,
                    help="teacher budgets (source.epochs), e.g. 0.8 4 (default: the config's)")
    ap.add_argument("--teacher", action="append", default=[], metavar="EPOCHS:SEED=PATH",
                    help="use this teacher.pt for that budget and seed instead of training one")
    ap.add_argument("--set", dest="overrides", nargs="+", action="extend", default=[])
    ap.add_argument("--only", nargs="+", help=f"only these rows (of {', '.join(ORDER)})")
    ap.add_argument("--quick", action="store_true", help="tiny run on a few hundred images (tests)")
    ap.add_argument("--render", nargs="+", metavar="JSONL",
                    help="only render these quality.jsonl files (rows of several files are merged)")
    ap.add_argument("--results", help="write the markdown here (e.g. docs/results.md)")
    ap.add_argument("--plot", help="write the PNG plot here (e.g. docs/quality.png)")
    ap.add_argument("--notes", help="markdown placed before the table (interpretation)")
    ap.add_argument("--command", help="reproducing command printed in the report")
    args = ap.parse_args(argv)
    if args.render:
        rows = [row for path in args.render for row in read_rows(Path(path))]
    else:
        if not args.out:
            ap.error("--out is required unless --render")
        if args.teacher_epochs is None:
            from ssl_transfer.config import load_config

            over = [*(QUICK if args.quick else []), *args.overrides]
            args.teacher_epochs = [load_config(args.config, over).source.epochs]
        os.environ.setdefault("PYTHONWARNINGS", "ignore")
        rows = run_benchmark(args)
    command = args.command or "python bench/quality.py " + " ".join(argv if argv is not None else sys.argv[1:])
    notes = Path(args.notes).read_text() if args.notes else None
    text = render(rows, Path(args.results) if args.results else None, Path(args.plot) if args.plot else None,
                  command, notes)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
