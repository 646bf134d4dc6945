"""Weighted k-nearest-neighbour accuracy on frozen features (Wu et al. 2018 protocol).

Each query votes with its k most cosine-similar bank items, each weighted by exp(sim / T);
the class with the largest summed weight is predicted. The votes are lightly's
``knn_predict``; queries are processed in chunks so the (queries x bank) similarity matrix
never exceeds ``chunk_size`` rows.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from lightly.utils.benchmarking import knn_predict


def _as_tensor(x, dtype=torch.float32) -> torch.Tensor:
    return x.to(dtype) if isinstance(x, torch.Tensor) else torch.as_tensor(np.asarray(x), dtype=dtype)


@torch.no_grad()
def knn_predictions(
    train_x, train_y, test_x, k: int = 200, temperature: float = 0.1,
    num_classes: int | None = None, chunk_size: int = 1024,
) -> torch.Tensor:
    """Top-1 kNN predictions (m,) for ``test_x`` (m, d) against the bank ``train_x`` (n, d)."""
    bank = F.normalize(_as_tensor(train_x), dim=1)
    labels = _as_tensor(train_y, torch.int64)
    queries = F.normalize(_as_tensor(test_x), dim=1)
    if bank.shape[0] != labels.shape[0]:
        raise ValueError(f"train_x has {bank.shape[0]} rows but train_y has {labels.shape[0]}")
    if bank.shape[1] != queries.shape[1]:
        raise ValueError(f"train_x has dim {bank.shape[1]} but test_x has dim {queries.shape[1]}")
    if k < 1 or temperature <= 0:
        raise ValueError(f"need k >= 1 and temperature > 0, got k={k}, temperature={temperature}")
    num_classes = int(num_classes or int(labels.max()) + 1)
    k = min(k, bank.shape[0])
    bank_t = bank.T.contiguous()  # (d, n), the layout knn_predict expects
    preds = [
        knn_predict(queries[i:i + chunk_size], bank_t, labels, num_classes, k, temperature)[:, 0]
        for i in range(0, queries.shape[0], chunk_size)
    ]
    return torch.cat(preds) if preds else torch.empty(0, dtype=torch.int64)


def knn_accuracy(train_x, train_y, test_x, test_y, k: int = 200, temperature: float = 0.1) -> float:
    """Fraction of ``test_x`` whose weighted kNN vote over ``train_x`` equals ``test_y``.

    Args:
        train_x: (n, d) bank features; train_y: (n,) integer labels.
        test_x: (m, d) query features; test_y: (m,) integer labels.
        k: neighbours (clipped to n). temperature: T in exp(sim / T).
    """
    test_y = _as_tensor(test_y, torch.int64)
    pred = knn_predictions(train_x, train_y, test_x, k=k, temperature=temperature,
                           num_classes=int(max(_as_tensor(train_y, torch.int64).max(), test_y.max())) + 1)
    if test_y.numel() == 0:
        raise ValueError("test_x is empty")
    return float((pred == test_y).float().mean())
