"""report.md and plots/ of a task-metric run (called by :mod:`ssl_transfer.report` for ``task: metric``).

The table lists every model's retrieval on the test classes (Recall@K, MAP@R, NMI), the
difference to the teacher, the same on the validation classes and which weights were kept.
Plots: ``plots/loss_curves.png`` (every stage's training loss) and ``plots/retrieval.png``
(Recall@K and MAP@R per model).
"""

from __future__ import annotations

from pathlib import Path

from ..report import _get, _pct

ROWS = (("teacher", "teacher"), ("teacher continued", "controls.teacher_continued"), ("student", "student"))
STAGE_TIME = {"teacher": "source", "teacher continued": "teacher_continued", "student": "transfer"}


def _rows(results: dict) -> list[tuple[str, dict]]:
    return [(name, _get(results, key)) for name, key in ROWS if _get(results, key)]


def _chosen(block: dict) -> str:
    sel = block.get("selection")
    if not isinstance(sel, dict) or sel.get("chosen_epoch") is None:
        return "final"
    return f"epoch {sel['chosen_epoch']:.2f}"


def report_markdown(results: dict) -> str:
    cfg, models = results["config"], results.get("models", {})
    ks = results.get("protocol", {}).get("ks") or cfg["eval"]["recall_ks"]
    t = results.get("timings_s", {})
    teacher = results["teacher"]
    m = cfg["metric"]
    lines = ["# ssl-transfer run report (task metric)", "",
             f"Dataset **{cfg['data']['name']}** ({results['data']['sizes']}), seed {cfg['seed']}; Proxy-Anchor teacher "
             f"{models.get('teacher', {}).get('arch', cfg['source']['backbone'])} ({m['pooling']} pooling, "
             f"{m['embed_dim']}-d) for {cfg['source']['epochs']} epochs."]
    if "student" in models:
        lines[-1] += (f" Student {models['student']['arch']} ({results.get('models', {}).get('student_embed_dim')}-d, "
                      f"init {cfg['transfer']['student_init']}) trained by {cfg['transfer']['loss']} for "
                      f"{cfg['transfer']['epochs']} epochs on batches of {cfg['data']['batch_size']} "
                      f"({cfg['data']['images_per_class'] or 'random'} images per class, {cfg['data']['views']} views).")
    lines += ["", "Retrieval (%) on the test classes, never trained on: each image a query against all others, "
              "cosine similarity of the embeddings. Δ against the teacher; val = the validation classes, on which "
              "alone the weights were chosen.", ""]
    head = ["model", *(f"R@{k}" for k in ks), "MAP@R", "NMI", "Δ R@1", "Δ MAP@R", "val R@1", "val MAP@R", "weights",
            "train time (s)"]
    lines += ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for name, b in _rows(results):
        delta = ("", "") if b is teacher else tuple(
            "" if b.get(k) is None or teacher.get(k) is None else f"{100 * (b[k] - teacher[k]):+.2f}"
            for k in ("recall@1", "map@r"))
        cells = [name, *(_pct(b.get(f"recall@{k}")) for k in ks), _pct(b.get("map@r")), _pct(b.get("nmi")), *delta,
                 _pct(b.get("val_recall@1")), _pct(b.get("val_map@r")), _chosen(b),
                 f"{t.get(STAGE_TIME[name], 0):.0f}"]
        lines.append("| " + " | ".join(cells) + " |")
    lines += ["", "Timings (s): " + ", ".join(f"{k} {v:.1f}" for k, v in t.items()), ""]
    return "\n".join(lines)


def write_plots(results: dict, run_dir) -> list[Path]:
    """plots/loss_curves.png and plots/retrieval.png of a run directory (registered in its manifest)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from ..report import loss_curves_plot, save_figure

    written = loss_curves_plot(run_dir)
    rows = _rows(results)
    ks = results.get("protocol", {}).get("ks") or results["config"]["eval"]["recall_ks"]
    metrics = [*(f"recall@{k}" for k in ks), "map@r"]
    fig, ax = plt.subplots(figsize=(1.4 * len(metrics) + 3, 3.5))
    width = 0.8 / max(1, len(rows))
    for i, (name, b) in enumerate(rows):
        bars = ax.bar([j + i * width for j in range(len(metrics))], [100 * (b.get(k) or 0) for k in metrics], width,
                      label=name)
        ax.bar_label(bars, fmt="%.1f", fontsize=7)
    ax.set_xticks([j + width * (len(rows) - 1) / 2 for j in range(len(metrics))],
                  [k.replace("recall@", "R@").replace("map@r", "MAP@R") for k in metrics])
    ax.set_ylabel("test classes (%)")
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0.0)
    written.append(save_figure(fig, run_dir, "retrieval.png"))
    return written
