"""Quality benchmark of the transfer stage: every loss and setting against the same teacher, at
one or more teacher budgets, over seeds; linear probe and kNN, mean ± std.

    python -m bench.quality configs/quickstart.yaml --seeds 0 1 2 --teacher-epochs 0.8 3 --out OUT \
        [--only MODEL ...] [--set key=value ...] [--teacher 0.8:0=RUN/teacher.pt]
    python -m bench.final OUT                                   # the test split, once per model
    python -m bench.quality --render OUT [OUT2 ...] --results docs/results.md --plot docs/quality.png
    python -m bench.quality --quick --out /tmp/q                # a tiny run (smoke test)

Per teacher budget (``source.epochs``) and seed: the teacher (trained, or ``--teacher
EPOCHS:SEED=PATH``), then every model of :data:`MODELS`, trained from it for the config's
``transfer.epochs`` on the same batches: "teacher continued", students of each transfer loss (no
cross-batch memory, as in the quickstart, so the losses are compared alone), relaxed contrastive
with a cross-batch memory of 2048 (``relaxed_s3_mem``; the quickstart runs without memory),
dimension reduction (512 -> 64 linear head; its 64-d embedding and its backbone) and compression (a
small CNN from scratch, next to the same CNN trained by the teacher's SSL method, SimCLR or MoCo v2,
for the same steps). Training rows
hold validation numbers only (``OUT/choices.jsonl``); ``bench.final`` adds the test split, once,
and ``--render`` tabulates the final rows (mean ± std; paired deltas against the teacher and the
control of the same seed).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from .engine import Variant, run
from .report import bar_plot, summary_table, verdict
from .rows import read_rows

ROOT = Path(__file__).resolve().parents[1]
NO_MEM = "transfer.memory_size=0"


def _loss(name: str, **args) -> list[str]:
    return [f"transfer.loss={name}", "transfer.loss_args={}", *(f"transfer.loss_args.{k}={v}" for k, v in args.items())]


MODELS: dict[str, Variant] = {
    "teacher_continued": Variant("teacher + SSL for the transfer steps", kind="control"),
    "relaxed_s1": Variant("relaxed contrastive, sigma 1", [*_loss("relaxed_contrastive", sigma=1), NO_MEM]),
    "relaxed_s3": Variant("relaxed contrastive, sigma 3", [*_loss("relaxed_contrastive", sigma=3), NO_MEM]),
    "relaxed_ms": Variant("relaxed MS, sigma 3", [*_loss("relaxed_ms", sigma=3), NO_MEM]),
    "rkd": Variant("RKD (distance 1, angle 2)", [*_loss("rkd"), NO_MEM]),
    "pkt": Variant("PKT", [*_loss("pkt"), NO_MEM]),
    "darkrank": Variant("DarkRank (hard, k 4)", [*_loss("darkrank"), NO_MEM]),
    "regression": Variant("regression (FitNet-style, linear map)", [*_loss("regression"), NO_MEM]),
    "relaxed_s3_mem": Variant("relaxed contrastive, sigma 3, cross-batch memory 2048",
                              [*_loss("relaxed_contrastive", sigma=3), "transfer.memory_size=2048"]),
    "dim64": Variant("dimension reduction 512 -> 64 (relaxed s3 + memory), 64-d embedding",
                     [*_loss("relaxed_contrastive", sigma=3), "transfer.memory_size=2048",
                      "transfer.student_head=linear", "transfer.embed_dim=64"], features="embedding"),
    "compression": Variant("compression: small CNN from scratch (relaxed s3 + memory)",
                           [*_loss("relaxed_contrastive", sigma=3), "transfer.memory_size=2048",
                            "transfer.student_backbone=small_cnn", "transfer.student_init=scratch"]),
    "small_cnn_simclr": Variant("small CNN from scratch, SimCLR for the same steps (control)", kind="ssl_small"),
}
ORDER = ["teacher", *(m for name in MODELS for m in (name, f"{name}_backbone"))]
DESCRIPTION = {"teacher": "teacher", "dim64_backbone": "dimension reduction student, its 512-d backbone feature",
               **{k: v.description for k, v in MODELS.items()}}
QUICK = [  # a few steps on a few hundred images: checks that every row is produced (tests)
    "data.batch_size=16", "data.train_subset=64", "data.val_size=60", "data.eval_train_subset=80",
    "data.test_subset=60", "data.num_workers=0", "data.eval_batch_size=256", "source.epochs=0.25",
    "transfer.epochs=0.25", "eval.knn_k=5", "eval.linear_Cs=[1.0]",
    "trainer.num_threads=1", "trainer.enable_progress_bar=false",
]


def _teacher_arg(text: str) -> tuple[tuple[str, int], str]:
    """``EPOCHS:SEED=PATH`` -> (("teacher<EPOCHS>", seed), path)."""
    try:
        spec, path = text.split("=", 1)
        epochs, seed = spec.split(":")
        return (f"teacher{float(epochs):g}", int(seed)), path
    except ValueError:
        raise SystemExit(f"--teacher {text!r}: write EPOCHS:SEED=PATH, e.g. 0.8:0=runs/quickstart/teacher.pt") from None


def render(outs: list[Path], results: Path | None, plot: Path | None, command: str, notes: str | None = None) -> str:
    """Tables (validation rows, and final rows with the test split) of one or more OUT folders."""
    final = read_rows(*(o / "final.jsonl" for o in outs))
    rows = final or read_rows(*(o / "choices.jsonl" for o in outs))
    text = "\n".join([
        "## Measured table", "",
        "Accuracies in %, mean ± std over seeds (no ± with one seed); Δ columns are paired differences "
        "against the teacher / teacher continued of the same seed. "
        + ("Test columns come from `bench.final`, which read the test split once per model, after every "
           "choice was made on the validation split." if final else
           "Validation split only: `bench.final` has not read the test split yet."), "",
        summary_table(rows, DESCRIPTION, ORDER),
        "Does relaxed contrastive (sigma 3) have the higher mean than RKD, PKT and teacher continued?", "",
        verdict(rows, "relaxed_s3", ("rkd", "pkt", "teacher_continued")), "",
        f"Reproduce: `{command}`", ""])
    if plot is not None and final:
        bar_plot(final, plot, order=ORDER)
    if results is not None:
        results.write_text((notes or "# Transfer quality benchmark\n").rstrip() + "\n\n" + text
                           + (f"\n![quality plot]({plot.name})\n" if plot is not None and final else ""))
    return text


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("config", nargs="?", default=str(ROOT / "configs" / "quickstart.yaml"))
    ap.add_argument("--out", help="folder for choices.jsonl (and final.jsonl) and the work files")
    ap.add_argument("--work", help="folder for models, checkpoints and logs (default OUT/work)")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0])
    ap.add_argument("--teacher-epochs", type=float, nargs="+", help="teacher budgets (default: the config's)")
    ap.add_argument("--teacher", action="append", default=[], metavar="EPOCHS:SEED=PATH")
    ap.add_argument("--set", dest="overrides", nargs="+", action="extend", default=[])
    ap.add_argument("--only", nargs="+", help=f"only these rows (of {', '.join(['teacher', *MODELS])})")
    ap.add_argument("--quick", action="store_true", help="tiny run on a few hundred images (smoke test)")
    ap.add_argument("--render", nargs="+", metavar="OUT", help="only tabulate these OUT folders")
    ap.add_argument("--results", help="write the markdown here (e.g. docs/results.md)")
    ap.add_argument("--plot", help="write the PNG plot here (e.g. docs/quality.png)")
    ap.add_argument("--notes", help="markdown placed before the table")
    ap.add_argument("--command", help="reproducing command printed in the report")
    args = ap.parse_args(argv)
    command = args.command or "python -m bench.quality " + " ".join(argv if argv is not None else sys.argv[1:])
    if args.render:
        print(render([Path(p) for p in args.render], Path(args.results) if args.results else None,
                     Path(args.plot) if args.plot else None, command,
                     Path(args.notes).read_text() if args.notes else None))
        return 0
    if not args.out:
        ap.error("--out is required unless --render")
    overrides = [*(QUICK if args.quick else []), *args.overrides]
    if args.quick:
        overrides.append("transfer.memory_size=0")
    if args.teacher_epochs is None:
        from ssl_transfer.config import load_config

        args.teacher_epochs = [load_config(args.config, overrides).source.epochs]
    groups = {f"teacher{e:g}": [f"source.epochs={e}"] for e in args.teacher_epochs}
    models = {k: v for k, v in MODELS.items() if not args.only or k in args.only}
    if args.quick:  # the tiny batch holds 32 embeddings: a small memory
        models = {k: Variant(v.description, [o.replace("memory_size=2048", "memory_size=48") for o in v.overrides],
                             v.kind, v.features) for k, v in models.items()}
    run(args.config, overrides, args.seeds, groups, models, Path(args.out), Path(args.work) if args.work else None,
        dict(_teacher_arg(t) for t in args.teacher), with_teacher=not args.only or "teacher" in args.only)
    print(render([Path(args.out)], None, None, command))
    return 0


if __name__ == "__main__":
    sys.exit(main())
