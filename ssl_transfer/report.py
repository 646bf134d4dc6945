"""results.json → report.md (table with deltas and times) and plots/*.png."""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Any

from .io import atomic_write_text

ROWS = (("teacher", "teacher"), ("teacher continued", "controls.teacher_continued"), ("student", "student"),
        ("student embedding", "student_embedding"))
STAGE_TIME = {"teacher": "source", "teacher continued": "teacher_continued", "student": "transfer",
              "student embedding": "transfer"}


def _get(results: dict, dotted: str):
    node: Any = results
    for part in dotted.split("."):
        if not isinstance(node, dict) or part not in node:
            return None
        node = node[part]
    return node


def _pct(x) -> str:
    return "n/a" if x is None else f"{100 * x:.2f}"


def _delta(x, ref) -> str:
    return "" if x is None or ref is None else f"{100 * (x - ref):+.2f}"


def model_rows(results: dict) -> list[tuple[str, dict]]:
    return [(name, _get(results, key)) for name, key in ROWS if _get(results, key) is not None]


def report_markdown(results: dict) -> str:
    cfg = results["config"]
    t = results["timings_s"]
    teacher = results["teacher"]
    lines = [
        "# ssl-transfer run report",
        "",
        f"Dataset **{cfg['data']['name']}** ({results['data']['sizes']}), seed {cfg['seed']}; "
        f"teacher {results['models']['teacher']['arch']} ({results['models']['teacher']['stem']} stem), "
        f"{cfg['source']['method']} for {cfg['source']['epochs']} epochs; student "
        f"{results['models']['student']['arch']} trained by {cfg['transfer']['loss']} "
        f"(sigma {cfg['transfer']['sigma']}, delta {cfg['transfer']['delta']}) for "
        f"{cfg['transfer']['epochs']} epochs.",
        "",
        "Test-split accuracy (%) on frozen backbone features; deltas are against the teacher. "
        "Linear probe: logistic regression, C chosen on the validation split; kNN: "
        f"k={cfg['eval']['knn_k']}, T={cfg['eval']['knn_temperature']}, cosine.",
        "",
        "| model | linear | Δ linear | kNN | Δ kNN | val linear | val kNN | train time (s) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for name, m in model_rows(results):
        lines.append(
            f"| {name} | {_pct(m['linear_acc'])} | {_delta(m['linear_acc'], teacher['linear_acc'])} | "
            f"{_pct(m['knn_acc'])} | {_delta(m['knn_acc'], teacher['knn_acc'])} | "
            f"{_pct(m.get('val_linear_acc'))} | {_pct(m.get('val_knn_acc'))} | "
            f"{t.get(STAGE_TIME[name], 0):.0f} |"
        )
    monitor = results.get("monitor")
    if monitor:
        lines += ["", f"kNN monitor (val kNN accuracy %, every {monitor['every_epochs']} epochs; "
                  "plots/knn_monitor.png): " + "; ".join(
                      f"{stage} " + ", ".join(f"step {r['step']} {_pct(r['val_knn_acc'])}" for r in rows)
                      for stage, rows in monitor["stages"].items() if rows)]
    lines += ["", "Timings (s): " + ", ".join(f"{k} {v:.1f}" for k, v in t.items()), ""]
    return "\n".join(lines)


def _loss_curve(csv_path: Path):
    steps, losses = [], []
    with open(csv_path) as f:
        for row in csv.DictReader(f):
            if row.get("train_loss_step"):
                steps.append(int(row["step"]))
                losses.append(float(row["train_loss_step"]))
    return steps, losses


def write_plots(results: dict, out_dir: Path) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    plots = out_dir / "plots"
    plots.mkdir(exist_ok=True)
    written = []
    stages = [p for p in sorted((out_dir / "logs").glob("*/metrics.csv"))]
    if stages:
        fig, axes = plt.subplots(1, len(stages), figsize=(4.2 * len(stages), 3.2), squeeze=False)
        for ax, path in zip(axes[0], stages):
            steps, losses = _loss_curve(path)
            ax.plot(steps, losses, lw=1)
            ax.set_title(path.parent.name)
            ax.set_xlabel("step")
            ax.set_ylabel("training loss")
        fig.tight_layout()
        fig.savefig(plots / "loss_curves.png", dpi=110)
        plt.close(fig)
        written.append(plots / "loss_curves.png")
    monitor = {k: v for k, v in (results.get("monitor") or {"stages": {}})["stages"].items() if v}
    if monitor:
        fig, ax = plt.subplots(figsize=(5, 3.2))
        for stage, mrows in monitor.items():
            ax.plot([r["step"] for r in mrows], [100 * r["val_knn_acc"] for r in mrows], marker="o", label=stage)
        ax.set_xlabel("step of the stage")
        ax.set_ylabel("val kNN accuracy (%)")
        ax.legend(fontsize=8)
        fig.tight_layout()
        fig.savefig(plots / "knn_monitor.png", dpi=110)
        plt.close(fig)
        written.append(plots / "knn_monitor.png")
    rows = model_rows(results)
    fig, ax = plt.subplots(figsize=(6, 3.5))
    width = 0.8 / len(rows)
    for i, (name, m) in enumerate(rows):
        vals = [100 * (m["linear_acc"] or 0), 100 * m["knn_acc"]]
        bars = ax.bar([j + i * width for j in range(2)], vals, width, label=name)
        ax.bar_label(bars, fmt="%.1f", fontsize=7)
    ax.set_xticks([j + width * (len(rows) - 1) / 2 for j in range(2)], ["linear probe", "kNN"])
    lo = min(100 * min(m["knn_acc"], m["linear_acc"] or 1) for _, m in rows)
    ax.set_ylim(max(0, lo - 5), 100)
    ax.set_ylabel("test accuracy (%)")
    ax.legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    fig.savefig(plots / "accuracy.png", dpi=110)
    plt.close(fig)
    written.append(plots / "accuracy.png")
    return written


def write_report(results: dict, out_dir: str | Path) -> None:
    out_dir = Path(out_dir)
    atomic_write_text(out_dir / "report.md", report_markdown(results))
    write_plots(results, out_dir)
