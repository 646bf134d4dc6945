"""results.json of a classify run -> report.md (test top-1 of every model) and plots/*.png."""

from __future__ import annotations

from pathlib import Path

from .report import _get, _pct, loss_curves_plot, save_figure

#: (row name, key in results.json, stage whose training time it reports)
ROWS = (("teacher", "teacher", "source"), ("teacher fine-tuned (CE)", "controls.teacher_finetuned", "teacher_finetuned"),
        ("CE only (same student)", "controls.ce_only", "ce_only"), ("student", "student", "transfer"))


def model_rows(results: dict) -> list[tuple[str, dict, str]]:
    return [(name, _get(results, key), stage) for name, key, stage in ROWS if _get(results, key) is not None]


def describe(results: dict) -> str:
    """One sentence: data, labels, teacher, student and its loss."""
    cfg, models = results["config"], results["models"]
    c, d = cfg["classify"], cfg["data"]
    n = results.get("labels", {})
    labels = (f"{n.get('labelled', '?')} labelled training images ("
              + (f"{100 * d['label_fraction']:g} % of the labels" if d["label_fraction"] else "all labels")
              + f"), {n.get('unlabelled', 0)} unlabelled")
    terms = ["CE" if c["ce_weight"] == 1 else f"{c['ce_weight']:g} x CE"]
    if c["loss_weight"]:
        opts = ", ".join(f"{k} {v}" for k, v in c["loss_args"].items() if v is not None)
        terms.append(f"{c['loss_weight']:g} x {c['loss']} ({opts or 'defaults'})")
    if c["kd_weight"]:
        terms.append(f"{c['kd_weight']:g} x KD (T {c['kd_temperature']:g})")
    unl = f", teacher terms also on unlabelled images ({c['unlabelled_ratio']:g} per labelled one)" if c["unlabelled"] \
        else ""
    sizes = results["data"]["sizes"]
    head = (f"Dataset **{d['name']}** (val {sizes['val']}, test {sizes['test']}), seed {cfg['seed']}; teacher "
            f"{models['teacher']['arch']} ({cfg['source']['method']}, {cfg['source']['epochs']:g} epochs, classifier: "
            f"{results['teacher']['classifier']})")
    if "student" not in models:  # ssl-transfer pretrain: the teacher alone
        return head + "."
    return (f"{head}; {labels}; student {models['student']['arch']} ({c['student_init']} init) trained by "
            f"{' + '.join(terms)}{unl} for {c['epochs']:g} epochs of the labelled images.")


def report_markdown(results: dict) -> str:
    t = results["timings_s"]
    ref = _get(results, "controls.ce_only")
    lines = ["# ssl-transfer classification report", "", describe(results), "",
             "Top-1 accuracy (%) of each model's own classifier after its last step (no checkpoint chosen); "
             "Δ against the CE-only control.", "",
             "| model | test top-1 | Δ vs CE only | val top-1 | train time (s) |", "|---|---|---|---|---|"]
    for name, m, stage in model_rows(results):
        delta = "" if ref is None or m is ref else f"{100 * (m['top1_acc'] - ref['top1_acc']):+.2f}"
        lines.append(f"| {name} | {_pct(m['top1_acc'])} | {delta} | {_pct(m['val_top1_acc'])} | "
                     f"{t.get(stage, 0):.0f} |")
    lines += ["", "Timings (s): " + ", ".join(f"{k} {v:.1f}" for k, v in t.items()), ""]
    return "\n".join(lines)


def write_plots(results: dict, run_dir) -> list[Path]:
    """plots/loss_curves.png (training loss per stage) and plots/accuracy.png (test top-1 bars)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    written = loss_curves_plot(run_dir)
    rows = model_rows(results)
    fig, ax = plt.subplots(figsize=(6.5, 0.5 + 0.45 * len(rows)))
    vals = [100 * (m["top1_acc"] or 0) for _, m, _ in rows]
    bars = ax.barh(range(len(rows)), vals, color=["tab:gray"] * (len(rows) - 1) + ["tab:blue"])
    ax.bar_label(bars, fmt="%.2f", fontsize=8)
    ax.set_yticks(range(len(rows)), [name for name, _, _ in rows])
    ax.set_xlim(max(0, min(vals) - 5), min(100, max(vals) + 3))
    ax.set_xlabel("test top-1 (%)")
    written.append(save_figure(fig, run_dir, "accuracy.png"))
    return written
