"""Speed and peak memory of the evaluation metrics at realistic sizes.

Measured (each in a fresh subprocess, so one measurement's allocations cannot hide another's):
  * Recall@K (K = 1, 10, 100, 1000), MAP@R, and both in one pass (``retrieval_metrics``) on
    60,000 x 512 float32 clustered features, 11,000 classes of 2-14 items (~5.5, like SOP);
  * ``knn_accuracy`` (k = 200, T = 0.1) with a 50,000 x 512 bank and 10,000 queries, 10 classes
    (CIFAR-10 sized).
Peak memory is the rise of the process's peak RSS (VmHWM in /proc/self/status) during the call,
after the peak has been reset to the current RSS (``echo 5 > /proc/self/clear_refs``) once the
input features exist. It sees torch allocations, which tracemalloc does not.

Usage:
    python -m bench.eval_speed                       # full sizes, writes docs/eval_speed.md
    python -m bench.eval_speed --quick --out /tmp/x.md   # 10x smaller smoke run
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


# --------------------------------------------------------------------------- worker side
def _status_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"{field} not in /proc/self/status")


def _reset_peak() -> bool:
    try:
        Path("/proc/self/clear_refs").write_text("5")  # VmHWM := VmRSS
        return True
    except OSError:
        return False


def _retrieval_data(n: int, d: int, num_classes: int, seed: int = 0, spread: float = 2.0):
    import numpy as np

    rng = np.random.default_rng(seed)
    # every class gets 2 items, the rest are spread uniformly -> sizes 2 + Binomial
    y = np.concatenate([np.repeat(np.arange(num_classes), 2),
                        rng.integers(0, num_classes, n - 2 * num_classes)])
    rng.shuffle(y)
    x = rng.standard_normal((n, d), dtype=np.float32)
    x *= spread
    x += rng.standard_normal((num_classes, d), dtype=np.float32)[y]
    return x, y


def worker(name: str, scale: int, chunk_size: int | None) -> dict:
    import numpy as np
    import torch

    from linear_eval import knn_accuracy
    from linear_eval.retrieval import map_at_r, recall_at_k, retrieval_metrics

    kw = {} if chunk_size is None else {"chunk_size": chunk_size}
    if name == "knn":
        n_bank, n_query = 50_000 // scale, 10_000 // scale
        x, y = _retrieval_data(n_bank + n_query, 512, 10, seed=1, spread=4.0)
        args = (x[:n_bank], y[:n_bank], x[n_bank:], y[n_bank:])
        call = lambda: {"knn_acc": knn_accuracy(*args, k=200, temperature=0.1)}  # noqa: E731
        shape = f"bank {n_bank:,} x 512, {n_query:,} queries, 10 classes, k=200"
    else:
        x, y = _retrieval_data(60_000 // scale, 512, 11_000 // scale)
        ks = (1, 10, 100, 1000)
        call = {
            "recall": lambda: {f"recall@{k}": v for k, v in recall_at_k(x, y, ks=ks, **kw).items()},
            "map": lambda: {"map@r": map_at_r(x, y, **kw)},
            "both": lambda: retrieval_metrics(x, y, ks=ks, **kw),
        }[name]
        shape = f"{len(y):,} x 512, {int(y.max()) + 1:,} classes of 2-{int(np.bincount(y).max())} items"
    reset_ok = _reset_peak()
    rss0 = _status_kib("VmRSS") if reset_ok else _status_kib("VmHWM")
    t0 = time.perf_counter()
    values = call()
    seconds = time.perf_counter() - t0
    peak_extra_kib = _status_kib("VmHWM") - rss0
    return {"name": name, "shape": shape, "seconds": seconds, "peak_extra_mib": peak_extra_kib / 1024,
            "peak_reset": reset_ok, "values": values, "threads": torch.get_num_threads()}


# --------------------------------------------------------------------------- driver side
LABELS = {
    "recall": "`recall_at_k`, ks = 1, 10, 100, 1000",
    "map": "`map_at_r`",
    "both": "`retrieval_metrics` (Recall@1/10/100/1000 + MAP@R + R-precision, one pass)",
    "knn": "`knn_accuracy` (k = 200, T = 0.1)",
}


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default=str(ROOT / "docs" / "eval_speed.md"))
    p.add_argument("--quick", action="store_true", help="10x smaller sizes (smoke test)")
    p.add_argument("--chunk-size", type=int, default=None, help="retrieval chunk_size (default: the library's)")
    p.add_argument("--only", nargs="*", default=list(LABELS), choices=list(LABELS))
    p.add_argument("--worker", help=argparse.SUPPRESS)
    a = p.parse_args(argv)
    scale = 10 if a.quick else 1
    if a.worker:
        print(json.dumps(worker(a.worker, scale, a.chunk_size)))
        return 0

    import torch

    from linear_eval.retrieval import DEFAULT_CHUNK_SIZE

    load0 = os.getloadavg()
    rows = []
    for name in a.only:
        cmd = [sys.executable, "-m", "bench.eval_speed", "--worker", name] + (["--quick"] if a.quick else [])
        if a.chunk_size is not None:
            cmd += ["--chunk-size", str(a.chunk_size)]
        out = subprocess.run(cmd, check=True, capture_output=True, text=True, cwd=ROOT).stdout
        rows.append(json.loads(out.strip().splitlines()[-1]))
        print(f"{name}: {rows[-1]['seconds']:.1f} s, +{rows[-1]['peak_extra_mib']:.0f} MiB", flush=True)
    load1 = os.getloadavg()

    invoked = "python -m bench.eval_speed" + "".join(f" {x}" for x in (argv if argv is not None else sys.argv[1:]))
    lines = [
        "# Evaluation speed and memory",
        "",
        f"Produced by `{invoked}` (from the repository root).",
        "",
        f"- Machine: {os.cpu_count()} CPU cores ({_cpu_model()}), no GPU used; "
        f"torch {torch.__version__}, {rows[0]['threads']} threads.",
        f"- Load average before / after: {load0[0]:.2f} / {load1[0]:.2f} (another training job shared "
        "the cores, so times are upper bounds for an idle machine).",
        f"- Retrieval `chunk_size` = {a.chunk_size or DEFAULT_CHUNK_SIZE}. Each row is one call in a "
        "fresh subprocess; features are random clustered float32 (seeded).",
        "- Peak memory = rise of peak RSS (VmHWM) during the call over the RSS just before it "
        + ("(peak reset via /proc/self/clear_refs)." if all(r["peak_reset"] for r in rows)
           else "(WARNING: clear_refs not writable; baseline is the earlier peak)."),
        "",
        "| call | data | time (s) | peak extra memory (MiB) | result |",
        "|---|---|---:|---:|---|",
    ]
    for r in rows:
        vals = ", ".join(f"{k} {v:.4f}" for k, v in r["values"].items())
        lines.append(f"| {LABELS[r['name']]} | {r['shape']} | {r['seconds']:.1f} | "
                     f"{r['peak_extra_mib']:.0f} | {vals} |")
    lines += [
        "",
        "Retrieval cost is dominated by the exact float64 (n x n x d) similarity product and one "
        "int64 top-k per chunk; memory ~ 8·n·d + 16·chunk_size·n bytes (see `linear_eval/retrieval.py`).",
        "",
    ]
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.out).write_text("\n".join(lines))
    print(f"wrote {a.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
