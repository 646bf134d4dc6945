"""Embedded benchmark of classification transfer: Fashion-MNIST at 1 % and 10 % labels, from the
quickstart's SSL teacher, a fixed CPU budget, 3 seeds, in one command.

    python -m bench.classify --out OUT [--seeds 0 1 2] [--fractions 0.01 0.1] [--teacher SEED=PATH ...]
    python -m bench.classify --render OUT --results docs/classification_results_section.md \
        --plot docs/classification.png                                 # tables and plot only
    python -m bench.classify --quick --out /tmp/c --seeds 0 1 --fractions 0.2   # a tiny run (smoke test)

One command runs four steps, each resumable (a rerun skips what ``OUT`` already holds):

1. **teachers**: per seed, the quickstart's source stage (configs/quickstart.yaml: SimCLR
   ResNet-18, 0.8 epochs, batch 256), trained once and shared by both label fractions (or
   ``--teacher SEED=PATH``); per (fraction, seed) its linear probe on the labelled images;
2. **choose** (validation split only, seed ``--choose-seed``, label fraction ``--choose-fraction``,
   default the first; its choices apply to every fraction): every candidate of
   :data:`GRIDS` (lambda and sigma of the relaxed loss, lambda again with unlabelled images, the KD
   temperature, lambda of RKD / PKT, the fine-tuning learning rate) is trained; the one with the
   best val top-1 is kept (``OUT/chosen.json``);
3. **rows** (validation split only): every model of :data:`ROWS` at every seed with the chosen
   settings, the same steps and the same labelled batches (``OUT/choices.jsonl``);
4. **final**: the test split, read once per row (``OUT/final.jsonl``; a row already there is
   never re-read), then the table (mean ± std over seeds; paired deltas against CE only and the
   fine-tuned teacher of the same seed) and the plot.

``--ablate`` adds the analysis variants of :data:`ABLATIONS` (validation split only).
"""

from __future__ import annotations

import argparse
import datetime
import itertools
import json
import sys
from pathlib import Path

from .classify_engine import ROOT, Engine, test_row
from .report import bar_plot, summary_table, verdict
from .rows import append_row, key, read_rows

VAL1 = (("val_top1_acc", "val top-1"),)
TEST1 = (("top1_acc", "test top-1"),)
CONFIG = ROOT / "configs" / "fashion_mnist_classify.yaml"
#: Optimizer steps of every model at every label fraction (64 labelled images each; + 192
#: unlabelled ones in the rows with unlabelled images): the fixed CPU budget.
STEPS = 100
NO_TEACHER = ["classify.loss_weight=0", "classify.kd_weight=0", "classify.unlabelled=false"]
SMALL = ["classify.student_backbone=small_cnn"]


def _loss(name: str, weight: float, **args) -> list[str]:
    return [f"classify.loss={name}", "classify.loss_args={}", f"classify.loss_weight={weight}", "classify.kd_weight=0",
            *(f"classify.loss_args.{k}={v}" for k, v in args.items())]


#: model -> (description, role, overrides, the grids whose chosen candidates' overrides it adds)
ROWS: dict[str, tuple[str, str, list[str], tuple[str, ...]]] = {
    "teacher": ("SimCLR teacher + linear probe on the labelled images", "teacher", [], ()),
    "ce_only": ("CE only (ResNet-18 from scratch)", "ce_only", NO_TEACHER, ()),
    "teacher_finetuned": ("teacher fine-tuned with CE (lr chosen on val)", "teacher_finetuned", NO_TEACHER,
                          ("teacher_finetuned",)),
    "kd": ("CE + KD (probe logits)", "student", [*_loss("relaxed_contrastive", 0), "classify.unlabelled=false"],
           ("kd",)),
    "rkd": ("CE + RKD", "student", ["classify.unlabelled=false"], ("rkd",)),
    "pkt": ("CE + PKT", "student", ["classify.unlabelled=false"], ("pkt",)),
    "relaxed": ("CE + relaxed contrastive", "student", ["classify.unlabelled=false"], ("relaxed",)),
    "relaxed_unl": ("CE + relaxed contrastive, + unlabelled images", "student", ["classify.unlabelled=true"],
                    ("relaxed_unl",)),
    "ce_only_small": ("compression control: small CNN, CE only", "ce_only", [*NO_TEACHER, *SMALL], ()),
    "compression": ("compression: small CNN, CE + relaxed, + unlabelled images", "student",
                    ["classify.unlabelled=true", *SMALL], ("relaxed_unl",)),
}
#: grid -> candidates (name -> overrides), chosen on val at the choose seed, per label fraction. The
#: relaxed loss sums over the n - 1 pairs of each row, so its size grows with the batch (at
#: initialisation about 45 for 64 images, 176 for 256, sigma 3; CE: 2.3): lambda is placed for
#: each batch; RKD / PKT around RepDistiller's weights (25 and 30000), KD at its T of 4 and 1; the
#: teacher's fine-tuning learning rate below the students' 0.05 (with 0.05 the 1 % fine-tuned
#: teacher fell to 69.7 % val top-1 after 200 steps, under its own probe's 74.5 %).
GRIDS: dict[str, dict[str, list[str]]] = {
    "relaxed": {f"relaxed_l{lw:g}_s{s:g}": _loss("relaxed_contrastive", lw, sigma=s)
                for lw, s in itertools.product((0.03, 0.3), (1, 3))},
    "relaxed_unl": {f"relaxed_unl_l{lw:g}": _loss("relaxed_contrastive", lw) for lw in (0.01, 0.1)},
    "kd": {f"kd_T{t:g}": ["classify.kd_weight=1", f"classify.kd_temperature={t}"] for t in (1, 4)},
    "rkd": {f"rkd_l{lw:g}": _loss("rkd", lw) for lw in (5, 25)},
    "pkt": {f"pkt_l{lw:g}": _loss("pkt", lw) for lw in (5000, 30000)},
    "teacher_finetuned": {f"ft_lr{lr:g}": [f"classify.optimizer.lr={lr}"] for lr in (0.01, 0.002)},
}
#: grid -> the grid whose chosen sigma its candidates take (sigma is chosen on the labelled-only rows;
#: lambda again with unlabelled images, whose larger batch makes the relaxed loss larger)
SIGMA_FROM = {"relaxed_unl": "relaxed"}
#: grid -> the row whose role and overrides its candidates take
GRID_ROW = {"relaxed": "relaxed", "relaxed_unl": "relaxed_unl", "kd": "kd", "rkd": "rkd", "pkt": "pkt",
            "teacher_finetuned": "teacher_finetuned"}
#: Analysis (validation split only, choose seed): variants of ``relaxed_unl`` with its chosen
#: lambda and sigma -- which embeddings are transferred, how many unlabelled images per step.
ABLATIONS: dict[str, tuple[str, list[str]]] = {
    "abl_projection": ("teacher's SimCLR projection (128-d) instead of its backbone feature",
                       ["classify.teacher_output=projection"]),
    "abl_student_head": ("student embedding: a linear 128-d head on the backbone feature",
                         ["classify.student_head=linear", "classify.embed_dim=128"]),
    "abl_ratio1": ("1 unlabelled image per labelled one (instead of 3)", ["classify.unlabelled_ratio=1"]),
    "abl_ratio7": ("7 unlabelled images per labelled one (instead of 3)", ["classify.unlabelled_ratio=7"]),
}
ORDER = list(ROWS)
#: rows run at the first label fraction only (the CPU budget: compression is measured at 1 % labels)
FIRST_FRACTION_ONLY = ("ce_only_small", "compression")
QUICK = ["data.train_subset=600", "data.val_size=200", "data.test_subset=200", "data.num_workers=0",
         "classify.batch_size=16", "classify.epochs=1", "classify.unlabelled_ratio=1",
         "eval.linear_Cs=[1.0]", "trainer.num_threads=1"]
QUICK_TEACHER = ["data.train_subset=600", "data.val_size=200", "data.batch_size=32", "source.epochs=0.25",
                 "data.num_workers=0", "trainer.num_threads=1"]


def group(fraction: float) -> str:
    return f"labels{100 * fraction:g}%"


def choose(engine: Engine, fraction: float, seed: int, rows: list[dict], record, chosen: dict,
           grids: dict[str, dict[str, list[str]]]) -> None:
    """Train every candidate of every grid (val only) and keep the best per grid in ``chosen``."""
    g = group(fraction)
    for grid, candidates in grids.items():
        if grid in chosen.get(g, {}):
            continue
        _, role, base, _ = ROWS[GRID_ROW[grid]]
        scores = {}
        sigma = [o for o in chosen[g][SIGMA_FROM[grid]]["overrides"] if ".sigma=" in o] if grid in SIGMA_FROM else []
        candidates = {name: [*overrides, *sigma] for name, overrides in candidates.items()}
        for name, overrides in candidates.items():
            row = next((r for r in rows if key(r) == (g, seed, name)), None)
            if row is None:
                row = engine.train_row(fraction, seed, name, role, [*base, *overrides], grid=grid)
                record(row)
            scores[name] = row["val_top1_acc"]
        best = max(scores, key=scores.__getitem__)  # ties: the first candidate
        chosen.setdefault(g, {})[grid] = {"candidate": best, "overrides": candidates[best], "val_top1_acc": scores}
        engine.save_chosen(chosen)
        print(f"{g}: {grid} -> {best} (val top-1 {', '.join(f'{k} {100 * v:.2f}' for k, v in scores.items())})",
              flush=True)


def run(out: Path, seeds: list[int], fractions: list[float], choose_seed: int, teachers: dict[int, str],
        overrides: list[str], teacher_overrides: list[str], only: list[str] | None = None,
        grids: dict[str, dict[str, list[str]]] = GRIDS, steps: int = STEPS,
        choose_fraction: float | None = None) -> list[dict]:
    """Steps 1-3 of the module docstring; returns the choice rows. The grids run at one label
    fraction (``choose_fraction``, default the first) and its choices apply to every fraction."""
    engine = Engine(out, CONFIG, overrides, teacher_overrides, teachers, steps)
    rows = read_rows(out / "choices.jsonl")
    done = {key(r) for r in rows}

    def record(row: dict) -> None:
        rows.append(row)
        done.add(key(row))
        append_row(out / "choices.jsonl", row)
        print({k: row[k] for k in ("group", "seed", "model", "val_top1_acc", "train_s")}, flush=True)

    chosen = engine.load_chosen()
    choose_at = fractions[0] if choose_fraction is None else choose_fraction
    choose(engine, choose_at, choose_seed, rows, record, chosen, grids)
    for fraction in fractions:  # the other fractions take the choices made at ``choose_at``
        if group(fraction) not in chosen or fraction == choose_at:
            chosen[group(fraction)] = chosen[group(choose_at)]
    for fraction, seed in itertools.product(fractions, seeds):
        g = group(fraction)
        for model, (_, role, base, grids) in ROWS.items():
            if (g, seed, model) in done or (only and model not in only) or (
                    model in FIRST_FRACTION_ONLY and fraction != fractions[0]):
                continue
            extra = [o for grid in grids for o in chosen[g][grid]["overrides"]]
            same = next((r for r in rows if len(grids) == 1 and r["group"] == g and r["seed"] == seed
                         and r["model"] == chosen[g][grids[0]]["candidate"] and r["overrides"] == [*base, *extra]),
                        None)
            if same is not None:  # the chosen candidate of this seed is this row: reuse its model
                record({**same, "model": model, "from_candidate": same["model"]})
            elif role == "teacher":
                record(engine.teacher_row(fraction, seed))
            else:
                record(engine.train_row(fraction, seed, model, role, [*base, *extra]))
    return rows


def ablate(out: Path, fractions: list[float], seed: int, teachers: dict[int, str], overrides: list[str],
           teacher_overrides: list[str], steps: int = STEPS) -> None:
    """The :data:`ABLATIONS` of ``relaxed_unl`` at ``seed`` (validation split only)."""
    engine = Engine(out, CONFIG, overrides, teacher_overrides, teachers, steps)
    done = {key(r) for r in read_rows(out / "choices.jsonl")}
    chosen = engine.load_chosen()
    for fraction in fractions:
        g = group(fraction)
        _, role, base, grids = ROWS["relaxed_unl"]
        extra = [o for grid in grids for o in chosen[g][grid]["overrides"]]
        for name, (_, variant) in ABLATIONS.items():
            if (g, seed, name) not in done:
                row = engine.train_row(fraction, seed, name, role, [*base, *extra, *variant], grid="ablation")
                append_row(out / "choices.jsonl", row)
                print({k: row[k] for k in ("group", "seed", "model", "val_top1_acc", "train_s")}, flush=True)


def final(out: Path) -> list[dict]:
    """Step 4: the test split once per row of choices.jsonl (rows already in final.jsonl are kept)."""
    done = {key(r): r for r in read_rows(out / "final.jsonl")}
    rows = list(done.values())
    for row in read_rows(out / "choices.jsonl"):
        if key(row) in done or row["model"] not in ROWS:
            continue
        new = {**row, **test_row(row), "test_read_at": datetime.datetime.now().isoformat(timespec="seconds")}
        append_row(out / "final.jsonl", new)
        rows.append(new)
        done[key(new)] = new
        print({k: new[k] for k in ("group", "seed", "model", "top1_acc")}, flush=True)
    return rows


def render(out: Path, results: Path | None, plot: Path | None, command: str, notes: str | None = None,
           after: str | None = None) -> str:
    """The tables (and plot) of ``out``; with ``results`` written there between ``notes`` and ``after``."""
    final_rows = [r for r in read_rows(out / "final.jsonl") if r["model"] in ROWS]
    rows = final_rows or [r for r in read_rows(out / "choices.jsonl") if r["model"] in ROWS]
    metrics = VAL1 + TEST1 if final_rows else VAL1
    chosen = json.loads((out / "chosen.json").read_text()) if (out / "chosen.json").is_file() else {}
    lines = ["Top-1 accuracy (%) of each model's own classifier, mean ± std over seeds; Δ columns: paired "
             "differences against CE only / the fine-tuned teacher of the same seed. "
             + ("Test columns: read once per model after every choice was made on the validation split."
                if final_rows else "Validation split only: the test split has not been read yet."), "",
             summary_table(rows, {m: d[0] for m, d in ROWS.items()}, ORDER, metrics, refs=("ce_only", "teacher_finetuned")),
             "Chosen on the validation split (seed 0's val top-1 of every candidate):", ""]
    for g, grids in chosen.items():
        for grid, c in grids.items():
            scores = ", ".join(f"{k} {100 * v:.2f}" for k, v in c["val_top1_acc"].items())
            lines.append(f"- {g}, {grid}: **{c['candidate']}** ({scores})")
    ablations = [r for r in read_rows(out / "choices.jsonl") if r["model"] in ABLATIONS]
    if ablations:
        ref = {(r["group"], r["seed"]): r for r in read_rows(out / "choices.jsonl") if r["model"] == "relaxed_unl"}
        lines += ["", "Analysis on the validation split (seed 0): variants of relaxed_unl with its chosen lambda and "
                  "sigma (val top-1 %, Δ against relaxed_unl of the same seed):", "",
                  "| group | variant | val top-1 | Δ |", "|---|---|---|---|"]
        for r in ablations:
            base = ref.get((r["group"], r["seed"]))
            delta = f"{100 * (r['val_top1_acc'] - base['val_top1_acc']):+.2f}" if base else ""
            lines.append(f"| {r['group']} | {ABLATIONS[r['model']][0]} | {100 * r['val_top1_acc']:.2f} | {delta} |")
    test = TEST1 if final_rows else VAL1
    lines += ["", "Targets (means):", "", verdict(rows, "relaxed", ("ce_only", "kd"), test),
              verdict(rows, "relaxed_unl", ("ce_only", "kd", "teacher_finetuned"), test), "",
              f"Reproduce: `{command}`", ""]
    text = "\n".join(lines)
    if plot is not None and final_rows:
        bar_plot(final_rows, plot, TEST1, order=ORDER, highlight=lambda m: m.startswith(("relaxed", "compression")),
                 controls=("teacher", "ce_only", "teacher_finetuned", "ce_only_small"))
    if results is not None:
        figure = f"\n![classification benchmark]({plot.name})\n" if plot and final_rows else ""
        results.write_text((notes.rstrip() + "\n\n" if notes else "") + text + figure
                           + ("\n" + after.strip() + "\n" if after else ""))
    return text


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", help="folder of choices.jsonl, chosen.json, final.jsonl and work/")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--fractions", type=float, nargs="+", default=[0.01, 0.1])
    ap.add_argument("--choose-seed", type=int, default=0, help="seed whose val split chooses lambda, sigma, T")
    ap.add_argument("--choose-fraction", type=float, help="label fraction whose val split chooses (default: the first)")
    ap.add_argument("--steps", type=int, default=STEPS, help="optimizer steps of every model (the CPU budget)")
    ap.add_argument("--teacher", action="append", default=[], metavar="SEED=PATH", help="a quickstart teacher.pt")
    ap.add_argument("--set", dest="overrides", nargs="+", action="extend", default=[], help="overrides of every row")
    ap.add_argument("--only", nargs="+", help=f"only these rows (of {', '.join(ROWS)}), no final step")
    ap.add_argument("--no-final", action="store_true", help="stop before the test split is read")
    ap.add_argument("--ablate", action="store_true", help="also the analysis variants (val only, choose seed)")
    ap.add_argument("--quick", action="store_true", help="tiny run on a few hundred images (smoke test)")
    ap.add_argument("--render", metavar="OUT", help="only tabulate OUT")
    ap.add_argument("--results", help="write the markdown here")
    ap.add_argument("--plot", help="write the PNG plot here")
    ap.add_argument("--command", help="the reproducing command printed with the table (default: this one)")
    ap.add_argument("--notes", help="markdown file placed before the tables in --results")
    ap.add_argument("--after", help="markdown file placed after the tables in --results")
    args = ap.parse_args(argv)
    command = args.command or "python -m bench.classify " + " ".join(argv if argv is not None else sys.argv[1:])
    if args.render:
        print(render(Path(args.render), Path(args.results) if args.results else None,
                     Path(args.plot) if args.plot else None, command,
                     Path(args.notes).read_text() if args.notes else None,
                     Path(args.after).read_text() if args.after else None))
        return 0
    if not args.out:
        ap.error("--out is required unless --render")
    out = Path(args.out)
    teachers = {}
    for t in args.teacher:
        seed, _, path = t.partition("=")
        if not path or not seed.isdigit():
            ap.error(f"--teacher {t!r}: write SEED=PATH, e.g. 0=runs/quickstart/teacher.pt")
        teachers[int(seed)] = path
    grids = {g: dict(list(c.items())[:2 if g == "relaxed" else 1]) for g, c in GRIDS.items()} if args.quick else GRIDS
    overrides = [*(QUICK if args.quick else []), *args.overrides]
    run(out, args.seeds, args.fractions, args.choose_seed, teachers, overrides, QUICK_TEACHER if args.quick else [],
        args.only, grids, args.steps if not args.quick else 6, args.choose_fraction)
    if args.ablate:
        ablate(out, args.fractions, args.choose_seed, teachers, overrides, QUICK_TEACHER if args.quick else [],
               args.steps if not args.quick else 6)
    if not (args.only or args.no_final):
        final(out)
    print(render(out, Path(args.results) if args.results else None, Path(args.plot) if args.plot else None, command))
    return 0


if __name__ == "__main__":
    sys.exit(main())
