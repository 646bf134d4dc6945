"""``ssl-transfer`` command line.

    ssl-transfer run CONFIG [--set key=value ...] [--out DIR] [--overwrite | --resume] [--debug]
    ssl-transfer transfer CONFIG --teacher WEIGHTS [--prefix P] [--set ...] [--out DIR] [--overwrite]
    ssl-transfer pretrain CONFIG [--set ...] [--out DIR] [--overwrite]
    ssl-transfer eval CHECKPOINT --config CONFIG [--set ...] [--out FILE.json]
    ssl-transfer export CHECKPOINT --out backbone.pth [--arch A] [--stem S] [--in-channels C] [--prefix P]

Errors caused by the input (config, data, output directory) print one line and exit with
status 2; ``--debug`` shows the traceback instead.
"""

from __future__ import annotations

import argparse
import json
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
    t.add_argument("--teacher", required=True,
                   help="teacher.pt of an earlier run, or external backbone weights (lightly / solo-learn "
                        ".ckpt, torchvision or plain state dict) for the architecture of source.backbone/stem")
    t.add_argument("--prefix", help="prefix of the backbone keys in --teacher, e.g. 'backbone.' "
                                    "(default: detected; '' for none); sets source.weights_prefix")
    pt = sub.add_parser("pretrain", help="source stage alone: teacher.pt + results.json with its evaluation")
    pt.add_argument("config", help="YAML config, e.g. configs/cifar10_mocov2.yaml")
    _common(pt)
    pt.add_argument("--out", help="output directory (default: runs/<config name>_pretrain)")
    pt.add_argument("--overwrite", action="store_true", help="replace an existing output directory")
    x = sub.add_parser("export", help="write a checkpoint's backbone as a plain state dict with torchvision keys")
    x.add_argument("checkpoint", help="teacher.pt / student.pt, a Lightning .ckpt (lightly, solo-learn, this "
                                      "project), or a state dict")
    x.add_argument("--out", required=True, help="file to write (never overwritten), e.g. backbone.pth")
    x.add_argument("--arch", choices=["resnet18", "resnet34", "resnet50"],
                   help="architecture (default: from the file, else the ResNet whose keys match)")
    x.add_argument("--stem", choices=["imagenet", "cifar", "small"], help="stem (default: from conv1's kernel)")
    x.add_argument("--in-channels", type=int, help="input channels (default: from conv1)")
    x.add_argument("--prefix", help="prefix of the backbone keys (default: detected; '' for none)")
    x.add_argument("--unsafe-load", action="store_true",
                   help="fully unpickle the file (only for files you trust; needed by checkpoints holding "
                        "Python objects, e.g. solo-learn's OmegaConf hyper-parameters)")
    x.add_argument("--debug", action="store_true", default=argparse.SUPPRESS, help="show tracebacks")
    e = sub.add_parser("eval", help="linear probe, kNN and retrieval of a saved backbone")
    e.add_argument("checkpoint", help="teacher.pt or student.pt of a run")
    e.add_argument("--config", required=True, help="YAML config naming the dataset and evaluation")
    _common(e)
    e.add_argument("--out", help="also write the results to this JSON file")
    e.add_argument("--embedding", action="store_true",
                   help="evaluate a student's embedding (backbone + head, e.g. the 64-d output of dimension "
                        "reduction) instead of its backbone feature")
    return p


def _common(q: argparse.ArgumentParser) -> None:
    q.add_argument("--set", dest="overrides", nargs="+", action="extend", default=[], metavar="KEY=VALUE",
                   help="override config keys, e.g. --set transfer.sigma=3 data.batch_size=128")
    q.add_argument("--debug", action="store_true", default=argparse.SUPPRESS, help="show tracebacks")


def _run(args) -> int:
    from .config import load_config

    overrides = list(args.overrides)
    if getattr(args, "prefix", None) is not None:
        overrides.append(f"source.weights_prefix={json.dumps(args.prefix)}")
    cfg = load_config(args.config, overrides)
    out = Path(args.out) if args.out else Path("runs") / Path(args.config).stem
    from .pipeline import check_out_dir, run

    if args.resume and args.overwrite:
        from .errors import ConfigError

        raise ConfigError("--resume and --overwrite contradict each other; pass one of them")
    if not args.resume:
        check_out_dir(out, args.overwrite, keep=getattr(args, "teacher", None))  # fail before any work
    results = run(cfg, out, overwrite=args.overwrite, teacher_path=getattr(args, "teacher", None),
                  resume=args.resume)
    if results is None:  # a DDP worker process: global rank 0 evaluates, writes and reports
        return 0
    from .report import report_markdown

    print(report_markdown(results))
    print(f"results written to {out}/ (results.json, report.md, plots/, logs/, checkpoints/)")
    return 0


def _pretrain(args) -> int:
    from .config import load_config
    from .pipeline import check_out_dir, pretrain

    cfg = load_config(args.config, args.overrides)
    out = Path(args.out) if args.out else Path("runs") / f"{Path(args.config).stem}_pretrain"
    check_out_dir(out, args.overwrite)  # fail before loading data or training
    results = pretrain(cfg, out, overwrite=args.overwrite)
    if results is None:  # a DDP worker process
        return 0
    t = results["teacher"]
    print(f"{cfg.source.method} teacher ({results['models']['teacher']['arch']}, {cfg.source.epochs:g} epochs): "
          f"linear {100 * t['linear_acc']:.2f}%, kNN {100 * t['knn_acc']:.2f}% (test split)")
    print(f"results written to {out}/ (teacher.pt, results.json, logs/, checkpoints/)")
    return 0


def _export(args) -> int:
    from .models.weights import export_backbone

    info = export_backbone(args.checkpoint, args.out, arch=args.arch, stem=args.stem,
                           in_channels=args.in_channels, prefix=args.prefix, unsafe=args.unsafe_load)
    spec = info["spec"]
    dropped = f", dropped {', '.join(info['dropped'])}" if info["dropped"] else ""
    print(f"wrote {args.out}: {spec['arch']} ({spec['stem']} stem, {spec['in_channels']} channels, "
          f"{spec['feat_dim']}-d features), {info['keys']} tensors from prefix '{info['prefix']}'{dropped}")
    return 0


def _eval(args) -> int:
    from .config import load_config
    from .errors import OutputExistsError
    from .io import atomic_write_text
    from .pipeline import evaluate_checkpoint

    cfg = load_config(args.config, args.overrides)
    if args.out and Path(args.out).exists():
        raise OutputExistsError(f"'{args.out}' already exists; choose another --out or delete it")
    result = evaluate_checkpoint(args.checkpoint, cfg, embedding=args.embedding)
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
        if args.command == "pretrain":
            return _pretrain(args)
        if args.command == "export":
            return _export(args)
    except SSLTransferError as e:
        if args.debug:
            raise
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
