"""``ssl-transfer`` command line.

    ssl-transfer run CONFIG [--set key=value ...] [--out DIR] [--overwrite | --resume] [--debug]
    ssl-transfer classify CONFIG [...]     (= run with task: classify)
    ssl-transfer metric CONFIG [...]       (= run with task: metric)
    ssl-transfer transfer CONFIG --teacher WEIGHTS [--prefix P] [--set ...] [--out DIR] [--overwrite | --resume]
    ssl-transfer pretrain CONFIG [--set ...] [--out DIR] [--overwrite | --resume]
    ssl-transfer eval CHECKPOINT --config CONFIG [--set ...] [--out FILE.json] [--embedding]
    ssl-transfer export CHECKPOINT --out backbone.pth [--arch A] [--stem S] [--in-channels C] [--prefix P]

Bad input (config, data, checkpoints, the output directory, the file system) prints one line
naming the cause and the fix and exits with status 2, with nothing lost; an internal error
prints a short message and exits with status 1; ``--debug`` shows the traceback instead.
"""

from __future__ import annotations

import argparse
import errno
import json
import os
import sys
from pathlib import Path

from .errors import ConfigError, OutputExistsError, SSLTransferError


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="ssl-transfer", description=__doc__.split("\n\n")[0])
    p.add_argument("--debug", action="store_true", help="show tracebacks")
    sub = p.add_subparsers(dest="command", required=True)
    r = sub.add_parser("run", help="source stage + controls + transfer stage + evaluation")
    t = sub.add_parser("transfer", help="controls + transfer stage + evaluation from a saved teacher")
    pt = sub.add_parser("pretrain", help="source stage alone: teacher.pt + results.json with its evaluation")
    c = sub.add_parser("classify", help="classification transfer (run with task: classify)")
    m = sub.add_parser("metric", help="metric learning (run with task: metric)")
    for q, default in ((r, "runs/<config name>"), (t, "runs/<config name>"), (pt, "runs/<config name>_pretrain"),
                       (c, "runs/<config name>"), (m, "runs/<config name>")):
        q.add_argument("config", nargs="?", help="YAML config, e.g. configs/quickstart.yaml")
        _common(q)
        q.add_argument("--out", help=f"output directory (default: {default})")
        q.add_argument("--overwrite", action="store_true",
                       help="replace the run in --out (the new run replaces it only once it has completed)")
        q.add_argument("--resume", action="store_true",
                       help="continue the interrupted run in --out from its last checkpoint")
    t.add_argument("--teacher", required=True,
                   help="teacher.pt of an earlier run, or external backbone weights (lightly / solo-learn "
                        ".ckpt, torchvision or plain state dict) for the architecture of source.backbone/stem")
    t.add_argument("--prefix", help="prefix of the backbone keys in --teacher, e.g. 'backbone.' "
                                    "(default: detected; '' for none); sets source.weights_prefix")
    c.add_argument("--teacher", help="teacher instead of the source stage: teacher.pt of a run, or external "
                                     "backbone weights for source.backbone/stem (a supervised file's fc is its "
                                     "classifier)")
    c.add_argument("--prefix", help="prefix of the backbone keys in --teacher (default: detected; '' for none)")
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
    e.add_argument("--out", help="also write the results to this JSON file (never overwritten)")
    e.add_argument("--embedding", action="store_true",
                   help="evaluate a student's embedding (backbone + head, e.g. the 64-d output of dimension "
                        "reduction) instead of its backbone feature")
    return p


def _common(q: argparse.ArgumentParser) -> None:
    q.add_argument("--set", dest="overrides", nargs="+", action="extend", default=[], metavar="KEY=VALUE",
                   help="override config keys, e.g. --set transfer.loss_args.sigma=3 data.batch_size=128")
    q.add_argument("--debug", action="store_true", default=argparse.SUPPRESS, help="show tracebacks")


def _config(args) -> tuple[str, list[str]]:
    """The config path and the overrides; a config written after ``--set ...`` (where argparse
    takes it for one more override) is recognised as the item without '=' that names a file."""
    overrides = list(args.overrides)
    config = args.config
    if config is None:
        paths = [o for o in overrides if "=" not in o]
        if len(paths) != 1:
            raise ConfigError("no config file given; write e.g. ssl-transfer run configs/quickstart.yaml "
                              "--set key=value (the config before --set)")
        config = paths[0]
        overrides.remove(config)
    if getattr(args, "prefix", None) is not None:
        overrides.append(f"source.weights_prefix={json.dumps(args.prefix)}")
    if args.command in ("classify", "metric"):
        overrides.append(f"task={args.command}")
    return config, overrides


def _run(args) -> int:
    from .config import load_config
    from .runs import RunDirectory

    path, overrides = _config(args)
    cfg = load_config(path, overrides)
    stem = Path(path).stem + ("_pretrain" if args.command == "pretrain" else "")
    out = args.out if args.out is not None else str(Path("runs") / stem)
    teacher = getattr(args, "teacher", None)
    RunDirectory.check(out, args.overwrite, args.resume, keep=teacher)  # fail before any work
    from .pipeline import pretrain, run  # torch and lightning: seconds to import, so after the cheap checks

    if args.command == "pretrain":
        results = pretrain(cfg, out, overwrite=args.overwrite, resume=args.resume)
    else:
        results = run(cfg, out, overwrite=args.overwrite, teacher_path=teacher, resume=args.resume)
    if results is None:  # a DDP worker process: global rank 0 evaluates, writes and reports
        return 0
    if args.command == "pretrain":
        t = results["teacher"]
        scores = (f"linear {100 * t['linear_acc']:.2f}%, kNN {100 * t['knn_acc']:.2f}% (test split)" if "linear_acc" in t
                  else f"top-1 {100 * t['top1_acc']:.2f}% (test split)" if "top1_acc" in t
                  else f"Recall@1 {100 * t['recall@1']:.2f}%, MAP@R {100 * t['map@r']:.2f}% (test classes)")
        print(f"{cfg.source.method} teacher ({results['models']['teacher']['arch']}, {cfg.source.epochs:g} epochs): "
              f"{scores}")
        print(f"results written to {out}/ (teacher.pt, results.json, logs/, checkpoints/)")
        return 0
    from .report import report_markdown

    print(report_markdown(results))
    print(f"results written to {out}/ (results.json, report.md, plots/, logs/, checkpoints/)")
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


def _check_new_file(path: str) -> None:
    """``--out FILE`` of eval/export: it must not exist and its folder must be writable."""
    p = Path(path)
    if path == "" or p.is_dir():
        raise OutputExistsError(f"--out '{path}' is not a file name; pass e.g. --out eval.json")
    if p.exists() or p.is_symlink():
        raise OutputExistsError(f"'{path}' already exists; choose another --out or delete it")
    parent = p.parent if str(p.parent) else Path(".")
    existing = next((q for q in [parent, *parent.parents] if q.exists()), Path("."))
    if not existing.is_dir() or not os.access(existing, os.W_OK | os.X_OK):
        raise OutputExistsError(f"cannot write '{path}': '{existing}' is not a writable folder; choose another --out")


def _eval(args) -> int:
    from .config import load_config
    from .evaluation.frozen import evaluate_checkpoint
    from .io import atomic_write_text

    cfg = load_config(args.config, args.overrides)
    if args.out is not None:
        _check_new_file(args.out)
    result = evaluate_checkpoint(args.checkpoint, cfg, embedding=args.embedding)
    text = json.dumps(result, indent=2)
    print(text)
    if args.out:
        atomic_write_text(args.out, text)
    return 0


def _os_error(e: OSError) -> str:
    """One line for a file-system error met on the way in or out: the cause and the fix."""
    where = f" '{e.filename}'" if e.filename else ""
    fix = {errno.EACCES: "check its permissions", errno.EPERM: "check its permissions",
           errno.ENOSPC: "free disk space", errno.EROFS: "choose a writable location",
           errno.ENOTDIR: "a folder in the path is a file; fix the path",
           errno.ENAMETOOLONG: "use a shorter path"}.get(e.errno, "check the path")
    return f"cannot use{where}: {e.strerror or e}; {fix}"


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    commands = {"run": _run, "transfer": _run, "pretrain": _run, "classify": _run, "metric": _run, "eval": _eval,
                "export": _export}
    try:
        return commands[args.command](args)
    except SSLTransferError as e:
        if args.debug:
            raise
        print(f"error: {e}", file=sys.stderr)
        return 2
    except OSError as e:
        if args.debug:
            raise
        print(f"error: {_os_error(e)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("error: interrupted; continue the run with --resume", file=sys.stderr)
        return 130
    except Exception as e:  # a bug, not bad input
        if args.debug:
            raise
        print(f"internal error: {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''} "
              "(rerun with --debug for the traceback, and please report it)", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
