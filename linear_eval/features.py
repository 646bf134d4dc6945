"""Frozen-feature extraction: batched, no gradient, eval mode, model state restored after."""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import nn


@torch.no_grad()
def extract_features(model: nn.Module, loader: Iterable, device: str | torch.device = "cpu"):
    """Return ``(features (n, d) float32 on CPU, labels (n,))`` for ``(x, y, ...)`` batches.

    The model runs in eval mode (BatchNorm uses its running statistics and does not update
    them); its previous train/eval mode is restored afterwards.
    """
    was_training = model.training
    model.eval()
    feats, labels = [], []
    try:
        for batch in loader:
            x, y = batch[0], batch[1]
            feats.append(model(x.to(device)).float().flatten(1).cpu())
            labels.append(torch.as_tensor(y).cpu())
    finally:
        model.train(was_training)
    if not feats:
        raise ValueError("the loader yielded no batches; nothing to extract")
    return torch.cat(feats), torch.cat(labels)
