"""S3: does the input pipeline keep up with the model? A training step fed by the real data
pipeline against the same step on the same batches already in memory.

    python -m bench.pipeline_speed [--config configs/quickstart.yaml] [--steps 12] [--warmup 3] \
        [--json docs/data/pipeline_speed.json] [--set key=value ...]

For SimCLR (``SimCLRModule``) and transfer (``TransferModule``: frozen teacher on the clean
images, the config's loss) on two datasets — Fashion-MNIST (28×28, grey) and a generated
CIFAR-sized set (32×32 RGB, the CIFAR-10 view preset) — each step is timed from one batch's start
to the next one's, so the time the loop waits for the loader counts. The real loader is the
bundle's (``data.num_workers`` processes, lightly's per-image PIL views); the preloaded loader
yields the same batches, collected beforehand. Target: real / preloaded ≤ 1.1×.
"""

from __future__ import annotations

import argparse
import itertools
import json
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

from ssl_transfer.config import load_config
from ssl_transfer.data import DataBundle, RawDataset
from ssl_transfer.runtime import setup_runtime

TARGET = 1.1


def cifar_sized(n_train: int = 6000, n_test: int = 1000, seed: int = 0) -> RawDataset:
    """A generated dataset in CIFAR-10's shape (uint8 32×32×3, 10 classes), in memory."""
    g = np.random.default_rng(seed)
    return RawDataset(name="cifar10", train_images=g.integers(0, 256, (n_train, 32, 32, 3), dtype=np.uint8),
                      train_labels=g.integers(0, 10, n_train).astype(np.int64),
                      test_images=g.integers(0, 256, (n_test, 32, 32, 3), dtype=np.uint8),
                      test_labels=g.integers(0, 10, n_test).astype(np.int64), classes=[str(i) for i in range(10)],
                      mean=[0.5, 0.5, 0.5], std=[0.25, 0.25, 0.25], location="generated")


def intervals(module, loader, steps: int, channels_last: bool = False) -> list[float]:
    """Seconds from each batch's start to the next one's (data waiting included), ``steps`` steps;
    with the runner's channels_last layout when asked (``trainer.channels_last``)."""
    import lightning as L

    from ssl_transfer.runtime import ChannelsLast

    starts: list[float] = []

    class Clock(L.Callback):
        def on_train_batch_start(self, *args, **kwargs):
            starts.append(time.perf_counter())

        def on_train_end(self, *args, **kwargs):
            starts.append(time.perf_counter())

    trainer = L.Trainer(accelerator="cpu", devices=1, max_epochs=-1, max_steps=steps, logger=False,
                        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                        num_sanity_val_steps=0, limit_val_batches=0, use_distributed_sampler=False,
                        callbacks=[Clock(), *([ChannelsLast()] if channels_last else [])])
    trainer.fit(module, train_dataloaders=loader)
    return [b - a for a, b in itertools.pairwise(starts)]


def modules(cfg, bundle):
    """Fresh SimCLR and transfer modules (random weights: speed does not depend on them)."""
    from ssl_transfer.stages.pretrain import SimCLRModule
    from ssl_transfer.stages.transfer import FrozenTeacher, TransferModule, build_student

    torch.manual_seed(0)
    teacher = SimCLRModule(cfg.source, cfg.data, bundle.channels)
    frozen = FrozenTeacher(teacher.backbone, teacher.spec.feat_dim)
    return {"simclr": lambda: SimCLRModule(cfg.source, cfg.data, bundle.channels),
            "transfer": lambda: TransferModule(cfg.transfer, cfg.data, build_student(
                cfg.transfer, teacher.backbone, teacher.spec, bundle.channels), frozen)}


def measure(cfg, bundle, steps: int, warmup: int) -> dict:
    out = {}
    for kind, make in modules(cfg, bundle).items():
        clean = kind == "transfer" and cfg.transfer.teacher_views == "clean"
        real = bundle.train_loader(cfg.seed, clean=clean)
        batches = list(itertools.islice(iter(bundle.train_loader(cfg.seed, clean=clean)), steps))
        pre = torch.utils.data.DataLoader(batches, batch_size=None)
        cl = cfg.trainer.channels_last
        t_real = intervals(make(), real, steps, cl)[warmup:]
        t_pre = intervals(make(), pre, steps, cl)[warmup:]
        images = cfg.data.batch_size
        out[kind] = {"real_median_s": statistics.median(t_real), "preloaded_median_s": statistics.median(t_pre),
                     "ratio": statistics.median(t_real) / statistics.median(t_pre),
                     "real_images_per_s": images / statistics.median(t_real),
                     "preloaded_images_per_s": images / statistics.median(t_pre),
                     "real_s": t_real, "preloaded_s": t_pre}
        print(f"{bundle.raw.name} {kind}: real {out[kind]['real_median_s']:.3f} s, preloaded "
              f"{out[kind]['preloaded_median_s']:.3f} s, ratio {out[kind]['ratio']:.2f}", flush=True)
    return out


def run(config: str, overrides: list[str], steps: int, warmup: int) -> dict:
    cfg = load_config(config, overrides)
    setup_runtime(cfg)
    res = {"config": config, "overrides": overrides, "threads": torch.get_num_threads(),
           "num_workers": cfg.data.num_workers, "batch_size": cfg.data.batch_size, "steps": steps, "warmup": warmup}
    fmnist = DataBundle.from_config(cfg.data, cfg.seed)
    res["fashion_mnist"] = measure(cfg, fmnist, steps, warmup)
    cifar = load_config(config, [*overrides, "data.name=cifar10", "data.val_size=500"])
    raw = cifar_sized()
    idx = np.arange(raw.count("train"))
    bundle = DataBundle(cfg=cifar.data, raw=raw, train_idx=idx[500:], eval_train_idx=idx[500:], val_idx=idx[:500],
                        test_idx=np.arange(raw.count("test")), method=cifar.source.method)
    res["cifar_sized"] = measure(cifar, bundle, steps, warmup)
    return res


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--config", default="configs/quickstart.yaml")
    ap.add_argument("--set", dest="overrides", nargs="+", action="extend", default=[])
    ap.add_argument("--steps", type=int, default=12)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--json", default="docs/data/pipeline_speed.json")
    args = ap.parse_args(argv)
    res = run(args.config, args.overrides, args.steps, args.warmup)
    res["command"] = "python -m bench.pipeline_speed " + " ".join(argv if argv is not None else sys.argv[1:])
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps(res, indent=1))
    print(f"written {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
