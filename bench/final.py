"""The final step of a benchmark: the test split, read once per chosen model.

    python -m bench.final OUT [--models NAME ...] [--groups G ...]

Reads ``OUT/choices.jsonl`` (written by ``bench.sweep`` / ``bench.quality`` on the validation
split), rebuilds each chosen row's saved model (the file and resolved config the row records),
evaluates it with the pipeline's protocol (probe C chosen on val, then the test split once) and
appends the row with its test numbers and ``test_read_at`` to ``OUT/final.jsonl``. A model whose
test numbers are already there is refused: the test split of a benchmark is read once.
"""

from __future__ import annotations

import argparse
import datetime
import sys
from pathlib import Path

from ssl_transfer.config import config_from_dict
from ssl_transfer.data import DataBundle
from ssl_transfer.evaluation.frozen import evaluate
from ssl_transfer.io import load_model
from ssl_transfer.runtime import setup_runtime
from ssl_transfer.stages.transfer import load_embedding

from .rows import append_row, key, read_rows


def final(out: Path, models: list[str] | None = None, groups: list[str] | None = None) -> list[dict]:
    choices = read_rows(out / "choices.jsonl")
    if not choices:
        raise SystemExit(f"{out}/choices.jsonl holds no rows; run bench.sweep or bench.quality first")
    done = {key(r): r for r in read_rows(out / "final.jsonl")}
    chosen = [r for r in choices if (not models or r["model"] in models) and (not groups or r.get("group") in groups)]
    again = [key(r) for r in chosen if key(r) in done]
    if again and (models or groups):
        raise SystemExit(f"the test split was already read for {again[0]} (at {done[again[0]]['test_read_at']}); "
                         f"its numbers are in {out}/final.jsonl")
    rows = list(done.values())
    bundles: dict = {}
    for row in chosen:
        if key(row) in done or not row.get("model_path"):
            continue
        cfg = config_from_dict(row["config"])
        setup_runtime(cfg)
        data_key = (repr(cfg.data), cfg.seed, cfg.source.method)
        if data_key not in bundles:
            bundles[data_key] = DataBundle.from_config(cfg.data, cfg.seed, method=cfg.source.method)
        if row.get("features") == "embedding":
            model, _ = load_embedding(row["model_path"])
        else:
            model, _ = load_model(row["model_path"])
        res = evaluate(model, bundles[data_key], cfg, test=True)
        new = {**row, "linear_acc": res["linear_acc"], "knn_acc": res["knn_acc"],
               "val_linear_acc_final": res["val_linear_acc"], "linear_C_final": res["linear"].get("C"),
               "test_read_at": datetime.datetime.now().isoformat(timespec="seconds")}
        append_row(out / "final.jsonl", new)
        rows.append(new)
        print({k: new[k] for k in ("group", "seed", "model", "linear_acc", "knn_acc")}, flush=True)
    return rows


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("out", help="the --out folder of bench.sweep / bench.quality")
    ap.add_argument("--models", nargs="+", help="only these models (default: every row)")
    ap.add_argument("--groups", nargs="+", help="only these groups")
    args = ap.parse_args(argv)
    final(Path(args.out), args.models, args.groups)
    return 0


if __name__ == "__main__":
    sys.exit(main())
