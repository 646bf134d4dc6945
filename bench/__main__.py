"""One entry point for the speed benchmarks: S1-S4, the throughput of every stage and the
relaxed loss's scaling in n, written to a markdown report, a JSON file and a log-log plot.

    python -m bench                              # full sizes (~15 min on 2 cores): docs/benchmarks.md,
                                                 # docs/data/benchmarks.json, docs/benchmarks.png
    python -m bench --run runs/quickstart_seeds/seed0   # also the stage times of a finished run
    python -m bench --quick --out-dir /tmp/b     # tiny sizes: a check of this script (tests/test_bench.py)

- **S1** relaxed contrastive loss forward + backward / one n×n×d matmul (n = d = 512), at 1 and at
  2 threads (``bench.speed.bench_loss``); target ≤ 4×.
- **S2** transfer step / SimCLR step, same student and batch, whole Lightning steps
  (``bench.speed.bench_step``) at the config's thread count; target ≤ 1.4×.
- **S3** a training step fed by the real data pipeline / the same step on preloaded batches,
  SimCLR and transfer, Fashion-MNIST and a generated CIFAR-sized set (``bench.pipeline_speed``);
  target ≤ 1.1×.
- **S4** the loss's time and extra peak memory for n = 128 … 8192 (d = 512, float32, forward +
  backward), dense and blocked (``block_size`` 512), each call in a fresh one-thread subprocess
  (``bench.loss_memory.run_case``); the n = 8192 rows are S4.
- **Throughput** in images per second: the source / control (SimCLR) and transfer training steps
  on the real pipeline (from S3), and feature extraction for the evaluation; with ``--run`` the
  stage times of a finished run as well.

Never run by the test suite at full size; ``--quick`` is its smoke test.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import statistics
import sys
import time
from pathlib import Path

import torch

from . import loss_memory, pipeline_speed, speed

TARGETS = {"S1": 4.0, "S2": 1.4, "S3": 1.1}
SCALING_N = (128, 256, 512, 1024, 2048, 4096, 8192)
BLOCK = 512
QUICK_SET = ["data.batch_size=16", "data.train_subset=64", "data.val_size=60", "data.eval_train_subset=80",
             "data.test_subset=60", "data.num_workers=0", "trainer.num_threads=1"]


def s1(quick: bool) -> dict:
    """Loss / matmul at 1 and 2 threads."""
    n, d, rounds, per = (64, 16, 1, 2) if quick else (512, 512, 5, 20)
    out = {}
    for threads in (1, 2):
        torch.set_num_threads(threads)
        r = speed.bench_loss(n, d, warmup=1 if quick else 5, rounds=rounds, per_round=per)
        r.pop("times_s")
        out[str(threads)] = r
        print(f"S1 {threads} thread(s): loss / matmul {r['ratio']:.2f}x", flush=True)
    return out


def s2(config: str, overrides: list[str], threads: int, quick: bool) -> dict:
    torch.set_num_threads(threads)
    r = speed.bench_step(config, overrides, warmup=1 if quick else 3, rounds=1 if quick else 3,
                         per_round=1 if quick else 4)
    r.pop("times_s")
    print(f"S2: transfer / SimCLR step {r['ratio']:.2f}x", flush=True)
    return r


def s3(config: str, overrides: list[str], quick: bool) -> dict:
    r = pipeline_speed.run(config, overrides, steps=3 if quick else 14, warmup=1 if quick else 4)
    for data in ("fashion_mnist", "cifar_sized"):
        for kind in ("simclr", "transfer"):
            for key in ("real_s", "preloaded_s"):
                r[data][kind].pop(key)
    return r


def s4_cases(ns, d: int, block: int) -> list[dict]:
    """The S4 rows: dense at every n, blocked only where n exceeds the block (a single block is
    the dense computation)."""
    return [dict(kind="relaxed", n=n, d=d, dtype="float32", backward=True, block=block if blocked else None)
            for n in ns for blocked in (False, True) if not (blocked and n <= block)]


def s4(quick: bool) -> list[dict]:
    """Time and extra peak memory of the loss for every n, dense and blocked."""
    ns, d, block = ((64,), 16, 32) if quick else (SCALING_N, 512, BLOCK)
    rows = []
    for case in s4_cases(ns, d, block):
        r = loss_memory.run_case(case, default_malloc=False)
        rows.append({"n": case["n"], "d": d, "block": case["block"], "seconds": r["seconds"],
                     "extra_mib": r["extra_mib"]})
        print(f"S4 n={case['n']} {'blocked' if case['block'] else 'dense'}: {r['seconds']:.3f} s, "
              f"+{r['extra_mib']:.0f} MiB", flush=True)
    return rows


def extraction(config: str, overrides: list[str], quick: bool) -> dict:
    """Feature extraction (the evaluation's forward passes) in images per second."""
    from linear_eval import extract_features
    from ssl_transfer.config import load_config
    from ssl_transfer.data import DataBundle
    from ssl_transfer.runtime import setup_runtime
    from ssl_transfer.stages.pretrain import SimCLRModule

    cfg = load_config(config, overrides)
    setup_runtime(cfg)
    bundle = DataBundle.from_config(cfg.data, cfg.seed)
    model = SimCLRModule(cfg.source, cfg.data, bundle.channels).backbone
    loader = bundle.eval_loader("val" if quick else "eval_train")
    extract_features(model, loader, max_batches=1, channels_last=cfg.trainer.channels_last)  # warm-up
    start = time.perf_counter()
    x, _ = extract_features(model, loader, channels_last=cfg.trainer.channels_last)
    seconds = time.perf_counter() - start
    return {"images": int(x.shape[0]), "seconds": seconds, "images_per_s": x.shape[0] / seconds,
            "batch": cfg.data.eval_batch_size, "channels_last": cfg.trainer.channels_last,
            "threads": torch.get_num_threads()}


def run_stages(run_dir: Path) -> dict:
    """Seconds and images per second of each stage of a finished run (its results.json and logs)."""
    res = json.loads((run_dir / "results.json").read_text())
    batch = res["config"]["data"]["batch_size"]
    out = {}
    for stage, seconds in res.get("timings_s", {}).items():
        log = run_dir / "logs" / stage / "metrics.csv"
        steps = None
        if log.exists():
            with log.open() as f:
                steps = 1 + max(int(row["step"]) for row in csv.DictReader(f) if row.get("step"))
        out[stage] = {"seconds": seconds, "steps": steps,
                      "images_per_s": steps * batch / seconds if steps and seconds else None}
    models = {"teacher": res["teacher"], "student": res["student"], **res.get("controls", {})}
    out["eval_per_model_s"] = {name: block["eval_s"] for name, block in models.items()}
    total = res.get("timings_s", {}).get("total")
    out["eval_share"] = res["timings_s"]["eval"] / total if total else None
    return out


# ------------------------------------------------------------------------------- report
def _verdict(value: float, target: float) -> str:
    return "**met**" if value <= target else "**not met**"


def markdown(res: dict) -> str:
    m = res["machine"]
    lines = ["# Benchmarks", "", f"Produced by `{res['command']}` in one run on {res['date']} (raw numbers: "
             f"`{res['json']}`, plot: `{res['plot']}`).", "",
             f"- Machine: {m['cpu']}, {m['cores']} cores, no GPU; torch {m['torch']}, lightning {m['lightning']}; "
             f"load average (1 min) {m['loadavg_start']:.2f} at the start, {m['loadavg_end']:.2f} at the end.",
             "- Ratios use medians of interleaved repeats after warm-up (bench/speed.py, bench/pipeline_speed.py).",
             "", "## Summary", "", "| | measured | target | |", "|---|---:|---:|---|"]
    for t, r in res.get("S1", {}).items():
        lines.append(f"| S1 relaxed loss fwd + bwd / one matmul (n = d = {r['n']}), {t} thread(s) | "
                     f"{r['ratio']:.2f}× | ≤ {TARGETS['S1']:g}× | {_verdict(r['ratio'], TARGETS['S1'])} |")
    if "S2" in res:
        r = res["S2"]
        lines.append(f"| S2 transfer step / SimCLR step ({res['threads']} threads) | {r['ratio']:.2f}× | "
                     f"≤ {TARGETS['S2']:g}× | {_verdict(r['ratio'], TARGETS['S2'])} |")
    for data in ("fashion_mnist", "cifar_sized"):
        for kind, r in res.get("S3", {}).get(data, {}).items():
            lines.append(f"| S3 real / preloaded data, {kind}, {data.replace('_', '-')} | {r['ratio']:.2f}× | "
                         f"≤ {TARGETS['S3']:g}× | {_verdict(r['ratio'], TARGETS['S3'])} |")
    big = [r for r in res.get("S4", []) if r["n"] == max(x["n"] for x in res["S4"])]
    for r in big:
        lines.append(f"| S4 loss at n = {r['n']}, d = {r['d']}, {'block ' + str(r['block']) if r['block'] else 'dense'}"
                     f" | {r['seconds']:.2f} s, +{r['extra_mib']:.0f} MiB | | |")
    lines += ["", "## Throughput (images per second)", "", "| stage | images/s | how |", "|---|---:|---|"]
    for data in ("fashion_mnist", "cifar_sized"):
        s3r = res.get("S3", {}).get(data, {})
        for kind, label in (("simclr", "source and control (SimCLR step)"), ("transfer", "transfer step")):
            if kind in s3r:
                lines.append(f"| {label}, {data.replace('_', '-')} | {s3r[kind]['real_images_per_s']:.0f} | "
                             f"batch {res['S3']['batch_size']} images, real data pipeline "
                             f"({res['S3']['num_workers']} worker(s)), {res['S3']['threads']} threads |")
    if "extraction" in res:
        e = res["extraction"]
        lines.append(f"| evaluation: feature extraction | {e['images_per_s']:.0f} | {e['images']} images, batch "
                     f"{e['batch']}, channels_last {e['channels_last']}, {e['threads']} threads |")
    if "run" in res:
        lines += ["", f"Stage times of the finished run `{res['run_dir']}`:", "",
                  "| stage | seconds | steps | images/s |", "|---|---:|---:|---:|"]
        for stage, r in res["run"].items():
            if isinstance(r, dict) and "seconds" in r:
                ips = f"{r['images_per_s']:.0f}" if r.get("images_per_s") else ""
                lines.append(f"| {stage} | {r['seconds']:.1f} | {r['steps'] or ''} | {ips} |")
        per = ", ".join(f"{k} {v:.1f} s" for k, v in res["run"]["eval_per_model_s"].items())
        share = res["run"]["eval_share"]
        lines += ["", f"Evaluation per model: {per}; evaluation share of the run: "
                  + (f"{100 * share:.1f} %." if share is not None else "n/a.")]
    lines += ["", "## S4: the loss from n = 128 to 8192", "",
              "Forward + backward of `RelaxedContrastiveLoss`, float32, one thread, each call in a fresh "
              "subprocess (one timed call: indicative); *extra* is the peak resident memory above the inputs.", "",
              "| n | d | dense s | dense MiB | blocked s | blocked MiB |", "|---:|---:|---:|---:|---:|---:|"]
    by_n: dict[int, dict] = {}
    for r in res.get("S4", []):
        by_n.setdefault(r["n"], {})["blocked" if r["block"] else "dense"] = r
    for n, pair in sorted(by_n.items()):
        dn, bl = pair.get("dense"), pair.get("blocked")
        cell = lambda r, k, f: format(r[k], f) if r else "="  # noqa: E731
        lines.append(f"| {n} | {(dn or bl)['d']} | {cell(dn, 'seconds', '.3f')} | {cell(dn, 'extra_mib', '.0f')} | "
                     f"{cell(bl, 'seconds', '.3f')} | {cell(bl, 'extra_mib', '.0f')} |")
    lines += ["", "(=: n ≤ block size, where the blocked loss is the dense one.)", ""]
    lines += res.get("notes", [])
    return "\n".join(lines) + "\n"


def plot(rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    for blocked, style in ((False, "o-"), (True, "s--")):
        pts = sorted((r["n"], r["seconds"], max(r["extra_mib"], 0.1)) for r in rows if bool(r["block"]) == blocked)
        if not pts:
            continue
        label = f"blocked (block {max(r['block'] or 0 for r in rows)})" if blocked else "dense"
        n, sec, mib = zip(*pts)
        axes[0].loglog(n, sec, style, label=label, base=2)
        axes[1].loglog(n, mib, style, label=label, base=2)
    for ax, ylabel in zip(axes, ("seconds (fwd + bwd)", "extra peak memory (MiB)")):
        ax.set_xlabel("n (embeddings in the batch)")
        ax.set_ylabel(ylabel)
        ax.grid(True, which="both", alpha=0.3)
        ax.legend()
    fig.suptitle("RelaxedContrastiveLoss, d = 512, float32, 1 thread")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--config", default="configs/quickstart.yaml")
    ap.add_argument("--set", dest="overrides", nargs="+", action="extend", default=[])
    ap.add_argument("--quick", action="store_true", help="tiny sizes (a check of this script)")
    ap.add_argument("--run", help="a finished run directory: add its stage times")
    ap.add_argument("--out-dir", default=".", help="where docs/benchmarks.md, docs/data/benchmarks.json and "
                                                   "docs/benchmarks.png are written (default: the repository)")
    ap.add_argument("--notes", help="markdown file appended to the report (interpretation)")
    ap.add_argument("--render", help="only re-render the markdown from this benchmarks.json (with --notes)")
    args = ap.parse_args(argv)
    if args.render:
        res = json.loads(Path(args.render).read_text())
        res["notes"] = [Path(args.notes).read_text()] if args.notes else res.get("notes", [])
        md = Path(args.out_dir) / "docs" / "benchmarks.md"
        md.write_text(markdown(res))
        print(f"written {md}")
        return 0
    from ssl_transfer.config import load_config

    overrides = [*(QUICK_SET if args.quick else []), *args.overrides]
    threads = load_config(args.config, overrides).trainer.num_threads or torch.get_num_threads()
    out = Path(args.out_dir)
    md, js, png = out / "docs" / "benchmarks.md", out / "docs" / "data" / "benchmarks.json", out / "docs" / "benchmarks.png"
    command = "python -m bench " + " ".join(argv if argv is not None else sys.argv[1:])
    res: dict = {"command": command.strip(), "date": time.strftime("%Y-%m-%d"), "machine": speed.machine(),
                 "threads": threads, "config": args.config, "overrides": overrides,
                 "json": "docs/data/benchmarks.json", "plot": "docs/benchmarks.png"}
    res["S1"] = s1(args.quick)
    res["S2"] = s2(args.config, overrides, threads, args.quick)
    res["S3"] = s3(args.config, overrides, args.quick)
    torch.set_num_threads(threads)
    res["extraction"] = extraction(args.config, overrides, args.quick)
    res["S4"] = s4(args.quick)
    if args.run:
        res["run_dir"], res["run"] = args.run, run_stages(Path(args.run))
    res["machine"]["loadavg_end"] = os.getloadavg()[0]
    if args.notes:
        res["notes"] = [Path(args.notes).read_text()]
    js.parent.mkdir(parents=True, exist_ok=True)
    js.write_text(json.dumps(res, indent=1))
    plot(res["S4"], png)
    md.write_text(markdown(res))
    print(f"written {md}, {js}, {png}")
    summary = {"S1": {t: round(r["ratio"], 2) for t, r in res["S1"].items()}, "S2": round(res["S2"]["ratio"], 2),
               "S3": statistics.fmean(r["ratio"] for d in ("fashion_mnist", "cifar_sized")
                                      for r in res["S3"][d].values())}
    print(json.dumps(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())
