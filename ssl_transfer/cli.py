"""``ssl-transfer`` command line.

    ssl-transfer run CONFIG [--set key=value ...] [--out DIR] [--overwrite | --resume] [--debug]
    ssl-transfer transfer CONFIG --teacher TEACHER.pt [--set ...] [--out DIR] [--overwrite]
    ssl-transfer eval CHECKPOINT --config CONFIG [--set ...] [--out FILE.json]

Errors caused by the input (config, data, output directory) print one line and exit with
status 2; ``--debug`` shows the traceback instead.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from .errors import SSLTransferError


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="ssl-transfer", description=__doc__.split("\n\n")[0])
    p.add_argument("--debug", action="store_true", help="show tracebacks")
    sub = p.add_subparsers(dest="command", required=True)
    r = sub.add_parser("run", help="source stage + controls + transfer stage + evaluation")
    t = sub.add_parser("transfer", help="controls + transfer stage + evaluation from a saved teacher")
    for q in (r, t):
        q.add_argument("config", help="YAML config, e.g. configs/quickstart.yaml")
        _common(q)
        q.add_argument("--out", help="output directory (default: runs/<config name>)")
        q.add_argument("--overwrite", action="store_true", help="replace an existing output directory")
        q.add_argument("--resume", action="store_true",
                       help="continue the interrupted run in --out from its last checkpoint")
    t.add_argument("--teacher", required=True, help="teacher.pt written by an earlier run")
    e = sub.add_parser("eval", help="linear probe, kNN and retrieval of a saved backbone")
    e.add_argument("checkpoint", help="teacher.pt or student.pt of a run")
    e.add_argument("--config", required=True, help="YAML config naming the dataset and evaluation")
    _common(e)
    e.add_argument("--out", help="also write the results to this JSON file")
    return p


def _common(q: argparse.ArgumentParser) -> None:
    q.add_argument("--set", dest="overrides", nargs="+", action="extend", default=[], metavar="KEY=VALUE",
                   help="override config keys, e.g. --set transfer.sigma=3 data.batch_size=128")
    q.add_argument("--debug", action="store_true", default=argparse.SUPPRESS, help="show tracebacks")


def _run(args) -> int:
    from .config import load_config

    cfg = load_config(args.config, args.overrides)
    out = Path(args.out) if args.out else Path("runs") / Path(args.config).stem
    from .pipeline import check_out_dir, run

    if args.resume and args.overwrite:
        from .errors import ConfigError

        raise ConfigError("--resume and --overwrite contradict each other; pass one of them")
    if not args.resume:
        check_out_dir(out, args.overwrite)  # fail before loading data or training
    results = run(cfg, out, overwrite=args.overwrite, teacher_path=getattr(args, "teacher", None),
                  resume=args.resume)
    from .report import report_markdown

    print(report_markdown(results))
    print(f"results written to {out}/ (results.json, report.md, plots/, logs/, checkpoints/)")
    return 0


def _eval(args) -> int:
    import json

    from .config import load_config
    from .errors import OutputExistsError
    from .io import atomic_write_text
    from .pipeline import evaluate_checkpoint

    cfg = load_config(args.config, args.overrides)
    if args.out and Path(args.out).exists():
        raise OutputExistsError(f"'{args.out}' already exists; choose another --out or delete it")
    result = evaluate_checkpoint(args.checkpoint, cfg)
    text = json.dumps(result, indent=2)
    print(text)
    if args.out:
        atomic_write_text(args.out, text)
    return 0


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        if args.command in ("run", "transfer"):
            return _run(args)
        if args.command == "eval":
            return _eval(args)
    except SSLTransferError as e:
        if args.debug:
            raise
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
