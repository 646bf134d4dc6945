"""Speed ratios of the transfer stage, measured in one run (issue 5, item 8).

    python -m bench.speed [--config configs/quickstart.yaml] [--threads 1] [--out docs/speed.md]

1. **Loss**: ``RelaxedContrastiveLoss`` forward + backward at n = 512, d = 512 (float32) against
   one n×n×d matmul ((512, 512) @ (512, 512)); target at most 4×. The same is timed for the
   loss written as plain autograd on the formula (what relaxed.py computed before its
   hand-written gradient), for its forward alone and for the teacher's relaxed labels alone
   (the loss needs three products of that size: the teacher's and the student's Gram
   matrices, both symmetric, and one in the backward pass).
2. **Step**: one optimisation step of the transfer stage (``TransferModule``: frozen teacher on
   the clean images, student on the views, the configured loss and cross-batch memory, AdamW)
   against one SimCLR step (``SimCLRModule``: the same backbone on the same views, projection
   head, NT-Xent, SGD), both driven by a Lightning ``Trainer`` on the same batch of the
   config's data; target at most 1.4×. Pieces timed alone say what the difference is made of.

Every timing is the median of repeats after warm-up, measured in interleaved rounds (so a
change in the machine's load affects both sides of a ratio alike), with a fixed number of
threads. Raw numbers go to ``docs/data/speed.json``, the table to ``docs/speed.md``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[1]

LOSS_TARGET, STEP_TARGET = 4.0, 1.4


def machine() -> dict:
    cpu = "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    import lightning

    return {"cpu": cpu, "cores": os.cpu_count(), "threads": torch.get_num_threads(),
            "torch": torch.__version__, "lightning": lightning.__version__,
            "python": platform.python_version(), "platform": platform.platform(),
            "loadavg_start": os.getloadavg()[0]}


def _time(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def interleaved(fns: dict, warmup: int, rounds: int, per_round: int) -> dict[str, list[float]]:
    """Run each fn ``warmup`` times, then ``rounds`` rounds of ``per_round`` calls of every fn in
    turn; return all timed calls per name."""
    for fn in fns.values():
        for _ in range(warmup):
            fn()
    times: dict[str, list[float]] = {k: [] for k in fns}
    for _ in range(rounds):
        for name, fn in fns.items():
            times[name].extend(_time(fn) for _ in range(per_round))
    return times


# ------------------------------------------------------------------------------- loss
def autograd_relaxed(student, teacher, sigma: float, delta: float):
    """The relaxed contrastive loss as plain autograd on the formula (relaxed.py's helpers)."""
    from ssl_transfer.losses.relaxed import row_normalised_distances, teacher_relaxed_labels

    w = teacher_relaxed_labels(teacher.detach(), sigma)
    d = row_normalised_distances(student)
    w = w.to(d.dtype)
    terms = w * d.pow(2) + (1.0 - w) * F.relu(delta - d).pow(2)
    return torch.where(d > 0, terms, torch.zeros_like(d)).sum() / d.shape[0]


def bench_loss(n: int, d: int, warmup: int, rounds: int, per_round: int, seed: int = 0) -> dict:
    from ssl_transfer.losses import RelaxedContrastiveLoss
    from ssl_transfer.losses.relaxed_fused import relaxed_labels_fused

    g = torch.Generator().manual_seed(seed)
    s, t = torch.randn(n, d, generator=g), torch.randn(n, d, generator=g)
    a, b = torch.randn(n, n, generator=g), torch.randn(n, d, generator=g)
    fn = RelaxedContrastiveLoss(sigma=3.0, delta=1.0)
    x = s.clone().requires_grad_()

    def fwd_bwd(loss_fn):
        def call():
            x.grad = None
            loss_fn(x, t).backward()
        return call

    def fwd_only():
        with torch.no_grad():
            fn(s, t)

    fns = {
        "matmul": lambda: a @ b,
        "loss_fwd_bwd": fwd_bwd(fn),
        "loss_fwd_no_grad": fwd_only,
        "teacher_labels": lambda: relaxed_labels_fused(t, 3.0),
        "autograd_fwd_bwd": fwd_bwd(lambda u, v: autograd_relaxed(u, v, 3.0, 1.0)),
    }
    times = interleaved(fns, warmup, rounds, per_round)
    med = {k: statistics.median(v) for k, v in times.items()}
    low = {k: min(v) for k, v in times.items()}
    return {"n": n, "d": d, "dtype": "float32", "median_s": med, "min_s": low, "times_s": times,
            "ratio_of_minima": low["loss_fwd_bwd"] / low["matmul"],
            "ratio": med["loss_fwd_bwd"] / med["matmul"],
            "ratio_autograd": med["autograd_fwd_bwd"] / med["matmul"],
            "ratio_fwd_no_grad": med["loss_fwd_no_grad"] / med["matmul"],
            "ratio_teacher_labels": med["teacher_labels"] / med["matmul"]}


# ------------------------------------------------------------------------------- step
class StepTimer:
    """Lightning callback: wall time from on_train_batch_start to on_train_batch_end (forward,
    backward, optimizer step)."""

    def __init__(self):
        self.times: list[float] = []
        self._start = 0.0

    def on_train_batch_start(self, *args, **kwargs):
        self._start = time.perf_counter()

    def on_train_batch_end(self, *args, **kwargs):
        self.times.append(time.perf_counter() - self._start)


def _timer_callback():
    from lightning.pytorch.callbacks import Callback

    class _Cb(StepTimer, Callback):
        pass

    return _Cb()


def fit_steps(module, batch: dict, steps: int, channels_last: bool = False) -> list[float]:
    """``steps`` training steps of ``module`` on ``batch`` (the same batch every step), with the
    runner's channels_last layout when asked (``trainer.channels_last``)."""
    import lightning as L
    from torch.utils.data import DataLoader

    from ssl_transfer.runtime import ChannelsLast

    timer = _timer_callback()
    trainer = L.Trainer(accelerator="cpu", devices=1, max_epochs=-1, max_steps=steps, logger=False,
                        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                        num_sanity_val_steps=0, limit_val_batches=0,
                        callbacks=[timer, *([ChannelsLast()] if channels_last else [])])
    trainer.fit(module, train_dataloaders=DataLoader([batch] * steps, batch_size=None))
    return timer.times


def bench_step(config: str, overrides: list[str], warmup: int, rounds: int, per_round: int) -> dict:
    import copy

    from ssl_transfer.config import load_config
    from ssl_transfer.data import DataBundle
    from ssl_transfer.runtime import setup_runtime
    from ssl_transfer.stages.pretrain import SimCLRModule
    from ssl_transfer.stages.transfer import FrozenTeacher, TransferModule, build_student

    cfg = load_config(config, overrides)
    threads = torch.get_num_threads()
    setup_runtime(cfg)
    torch.set_num_threads(threads)  # the benchmark's --threads, not the config's
    tc = cfg.transfer
    bundle = DataBundle.from_config(cfg.data, cfg.seed, method=cfg.source.method)
    clean = tc.teacher_views == "clean"
    batch = next(iter(bundle.train_loader(cfg.seed, clean=clean)))
    torch.manual_seed(cfg.seed)
    teacher = SimCLRModule(cfg.source, cfg.data, bundle.channels)  # weights do not matter

    def simclr_module():
        return SimCLRModule(cfg.source, cfg.data, bundle.channels)

    def transfer_module():
        head = teacher.projection_head if tc.teacher_output == "projection" else None
        student = build_student(tc, teacher.backbone, teacher.spec, bundle.channels)
        frozen = FrozenTeacher(teacher.backbone, teacher.spec.feat_dim, head, cfg.source.proj_out_dim)
        return TransferModule(tc, cfg.data, student, frozen)

    # whole steps: each round a fresh Trainer per module; the first `warmup` steps are dropped
    # (they also fill the cross-batch memory: memory_size / (views * batch) steps)
    views = len(batch["views"])
    fill = -(-tc.memory_size // (views * cfg.data.batch_size)) if tc.memory_size else 0
    warm = max(warmup, fill + 1)
    steps: dict[str, list[float]] = {"simclr_step": [], "transfer_step": []}
    cl = cfg.trainer.channels_last
    for _ in range(rounds):
        steps["simclr_step"] += fit_steps(simclr_module(), copy.deepcopy(batch), warm + per_round, cl)[warm:]
        steps["transfer_step"] += fit_steps(transfer_module(), copy.deepcopy(batch), warm + per_round, cl)[warm:]

    # pieces, on the same batch and modules (no Lightning): what the ratio is made of
    x = torch.cat(batch["views"])
    simclr, transfer = simclr_module(), transfer_module()
    if cl:
        from linear_eval.features import conv_weights_to

        for module in (simclr, transfer):
            conv_weights_to(module, torch.channels_last)
    simclr.train()
    transfer.train()
    mem = tc.memory_size
    n_pairs = x.shape[0] + mem
    s_mem = torch.randn(n_pairs, transfer.student.embed_dim)
    t_mem = torch.randn(n_pairs, transfer.memory_teacher.shape[1])

    def backbone_fwd_bwd():
        simclr.zero_grad(set_to_none=True)
        simclr.backbone(x).sum().backward()

    def simclr_head_and_loss():
        h = torch.randn(x.shape[0], simclr.spec.feat_dim, requires_grad=True)
        z = simclr.projection_head(h).split(x.shape[0] // views)
        simclr.criterion(z[0], z[1]).backward()

    def teacher_forward():
        transfer.teacher_embeddings(batch, x)

    def transfer_loss():
        e = s_mem.clone().requires_grad_()
        transfer.criterion(e, t_mem).backward()

    pieces = interleaved({"backbone_fwd_bwd": backbone_fwd_bwd, "simclr_head_and_loss": simclr_head_and_loss,
                          "teacher_forward": teacher_forward, "transfer_loss_fwd_bwd": transfer_loss},
                         warmup=1, rounds=rounds, per_round=max(2, per_round // 2))
    med = {k: statistics.median(v) for k, v in {**steps, **pieces}.items()}
    low = {k: min(v) for k, v in {**steps, **pieces}.items()}
    return {"config": config, "overrides": overrides, "batch_size": cfg.data.batch_size, "views": views,
            "student": f"{cfg.source.backbone}/{cfg.source.stem}", "input_size": bundle.image_size,
            "loss": tc.loss, "memory_size": mem, "loss_pairs_n": n_pairs, "teacher_views": tc.teacher_views,
            "warmup_steps": warm, "median_s": med, "min_s": low, "times_s": {**steps, **pieces},
            "ratio": med["transfer_step"] / med["simclr_step"],
            "ratio_of_minima": low["transfer_step"] / low["simclr_step"]}


# ------------------------------------------------------------------------------- report
def markdown(res: dict, command: str) -> str:
    m, lo, st = res["machine"], res["loss"], res["step"]
    lm, sm = lo["median_s"], st["median_s"]
    ok = lambda r, target: "**met**" if r <= target else "**not met**"  # noqa: E731
    ms = lambda v: f"{1000 * v:.2f}"  # noqa: E731
    lines = [
        "# Transfer-stage speed",
        "",
        f"Produced by `{command}` (one run; raw numbers: `docs/data/speed.json`).",
        "",
        f"- Machine: {m['cpu']}, {m['cores']} cores; torch {m['torch']}, lightning {m['lightning']}, "
        f"**{m['threads']} thread(s)**, float32, no GPU.",
        f"- Load average (1 min) at start / end: {m['loadavg_start']:.2f} / {m['loadavg_end']:.2f} "
        + ("(the cores were shared with other jobs; " if max(m['loadavg_start'], m['loadavg_end']) > 1.5
           else "(no other job running; ")
        + "the ratios are measured in interleaved rounds so that load changes hit both sides alike).",
        f"- Medians over {res['settings']['rounds']} interleaved rounds, after warm-up "
        f"(loss: {res['settings']['loss_per_round']} calls per round and function; steps: "
        f"{res['settings']['step_per_round']} steps per round after {st['warmup_steps']} warm-up steps).",
        "",
        "## Summary",
        "",
        "| ratio | measured (medians) | ratio of the minima | target | |",
        "|---|---:|---:|---:|---|",
        f"| relaxed contrastive loss fwd + bwd (n = {lo['n']}, d = {lo['d']}) / one n×n×d matmul | "
        f"{lo['ratio']:.2f}× | {lo['ratio_of_minima']:.2f}× | ≤ {LOSS_TARGET:g}× | {ok(lo['ratio'], LOSS_TARGET)} |",
        f"| transfer step / SimCLR step (same student, same batch) | {st['ratio']:.2f}× | "
        f"{st['ratio_of_minima']:.2f}× | ≤ {STEP_TARGET:g}× | {ok(st['ratio'], STEP_TARGET)} |",
        "",
        "The verdict uses the medians; the minima (fastest repeat of each) are shown as the "
        "estimate for an unloaded machine.",
        "",
        "## 1. Loss against one matmul",
        "",
        f"n = {lo['n']} embeddings, d = {lo['d']} (student and teacher), float32, sigma 3, delta 1.",
        "",
        "| call | median ms | / matmul | min ms | / matmul (min) |",
        "|---|---:|---:|---:|---:|",
    ]
    mn = lo["min_s"]
    for key, label in (("matmul", f"one ({lo['n']}, {lo['n']}) @ ({lo['n']}, {lo['d']}) matmul"),
                       ("loss_fwd_bwd", "`RelaxedContrastiveLoss` forward + backward"),
                       ("loss_fwd_no_grad", "`RelaxedContrastiveLoss` forward only (no grad)"),
                       ("teacher_labels", "teacher relaxed labels alone (normalise, Gram, exp)"),
                       ("autograd_fwd_bwd", "same loss as plain autograd on the formula (before)")):
        lines.append(f"| {label} | {ms(lm[key])} | {lm[key] / lm['matmul']:.2f} | {ms(mn[key])} | "
                     f"{mn[key] / mn['matmul']:.2f} |")
    lines += [
        "",
        "The loss needs three products of this size: the teacher's Gram matrix (for w), the "
        "student's (for D) and one in the backward pass ((P + Pᵀ) s); both Gram matrices are "
        "symmetric, so they are computed as three of their four (n/2)-blocks: 2.5 matmuls' worth "
        "of multiply-adds in all. The rest is O(n²) elementwise work. `relaxed_fused.py` computes the "
        "gradient by hand (formula in `DenseRelaxedContrastive`): three (n, n) allocations "
        "instead of about twenty and in-place passes (about 20 passes over n² floats remain), "
        "the loss value taken from the gradient's terms, one (n, n) matrix kept for backward, one "
        "backward matmul instead of two, the unit scaling folded into the Gram. Values and "
        "gradients equal autograd's on the formula to rounding (tests/test_relaxed_fused.py, "
        "tests/test_relaxed_loss.py, tests/test_losses_blocked.py).",
        "",
        "## 2. Transfer step against SimCLR step",
        "",
        f"Config `{st['config']}` {' '.join(st['overrides'])}: student {st['student']} at "
        f"{st['input_size']}x{st['input_size']}, batch {st['batch_size']} images x {st['views']} views; "
        f"transfer loss {st['loss']}, teacher views `{st['teacher_views']}`, cross-batch memory "
        f"{st['memory_size']} (the loss sees n = {st['loss_pairs_n']} embeddings). Whole optimisation "
        "steps through Lightning (forward, backward, optimizer step), data already in memory.",
        "",
        "| measured | median ms | / SimCLR step | min ms | / SimCLR step (min) |",
        "|---|---:|---:|---:|---:|",
    ]
    sn = st["min_s"]
    for key, label in (("simclr_step", "SimCLR step (`SimCLRModule`)"),
                       ("transfer_step", "transfer step (`TransferModule`)"),
                       ("backbone_fwd_bwd", f"piece: backbone forward + backward on the "
                                            f"{st['batch_size'] * st['views']} views"),
                       ("simclr_head_and_loss", "piece: SimCLR projection head + NT-Xent, fwd + bwd"),
                       ("teacher_forward", "piece: frozen teacher forward (transfer only)"),
                       ("transfer_loss_fwd_bwd", f"piece: transfer loss fwd + bwd at n = {st['loss_pairs_n']} "
                                                 "(transfer only)")):
        lines.append(f"| {label} | {ms(sm[key])} | {sm[key] / sm['simclr_step']:.2f} | {ms(sn[key])} | "
                     f"{sn[key] / sn['simclr_step']:.2f} |")
    lines.append("")
    lines += res.get("notes", [])
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--config", default="configs/quickstart.yaml")
    ap.add_argument("--set", dest="overrides", nargs="+", action="extend", default=[])
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--loss-per-round", type=int, default=20)
    ap.add_argument("--step-per-round", type=int, default=4)
    ap.add_argument("--warmup-steps", type=int, default=3)
    ap.add_argument("--n", type=int, default=512)
    ap.add_argument("--d", type=int, default=512)
    ap.add_argument("--out", default="docs/speed.md")
    ap.add_argument("--json", default="docs/data/speed.json")
    ap.add_argument("--notes", help="markdown file appended to the report (interpretation)")
    ap.add_argument("--render", help="only re-render the markdown from this speed.json (raw times)")
    args = ap.parse_args(argv)
    if args.render:
        res = json.loads(Path(args.render).read_text())
        for part, (num, den) in (("loss", ("loss_fwd_bwd", "matmul")), ("step", ("transfer_step", "simclr_step"))):
            low = res[part]["min_s"] = {k: min(v) for k, v in res[part]["times_s"].items()}
            res[part]["ratio_of_minima"] = low[num] / low[den]
        res["notes"] = ["", Path(args.notes).read_text()] if args.notes else res.get("notes", [])
        Path(args.out).write_text(markdown(res, res.get("command", "python -m bench.speed")))
        print(f"written {args.out}")
        return 0
    torch.set_num_threads(args.threads)
    res = {"machine": machine(), "settings": {"rounds": args.rounds, "loss_per_round": args.loss_per_round,
                                              "step_per_round": args.step_per_round}}
    res["loss"] = bench_loss(args.n, args.d, warmup=5, rounds=args.rounds, per_round=args.loss_per_round)
    print(f"loss: {res['loss']['ratio']:.2f}x one matmul (autograd formula: {res['loss']['ratio_autograd']:.2f}x)",
          flush=True)
    res["step"] = bench_step(args.config, args.overrides, args.warmup_steps, args.rounds, args.step_per_round)
    print(f"step: transfer / SimCLR = {res['step']['ratio']:.2f}", flush=True)
    res["machine"]["loadavg_end"] = os.getloadavg()[0]
    if args.notes:
        res["notes"] = ["", Path(args.notes).read_text()]
    command = "python -m bench.speed " + " ".join(argv if argv is not None else sys.argv[1:])
    res["command"] = command.strip()
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps(res, indent=1))
    Path(args.out).write_text(markdown(res, command.strip()))
    print(f"written {args.out} and {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
