"""Embedded zero-shot metric-learning benchmark (task metric on Fashion-MNIST), in one command.

    python -m bench.metric [configs/fashion_mnist_metric.yaml] --out OUT --seeds 0 1 2 \
        [--set key=value ...] [--only MODEL ...] [--results FILE.md --plot FILE.png]
    python -m bench.metric --render OUT [OUT2 ...] --results FILE.md --plot FILE.png
    python -m bench.metric --quick --out /tmp/m          # a tiny run (smoke test)

Per seed, through the task's own stages (:mod:`ssl_transfer.stages.metric`): the Proxy-Anchor
teacher on the training classes (0-4 minus the ``data.val_classes`` validation classes), then
every model of :data:`MODELS` from it on the same class-balanced batches (the control and every
student share one data stream): the teacher continued with Proxy-Anchor for the transfer steps
(the control), relaxed-contrastive students from scratch and from the teacher, the 512 -> 64
student, RKD and PKT. The command then

1. records each model's **validation-class** numbers while training (``OUT/choices.jsonl``; a
   rerun skips recorded rows and reloads a saved teacher),
2. reads the **test classes once** per model (``OUT/final.jsonl``; a model already there is not
   read again), after every model of every seed was trained,
3. tabulates mean ± std over seeds (``--results``, ``--plot``), with the paper's table beside it.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import sys
from pathlib import Path

from ssl_transfer.data import DataBundle
from ssl_transfer.runs import RunDirectory
from ssl_transfer.runtime import setup_runtime
from ssl_transfer.stages.base import StageContext
from ssl_transfer.stages.metric import MetricTransferStage, evaluate_model
from ssl_transfer.stages.proxy_anchor import ProxyAnchorControl, ProxyAnchorStage

from .engine import Variant, base_config, variant_config
from .report import bar_plot, summary_table, verdict
from .rows import append_row, key, read_rows

ROOT = Path(__file__).resolve().parents[1]
GROUP = "zero_shot"


def _loss(name: str, **args) -> list[str]:
    return [f"transfer.loss={name}", "transfer.loss_args={}", *(f"transfer.loss_args.{k}={v}" for k, v in args.items())]


MODELS: dict[str, Variant] = {
    "teacher_continued": Variant("teacher + Proxy-Anchor for the transfer steps (control)", kind="control"),
    "relaxed_scratch": Variant("relaxed contrastive, student from scratch (random init)",
                               [*_loss("relaxed_contrastive", sigma=1), "transfer.student_init=scratch"]),
    "relaxed_teacher": Variant("relaxed contrastive, student from the teacher",
                               [*_loss("relaxed_contrastive", sigma=1), "transfer.student_init=teacher"]),
    "relaxed_dim64": Variant("relaxed contrastive, 512 -> 64 (teacher's trunk, new 64-d head)",
                             [*_loss("relaxed_contrastive", sigma=1), "transfer.student_init=teacher",
                              "transfer.embed_dim=64"]),
    "rkd": Variant("RKD (distance 1, angle 2), student from the teacher",
                   [*_loss("rkd"), "transfer.student_init=teacher"]),
    "pkt": Variant("PKT, student from the teacher", [*_loss("pkt"), "transfer.student_init=teacher"]),
}
ORDER = ["teacher", *MODELS]
DESCRIPTION = {"teacher": "Proxy-Anchor teacher, 512-d", **{k: v.description for k, v in MODELS.items()}}
VAL = (("val_recall@1", "val R@1"), ("val_map@r", "val MAP@R"))
TEST = (("recall@1", "R@1"), ("recall@2", "R@2"), ("recall@4", "R@4"), ("recall@8", "R@8"), ("map@r", "MAP@R"))
QUICK = [  # scikit-learn's 8x8 digits, a few steps: checks that every row is produced (tests)
    "data.name=digits", "data.images_per_class=8", "data.batch_size=24", "data.eval_batch_size=512",
    "source.epochs=0.25", "transfer.epochs=0.25", "trainer.num_threads=1", "trainer.enable_progress_bar=false",
]
PAPER = """Paper (Kim et al., CVPR 2021, BN-Inception 512-d Proxy-Anchor teachers; the ResNet-50 / ResNet-18
row is its compression setting), Recall@1 (%) on the test classes:

| model | CUB-200-2011 | Cars-196 | SOP |
|---|---|---|---|
| Proxy-Anchor teacher (BN-Inception, 512) | 69.1 | 86.4 | 79.2 |
| relaxed contrastive, self-transfer 512 | 72.1 | 89.6 | 79.8 |
| RKD, self-transfer 512 | 70.9 | 88.9 | 78.5 |
| relaxed contrastive, 512 -> 64 | 67.4 | 86.5 | 76.3 |
| Proxy-Anchor teacher (ResNet-50, 512) | 69.9 | 87.7 | 80.5 |
| relaxed contrastive, ResNet-50-512 -> ResNet-18-128 | 66.6 | 86.0 | 78.4 |
"""


def train(config: str, overrides: list[str], seeds: list[int], models: dict[str, Variant], out: Path,
          with_teacher: bool = True) -> list[dict]:
    """Train every model of every seed and record its validation numbers in OUT/choices.jsonl."""
    out.mkdir(parents=True, exist_ok=True)
    path = out / "choices.jsonl"
    rows = read_rows(path)
    done = {key(r) for r in rows}
    for seed in seeds:
        wanted = [n for n in (["teacher"] if with_teacher else []) + list(models) if (GROUP, seed, n) not in done]
        if not wanted:
            continue
        cfg = base_config(config, overrides, seed)
        setup_runtime(cfg)
        bundle = DataBundle.from_config(cfg.data, cfg.seed)
        ctx = StageContext(cfg, bundle, RunDirectory.scratch(out / "work" / f"seed{seed}"))
        source = ProxyAnchorStage(cfg)
        saved = ctx.run_dir.work / source.artifact
        teacher = source.from_file(saved, bundle) if saved.is_file() else source.train(ctx)
        for name in wanted:
            if name == "teacher":
                result, vcfg, kind, over = teacher, cfg, "teacher", []
            else:
                variant = models[name]
                vcfg, kind, over = variant_config(cfg, variant.overrides), variant.kind, list(variant.overrides)
                if dataclasses.astuple(vcfg.data) != dataclasses.astuple(cfg.data):
                    raise SystemExit(f"model {name} changes data.*; the models of a seed share one data stream")
                vctx = StageContext(vcfg, bundle, ctx.run_dir)
                if kind == "control":
                    control = ProxyAnchorControl(vcfg)
                    control.name, control.artifact = name, f"{name}.pt"
                    result = control.train(vctx, teacher=teacher)
                else:
                    result = MetricTransferStage(vcfg).train(vctx, teacher, name=f"student_{name}")
            block = evaluate_model(result, bundle, vcfg, test=False)
            new = {"group": GROUP, "seed": seed, "model": name, "kind": kind, "train_s": result.seconds or None,
                   "model_path": str(result.path), "overrides": over, "config": vcfg.to_dict(), **block}
            rows.append(new)
            append_row(path, new)
            print({k: new[k] for k in ("seed", "model", "val_recall@1", "val_map@r", "train_s")}, flush=True)
    return rows


def final(out: Path) -> list[dict]:
    """Read the test classes once for every recorded model without test numbers (OUT/final.jsonl)."""
    from ssl_transfer.config import config_from_dict

    choices = read_rows(out / "choices.jsonl")
    done = {key(r): r for r in read_rows(out / "final.jsonl")}
    rows = list(done.values())
    teachers = {r["seed"]: r for r in choices if r["model"] == "teacher"}
    cache: dict = {}
    for choice in choices:
        if key(choice) in done:
            continue
        cfg = config_from_dict(choice["config"])
        setup_runtime(cfg)
        if cfg.seed not in cache:
            tcfg = config_from_dict(teachers[cfg.seed]["config"])
            bundle = DataBundle.from_config(tcfg.data, tcfg.seed)
            cache[cfg.seed] = bundle, ProxyAnchorStage(tcfg).from_file(teachers[cfg.seed]["model_path"], bundle)
        bundle, teacher = cache[cfg.seed]
        if choice["kind"] in ("teacher", "control"):
            result = ProxyAnchorStage(cfg).from_file(choice["model_path"], bundle, name=choice["model"])
        else:
            result = MetricTransferStage(cfg).from_file(choice["model_path"], teacher, bundle)
        block = evaluate_model(result, bundle, cfg, val=False)
        new = {**choice, **{k: v for k, v in block.items() if k not in ("selection", "eval_s")},
               "test_eval_s": block["eval_s"], "test_read_at": datetime.datetime.now().isoformat(timespec="seconds")}
        append_row(out / "final.jsonl", new)
        rows.append(new)
        print({k: new[k] for k in ("seed", "model", "recall@1", "map@r")}, flush=True)
    return rows


def render(outs: list[Path], results: Path | None, plot: Path | None, command: str) -> str:
    final_rows = read_rows(*(o / "final.jsonl" for o in outs))
    rows = final_rows or read_rows(*(o / "choices.jsonl" for o in outs))
    r1 = (("recall@1", "R@1"), ("map@r", "MAP@R")) if final_rows else VAL
    text = "\n".join([
        "Retrieval in %, mean ± std over seeds; Δ columns are paired differences against the teacher / the "
        "teacher continued of the same seed. " + ("Test columns: classes 5-9 of the test split, read once per "
                                                  "model after every model was trained; val columns: the "
                                                  "validation classes." if final_rows else
                                                  "Validation classes only: the test classes were not read yet."),
        "", summary_table(rows, DESCRIPTION, ORDER, metrics=VAL + TEST, refs=("teacher", "teacher_continued"),
                          deltas=r1),
        "Does the relaxed student from the teacher have the higher mean than the teacher and the control?", "",
        verdict(rows, "relaxed_teacher", ("teacher", "teacher_continued", "rkd", "pkt"), metrics=r1),
        verdict(rows, "relaxed_scratch", ("teacher", "teacher_continued"), metrics=r1), "",
        f"Reproduce: `{command}`", "", PAPER])
    if plot is not None and final_rows:
        bar_plot(final_rows, plot, metrics=(("recall@1", "test R@1"), ("map@r", "test MAP@R")), order=ORDER)
    if results is not None:
        results.write_text(text + (f"\n![zero-shot retrieval]({plot.name})\n" if plot is not None and final_rows else ""))
    return text


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("config", nargs="?", default=str(ROOT / "configs" / "fashion_mnist_metric.yaml"))
    ap.add_argument("--out", help="folder for choices.jsonl, final.jsonl and the work files")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0])
    ap.add_argument("--set", dest="overrides", nargs="+", action="extend", default=[])
    ap.add_argument("--only", nargs="+", help=f"only these rows (of {', '.join(ORDER)})")
    ap.add_argument("--no-final", action="store_true", help="train and record validation numbers only")
    ap.add_argument("--quick", action="store_true", help="tiny run on a few hundred images (smoke test)")
    ap.add_argument("--render", nargs="+", metavar="OUT", help="only tabulate these OUT folders")
    ap.add_argument("--results", help="write the markdown table here")
    ap.add_argument("--plot", help="write the PNG plot here")
    ap.add_argument("--command", help="reproducing command printed in the report")
    args = ap.parse_args(argv)
    command = args.command or "python -m bench.metric " + " ".join(argv if argv is not None else sys.argv[1:])
    results, plot = (Path(p) if p else None for p in (args.results, args.plot))
    if args.render:
        print(render([Path(p) for p in args.render], results, plot, command))
        return 0
    if not args.out:
        ap.error("--out is required unless --render")
    overrides = [*(QUICK if args.quick else []), *args.overrides]
    models = {k: v for k, v in MODELS.items() if not args.only or k in args.only}
    train(args.config, overrides, args.seeds, models, Path(args.out), with_teacher=not args.only or "teacher" in args.only)
    if not args.no_final:
        final(Path(args.out))
    print(render([Path(args.out)], results, plot, command))
    return 0


if __name__ == "__main__":
    sys.exit(main())
