"""``ssl-transfer`` command line.

    ssl-transfer run CONFIG [--set key=value ...] [--out DIR] [--overwrite] [--debug]

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
    r.add_argument("config", help="YAML config, e.g. configs/quickstart.yaml")
    r.add_argument("--set", dest="overrides", nargs="+", action="extend", default=[], metavar="KEY=VALUE",
                   help="override config keys, e.g. --set transfer.sigma=3 data.batch_size=128")
    r.add_argument("--out", help="output directory (default: runs/<config name>)")
    r.add_argument("--overwrite", action="store_true", help="replace an existing output directory")
    r.add_argument("--debug", action="store_true", default=argparse.SUPPRESS, help="show tracebacks")
    return p


def _run(args) -> int:
    from .config import load_config

    cfg = load_config(args.config, args.overrides)
    out = Path(args.out) if args.out else Path("runs") / Path(args.config).stem
    from .pipeline import check_out_dir, run

    check_out_dir(out, args.overwrite)  # fail before loading data or training
    results = run(cfg, out, overwrite=args.overwrite)
    from .report import report_markdown

    print(report_markdown(results))
    print(f"results written to {out}/ (results.json, report.md, plots/, logs/, checkpoints/)")
    return 0


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        if args.command == "run":
            return _run(args)
    except SSLTransferError as e:
        if args.debug:
            raise
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
