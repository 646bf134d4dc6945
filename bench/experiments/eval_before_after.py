"""The evaluation of one model before and after the 2026-12 speed-ups, interleaved in one process.

    git worktree add /tmp/before 5f1d168      # the code before the speed-ups
    python -m bench.experiments.eval_before_after runs/quickstart_seeds/seed0/teacher.pt \
        --before /tmp/before [--rounds 2]

*before*: ``linear_eval`` of the given checkout (autograd probe, default layout), the quickstart's
grid then (0.03 … 10) and tolerance 1e-4; *after*: this checkout's ``linear_eval`` with
``channels_last`` extraction, the quickstart's grid (0.03 … 1) and tolerance (2e-4). Same model,
same splits (configs/quickstart.yaml), 2 threads. Prints seconds per part and the accuracies.
"""

from __future__ import annotations

import argparse
import importlib
import json
import sys
import time


def _linear_eval(root: str | None):
    """``linear_eval`` imported from ``root`` (a checkout) or from this one."""
    for name in [m for m in sys.modules if m == "linear_eval" or m.startswith("linear_eval.")]:
        del sys.modules[name]
    if root:
        sys.path.insert(0, root)
    try:
        return importlib.import_module("linear_eval")
    finally:
        if root:
            sys.path.remove(root)


def evaluate(le, model, bundle, Cs, tol, channels_last: bool) -> dict:
    out, t = {}, time.perf_counter()
    kw = {"channels_last": True} if channels_last else {}
    feats = {s: le.extract_features(model, bundle.eval_loader(s), **kw) for s in ("eval_train", "val", "test")}
    out["extract_s"] = time.perf_counter() - t
    t = time.perf_counter()
    p = le.linear_probe(*feats["eval_train"], *feats["val"], *feats["test"], Cs=Cs, tol=tol)
    out["probe_s"] = time.perf_counter() - t
    t = time.perf_counter()
    knn_val = le.knn_accuracy(*feats["eval_train"], *feats["val"], k=200, temperature=0.1)
    knn_test = le.knn_accuracy(*feats["eval_train"], *feats["test"], k=200, temperature=0.1)
    out["knn_s"] = time.perf_counter() - t
    out["total_s"] = out["extract_s"] + out["probe_s"] + out["knn_s"]
    out.update(C=p["C"], val_linear=p["val_acc_best"], test_linear=p["test_acc"], val_knn=knn_val, test_knn=knn_test,
               iterations=sum(f["n_iter"] for f in p["fits"].values()))
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("model")
    ap.add_argument("--before", required=True, help="a checkout of the code before the speed-ups")
    ap.add_argument("--rounds", type=int, default=2)
    args = ap.parse_args(argv)
    from ssl_transfer.config import load_config
    from ssl_transfer.data import DataBundle
    from ssl_transfer.io import load_model
    from ssl_transfer.runtime import setup_runtime

    cfg = load_config("configs/quickstart.yaml")
    setup_runtime(cfg)
    bundle = DataBundle.from_config(cfg.data, cfg.seed)
    model, _ = load_model(args.model)
    settings = {"before": (args.before, [0.03, 0.1, 0.3, 1.0, 3.0, 10.0], 1e-4, False),
                "after": (None, cfg.eval.linear_Cs, cfg.eval.linear_tol, cfg.trainer.channels_last)}
    rows = []
    for r in range(args.rounds):
        for name, (root, Cs, tol, cl) in settings.items():
            row = {"round": r, "code": name, **evaluate(_linear_eval(root), model, bundle, Cs, tol, cl)}
            print(json.dumps(row), flush=True)
            rows.append(row)
    return 0


if __name__ == "__main__":
    sys.exit(main())
