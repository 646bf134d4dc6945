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


def _task_hook(results: dict, name: str):
    """The task module's own ``report_markdown`` / ``write_plots`` (task metric), or None."""
    task = (results.get("config") or {}).get("task", "ssl")
    if task == "ssl":
        return None
    from .tasks import get_task

    return getattr(get_task(task), name, None)


def report_markdown(results: dict) -> str:
    custom = _task_hook(results, "report_markdown")
    if custom is not None:
        return custom(results)
    cfg = results["config"]
    t = results["timings_s"]
    teacher = results["teacher"]
    models = results["models"]
    student = ""
    if "student" in models:
        options = ", ".join(f"{k} {v}" for k, v in cfg["transfer"]["loss_args"].items()) or "default options"
        student = (f"; student {models['student']['arch']} trained by {cfg['transfer']['loss']} ({options}) for "
                   f"{cfg['transfer']['epochs']} epochs")
    lines = [
        "# ssl-transfer run report",
        "",
        f"Dataset **{cfg['data']['name']}** ({results['data']['sizes']}), seed {cfg['seed']}; "
        f"teacher {models['teacher']['arch']} ({models['teacher']['stem']} stem), "
        f"{cfg['source']['method']} for {cfg['source']['epochs']} epochs{student}.",
        "",
        "Test-split accuracy (%) on frozen backbone features; deltas are against the teacher. "
        "Linear probe: logistic regression, C chosen on the validation split; kNN: "
        f"k={cfg['eval']['knn_k']}, T={cfg['eval']['knn_temperature']}, cosine.",
        "",
        "| model | linear | Δ linear | kNN | Δ kNN | val linear | val kNN | train time (s) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for name, m in model_rows(results):
        ref = teacher if m is not teacher else {"linear_acc": None, "knn_acc": None}
        lines.append(
            f"| {name} | {_pct(m['linear_acc'])} | {_delta(m['linear_acc'], ref['linear_acc'])} | "
            f"{_pct(m['knn_acc'])} | {_delta(m['knn_acc'], ref['knn_acc'])} | "
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


def plot_target(run_dir, name: str) -> Path:
    """``plots/<name>`` of a run directory (registered in its manifest), its folder created."""
    path = run_dir.path(f"plots/{name}")
    path.parent.mkdir(exist_ok=True)
    return path


def save_figure(fig, run_dir, name: str) -> Path:
    """Save ``fig`` as ``plots/<name>`` of ``run_dir`` and close it."""
    import matplotlib.pyplot as plt

    fig.tight_layout()
    path = plot_target(run_dir, name)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def loss_curves_plot(run_dir) -> list[Path]:
    """plots/loss_curves.png: the training loss of every stage logged under ``logs/`` (every task)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    stages = sorted((run_dir.work / "logs").glob("*/metrics.csv"))
    if not stages:
        return []
    fig, axes = plt.subplots(1, len(stages), figsize=(4.2 * len(stages), 3.2), squeeze=False)
    for ax, path in zip(axes[0], stages):
        ax.plot(*_loss_curve(path), lw=1)
        ax.set(title=path.parent.name, xlabel="step", ylabel="training loss")
    return [save_figure(fig, run_dir, "loss_curves.png")]


def write_plots(results: dict, run_dir) -> list[Path]:
    """plots/loss_curves.png, plots/accuracy.png (and plots/knn_monitor.png) of a run directory
    (:class:`ssl_transfer.runs.RunDirectory`: the files are registered in its manifest)."""
    custom = _task_hook(results, "write_plots")
    if custom is not None:
        return custom(results, run_dir)
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    written = loss_curves_plot(run_dir)
    monitor = {k: v for k, v in (results.get("monitor") or {"stages": {}})["stages"].items() if v}
    if monitor:
        fig, ax = plt.subplots(figsize=(5, 3.2))
        for stage, mrows in monitor.items():
            ax.plot([r["step"] for r in mrows], [100 * r["val_knn_acc"] for r in mrows], marker="o", label=stage)
        ax.set_xlabel("step of the stage")
        ax.set_ylabel("val kNN accuracy (%)")
        ax.legend(fontsize=8)
        written.append(save_figure(fig, run_dir, "knn_monitor.png"))
    rows = model_rows(results)
    fig, ax = plt.subplots(figsize=(7.5, 3.5))
    width = 0.8 / len(rows)
    for i, (name, m) in enumerate(rows):
        vals = [100 * (m["linear_acc"] or 0), 100 * m["knn_acc"]]
        bars = ax.bar([j + i * width for j in range(2)], vals, width, label=name)
        ax.bar_label(bars, fmt="%.1f", fontsize=7)
    ax.set_xticks([j + width * (len(rows) - 1) / 2 for j in range(2)], ["linear probe", "kNN"])
    lo = min(100 * min(m["knn_acc"], m["linear_acc"] or 1) for _, m in rows)
    ax.set_ylim(max(0, lo - 5), 100)
    ax.set_ylabel("test accuracy (%)")
    # the legend sits outside the axes, where it cannot cover a bar or its label
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0.0)
    written.append(save_figure(fig, run_dir, "accuracy.png"))
    return written


def write_report(results: dict, run_dir) -> None:
    """report.md and plots/ of a run (``run_dir``: a :class:`ssl_transfer.runs.RunDirectory`)."""
    atomic_write_text(run_dir.path("report.md"), report_markdown(results))
    write_plots(results, run_dir)
