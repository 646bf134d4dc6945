"""Frozen-feature extraction: batched, no gradient, eval mode, model state restored after.

This is the single extraction function of the package: the fast probe, kNN and retrieval all
evaluate features produced here. It is deterministic for a deterministic loader (no shuffling,
no random transforms): eval mode uses BatchNorm running statistics and disables dropout, so the
same model and loader give the same features.

Example:
    >>> from ssl_transfer.models.torchvision_models import load_backbone  # any nn.Module will do
    >>> backbone, info = load_backbone("runs/x/teacher.pt")
    >>> feats, labels = extract_features(backbone, test_loader, device="cuda")
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import nn


def _model_device(model: nn.Module) -> torch.device:
    for t in model.parameters():
        return t.device
    for t in model.buffers():
        return t.device
    return torch.device("cpu")


def conv_weights_to(model: nn.Module, memory_format: torch.memory_format) -> list[tuple[nn.Parameter, torch.Tensor]]:
    """Restride the model's 4-d parameters (convolution weights) to ``memory_format`` in place and
    return ``(parameter, previous data)`` pairs, so that a caller can put the very tensors back.

    ``.to(memory_format=...)``, not ``.contiguous(memory_format=...)``: for a 1-channel stem
    (C = 1) both layouts count as contiguous, ``.contiguous()`` keeps the old strides, and the
    first convolution, followed by every later layer, would stay NCHW (docs/speed.md).
    """
    previous = [(p, p.data) for p in model.parameters() if p.ndim == 4]
    for p, data in previous:
        p.data = data.to(memory_format=memory_format)
    return previous


def extract_features(model: nn.Module, loader: Iterable, device: str | torch.device | None = None,
                     *, max_batches: int | None = None, dtype: torch.dtype = torch.float32,
                     channels_last: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """Return ``(features (n, d) on CPU, labels (n,))`` for a loader of ``(x, y, ...)`` batches.

    Args:
        model: maps a batch (b, ...) to features (b, ...); flattened to (b, d).
        loader: yields ``(x, y)`` or ``(x, y, anything...)`` batches.
        device: where the inputs are sent (default: the device of the model's parameters).
            The model itself is not moved.
        max_batches: stop after this many batches (e.g. a quick check); default all.
        dtype: dtype of the returned features (default float32, whatever the model computes in).
        channels_last: run 4-d inputs and convolution weights in channels_last layout (on a
            2-core CPU ~20 % faster for a ResNet-18, docs/speed.md; the same features up to float
            rounding); the weights' own layout is put back afterwards.

    The model runs in eval mode (BatchNorm uses its running statistics and does not update
    them; dropout is off) under ``torch.inference_mode``; the previous train/eval mode of every
    submodule (and the layout of its weights) is restored afterwards, also on error. Nothing of
    the model's state changes. The returned tensors are ordinary ones (concatenated outside
    inference mode), so they may also serve as constants in a training loss (teacher_cache).
    """
    if max_batches is not None and max_batches < 1:
        raise ValueError(f"max_batches must be >= 1 or None, got {max_batches}")
    device = torch.device(device) if device is not None else _model_device(model)
    modes = [(m, m.training) for m in model.modules()]  # per-module, so mixed modes survive
    model.eval()
    feats, labels, layouts = [], [], []
    try:
        if channels_last:
            layouts = conv_weights_to(model, torch.channels_last)
        with torch.inference_mode():
            for i, batch in enumerate(loader):
                if max_batches is not None and i >= max_batches:
                    break
                x, y = batch[0].to(device, non_blocking=True), batch[1]
                if channels_last and x.ndim == 4:
                    x = x.contiguous(memory_format=torch.channels_last)
                feats.append(model(x).flatten(1).to("cpu", dtype))
                labels.append(torch.as_tensor(y).cpu())
    finally:
        for m, mode in modes:
            m.training = mode
        for p, data in layouts:
            p.data = data
    if not feats:
        raise ValueError("the loader yielded no batches; nothing to extract")
    return torch.cat(feats), torch.cat(labels)
