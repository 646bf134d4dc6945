"""The source stage's SimCLR teacher vs a plain lightly example pipeline, in one run.

Both train the same backbone (ResNet-18 of ``source.backbone/stem``, the dataset's channels) for
the same number of optimizer steps (``source.epochs`` of ``data.batch_size`` batches) on the same
training split, and are evaluated by the same code (linear probe with C chosen on the validation
split, weighted kNN; test split read once per model).

The plain pipeline is lightly's SimCLR example (``examples/pytorch_lightning/simclr.py`` in
lightly-ai/lightly) with only what the data forces changed: ``SimCLRProjectionHead(512, 2048,
2048)``, ``NTXentLoss()`` (temperature 0.5), ``torch.optim.SGD(lr=0.06)`` without momentum or
schedule, ``SimCLRTransform`` with its default augmentations at the dataset's image size, normalised
with the dataset's mean/std (lightly's ImageNet statistics have three channels), a shuffled
DataLoader with ``drop_last=True``.

    python -m bench.source_baseline configs/quickstart.yaml --out runs/source_baseline \
        --json docs/data/source_baseline_seed0.json
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import lightning as L
import torch
from lightly.loss import NTXentLoss
from lightly.models.modules.heads import SimCLRProjectionHead
from lightly.transforms import SimCLRTransform
from torch.utils.data import DataLoader, Dataset

from ssl_transfer.config import load_config
from ssl_transfer.data import DataBundle
from ssl_transfer.evaluation.frozen import evaluate
from ssl_transfer.models import build_backbone
from ssl_transfer.pipeline import pretrain
from ssl_transfer.runs import versions
from ssl_transfer.runtime import setup_runtime, steps_for


class PlainViews(Dataset):
    """(views, label) of the bundle's training images through lightly's SimCLRTransform."""

    def __init__(self, bundle: DataBundle, transform):
        self.bundle, self.transform = bundle, transform

    def __len__(self) -> int:
        return len(self.bundle.train_idx)

    def __getitem__(self, k: int):
        i = int(self.bundle.train_idx[k])
        return self.transform(self.bundle.raw.pil("train", i)), 0


class PlainSimCLR(L.LightningModule):
    """lightly's example SimCLR module (backbone from this project's builder: the same network)."""

    def __init__(self, backbone: torch.nn.Module, feat_dim: int):
        super().__init__()
        self.backbone = backbone
        self.projection_head = SimCLRProjectionHead(feat_dim, 2048, 2048)
        self.criterion = NTXentLoss()

    def training_step(self, batch, batch_idx):
        (x0, x1), _ = batch
        z0 = self.projection_head(self.backbone(x0))
        z1 = self.projection_head(self.backbone(x1))
        loss = self.criterion(z0, z1)
        self.log("train_loss", loss, prog_bar=True, batch_size=x0.shape[0])
        return loss

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.06)


def plain_lightly(cfg, bundle: DataBundle, steps: int) -> tuple[torch.nn.Module, float]:
    transform = SimCLRTransform(input_size=bundle.image_size,
                                normalize={"mean": list(bundle.raw.mean), "std": list(bundle.raw.std)})
    loader = DataLoader(PlainViews(bundle, transform), batch_size=cfg.data.batch_size, shuffle=True,
                        drop_last=True, num_workers=cfg.data.num_workers,
                        persistent_workers=cfg.data.num_workers > 0)
    L.seed_everything(cfg.seed, workers=True, verbose=False)
    backbone, spec = build_backbone(cfg.source.backbone, cfg.source.stem, bundle.channels)
    module = PlainSimCLR(backbone, spec.feat_dim)
    trainer = L.Trainer(max_steps=steps, max_epochs=-1, accelerator=cfg.trainer.accelerator, logger=False,
                        enable_checkpointing=False, enable_model_summary=False,
                        enable_progress_bar=cfg.trainer.enable_progress_bar)
    start = time.perf_counter()
    trainer.fit(module, loader)
    return module.backbone.cpu(), time.perf_counter() - start


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("config")
    p.add_argument("--set", dest="overrides", nargs="+", default=[])
    p.add_argument("--out", required=True, help="run directory of the source stage (replaced)")
    p.add_argument("--json", required=True, help="file for both models' figures")
    args = p.parse_args(argv)
    cfg = load_config(args.config, args.overrides)
    if cfg.source.method != "simclr":
        sys.exit("error: the plain lightly pipeline is SimCLR; set source.method=simclr")
    started = time.perf_counter()
    ours = pretrain(cfg, args.out, overwrite=Path(args.out).exists())
    bundle = DataBundle.from_config(cfg.data, cfg.seed, method="simclr")
    setup_runtime(cfg)
    steps = steps_for(cfg.source.epochs, len(bundle.train_loader(cfg.seed)))
    backbone, seconds = plain_lightly(cfg, bundle, steps)
    plain = evaluate(backbone, bundle, cfg)
    keys = ("linear_acc", "knn_acc", "val_linear_acc", "val_knn_acc")
    out = {
        "command": "python -m bench.source_baseline " + " ".join(sys.argv[1:] if argv is None else argv),
        "steps": steps, "batch_size": cfg.data.batch_size, "epochs": cfg.source.epochs,
        "ssl_transfer": {**{k: ours["teacher"][k] for k in keys}, "train_s": ours["timings_s"]["source"],
                         "linear_C": ours["teacher"]["linear"].get("C")},
        "plain_lightly": {**{k: plain[k] for k in keys}, "train_s": seconds, "linear_C": plain["linear"].get("C")},
        "config": cfg.to_dict(), "data_sizes": bundle.sizes(), "threads": torch.get_num_threads(),
        "versions": versions(), "total_s": time.perf_counter() - started,
    }
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps(out, indent=2))
    for name in ("ssl_transfer", "plain_lightly"):
        r = out[name]
        print(f"{name:14s} linear {100 * r['linear_acc']:.2f}  kNN {100 * r['knn_acc']:.2f}  "
              f"(val {100 * r['val_linear_acc']:.2f} / {100 * r['val_knn_acc']:.2f})  train {r['train_s']:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
