"""Markdown tables and plots of benchmark rows (``bench.rows``).

- :func:`choice_table`: one line per (seed, model) of the validation numbers, with deltas against
  that seed's teacher: what the choosing steps (sweeps, studies) print;
- :func:`summary_table`: mean ± std over seeds per model and group, with paired deltas against
  the teacher and the control; test columns only for final rows (``bench.final``);
- :func:`verdict`: does ``ours`` beat each of ``others`` on the mean of every given metric;
- :func:`bar_plot`: one row of panels per group, mean ± std bars per model (``controls`` in gray).
"""

from __future__ import annotations

from pathlib import Path

from .rows import TEST, VAL, aggregate, fmt

CONTROLS = ("teacher", "teacher_continued", "small_cnn_simclr")


def choice_table(rows: list[dict]) -> str:
    teacher = {(r.get("group"), r["seed"]): r for r in rows if r["model"] == "teacher"}
    out = ["| group | seed | model | overrides | val linear | val kNN | train s |", "|---|---|---|---|---|---|---|"]
    for r in rows:
        t = teacher.get((r.get("group"), r["seed"]))

        def cell(metric, r=r, t=t):
            delta = "" if t is None or r is t else f" ({100 * (r[metric] - t[metric]):+.2f})"
            return f"{100 * r[metric]:.2f}{delta}"

        over = ", ".join(o.removeprefix("transfer.") for o in r.get("overrides", [])) or "-"
        train = "–" if r.get("train_s") is None else f"{r['train_s']:.0f}"
        out.append(f"| {r.get('group', '')} | {r['seed']} | {r['model']} | {over} | {cell('val_linear_acc')} | "
                   f"{cell('val_knn_acc')} | {train} |")
    return "\n".join(out) + "\n"


def summary_table(rows: list[dict], descriptions: dict[str, str] | None = None, order: list[str] | None = None,
                  metrics=VAL + TEST, refs=("teacher", "teacher_continued"), deltas=None) -> str:
    """``deltas``: the metrics given Δ columns (default: the test metrics shown, else all shown)."""
    agg = aggregate(rows, metrics, refs, order)
    descriptions = descriptions or {}
    shown = [(m, label) for m, label in metrics if any(m in e for g in agg.values() for e in g.values())]
    delta_metrics = [(m, label) for m, label in shown if m in dict(deltas or TEST)] or shown
    lines = []
    for group, models in agg.items():
        head = ["model", "seeds", *(label for _, label in shown),
                *(f"Δ {label} vs {ref.replace('_', ' ')}" for ref in refs for _, label in delta_metrics)]
        lines += [f"### {group}", "", "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
        for model, e in models.items():
            cells = [fmt(e.get(m)) for m, _ in shown]
            deltas = [fmt(e.get(f"d_{ref}_{m}"), signed=True) for ref in refs for m, _ in delta_metrics]
            name = f"{model}: {descriptions[model]}" if model in descriptions else model
            lines.append("| " + " | ".join([name, str(len(e["seeds"])), *cells, *deltas]) + " |")
        lines.append("")
    return "\n".join(lines)


def verdict(rows: list[dict], ours: str, others: tuple[str, ...], metrics=TEST) -> str:
    """One line per group and other model: does ``ours`` have the higher mean on every metric?"""
    agg = aggregate(rows, metrics, ())
    lines = []
    for group, models in agg.items():
        for other in others:
            if ours not in models or other not in models:
                continue
            diffs = {label: models[ours][m][0] - models[other][m][0] for m, label in metrics
                     if m in models[ours] and m in models[other]}
            if not diffs:
                continue
            n = min(len(models[ours]["seeds"]), len(models[other]["seeds"]))
            wins = all(d > 0 for d in diffs.values())
            lines.append(f"- {group}, **{ours} vs {other}** ({n} seed(s)): "
                         f"{'higher' if wins else 'not higher'} on every metric "
                         f"({', '.join(f'{label} {d:+.2f}' for label, d in diffs.items())} points)")
    return "\n".join(lines)


def bar_plot(rows: list[dict], path: str | Path, metrics=TEST, order: list[str] | None = None,
             highlight=lambda model: model.startswith("relaxed"), controls=CONTROLS) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    agg = aggregate(rows, metrics, (), order)
    groups = list(agg)
    fig, axes = plt.subplots(len(groups), len(metrics), squeeze=False,
                             figsize=(7 * len(metrics), 1.2 + sum(0.42 * len(agg[g]) + 1.0 for g in groups)),
                             height_ratios=[len(agg[g]) + 2 for g in groups])
    for b, group in enumerate(groups):
        models = agg[group]
        names = [m for m in models if all(k in models[m] for k, _ in metrics)][::-1]
        for j, (metric, label) in enumerate(metrics):
            ax = axes[b][j]
            means = [models[m][metric][0] for m in names]
            errs = [models[m][metric][1] or 0.0 for m in names]
            colors = ["tab:gray" if m in controls else "tab:blue" if highlight(m) else "tab:orange" for m in names]
            ax.barh(range(len(names)), means, xerr=errs, color=colors)
            if "teacher" in models and metric in models["teacher"]:
                ax.axvline(models["teacher"][metric][0], color="k", lw=0.8, ls="--")
            ax.set_yticks(range(len(names)), names)
            if means:
                ax.set_xlim(max(0, min(means) - 2), max(means) + 1)
            n = max((len(models[m]["seeds"]) for m in names), default=0)
            ax.set_title(f"{group}: {label} (mean{' ± std' if n > 1 else ''}, {n} seed(s))", fontsize=9)
            ax.set_xlabel(f"{label} (%)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
