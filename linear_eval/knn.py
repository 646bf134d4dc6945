"""Weighted k-nearest-neighbour accuracy on frozen features (Wu et al. 2018 protocol).

Each query votes with its k most cosine-similar bank items, each weighted by exp(sim / T);
the class with the largest summed weight is predicted (exact ties of the summed weight: the
smallest class index). This is the vote of lightly's ``knn_predict`` (which the tests use as a
reference); it is re-implemented here with a scatter-add so that no (queries * k, classes)
one-hot matrix is built.

Backends (``backend=``):

- ``"torch"`` (default): exact brute force on the device of ``train_x`` (GPU if the features
  are there). Queries are processed ``chunk_size`` rows at a time; per chunk the only large
  temporary is the (chunk_size, n) float32 similarity block.
- ``"faiss"``: ``faiss.IndexFlatIP`` (exact inner product, CPU) on L2-normalised float32
  features, then the same exp(sim / T) vote. Needs ``faiss`` (``pip install faiss-cpu``);
  asking for it without faiss raises an ImportError naming the fix.

Both backends are exact searches; they can differ only where two bank items are (nearly) tied
for the k-th neighbour or two classes (nearly) tie in the vote, because the two libraries round
the similarities differently.

Memory (torch backend), for a bank of n items of dimension d, m queries, C classes:
the bank is neither copied nor normalised in place (a float32 tensor is used as is; the
similarities are divided by the (n,) bank norms afterwards), so the extra memory is at most

    4 * chunk_size * n      bytes  similarity block (chunk_size, n), float32
  + 12 * chunk_size * k     bytes  top-k values and indices
  + 4 * chunk_size * C      bytes  class votes
  + 4 * n                   bytes  bank norms

plus the (m, d) normalised queries and torch.topk's own workspace. The default
``chunk_size=None`` picks ``min(1024, 2**28 // n)`` rows (at least 1), so the similarity block
stays <= 2**28 floats = 1 GiB: for an ImageNet bank (n = 1,281,167, d = 2048) that is
209 query rows per chunk, ~1.07 GB of similarities next to the 10.5 GB bank itself.
The faiss backend holds a normalised float32 copy of the bank inside the index (4 * n * d bytes)
plus (chunk_size, k) results per chunk.

Example:
    >>> knn_accuracy(train_x, train_y, test_x, test_y, k=200, temperature=0.1)
    >>> knn_accuracy(train_x, train_y, test_x, test_y, backend="faiss")
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

BACKENDS = ("torch", "faiss")
MAX_CHUNK = 1024
SIM_BUDGET_FLOATS = 1 << 28  # similarity block cap of the automatic chunk size (1 GiB float32)


def _as_tensor(x, dtype=torch.float32) -> torch.Tensor:
    if isinstance(x, torch.Tensor):
        return x.detach().to(dtype)  # no copy when x is already of this dtype
    return torch.as_tensor(np.asarray(x), dtype=dtype)


def default_chunk_size(n_bank: int) -> int:
    """Query rows per chunk so that the (rows, n_bank) similarity block is <= 2**28 floats."""
    return max(1, min(MAX_CHUNK, SIM_BUDGET_FLOATS // max(1, n_bank)))


def _vote(sims: torch.Tensor, idx: torch.Tensor, labels: torch.Tensor, num_classes: int,
          temperature: float) -> torch.Tensor:
    """Top-1 class of exp(sim / T) weighted votes; sims, idx: (c, k) -> (c,) int64.

    The weights are computed as exp((sim - max sim) / T): the same vote up to a factor per
    query, and no overflow to inf (which would tie every class) when sim / T > 88 in float32."""
    sims = sims.float()
    weights = ((sims - sims.amax(dim=1, keepdim=True)) / temperature).exp()  # (c, k), max 1
    votes = torch.zeros(sims.shape[0], num_classes, dtype=torch.float32, device=sims.device)
    votes.scatter_add_(1, labels[idx], weights)  # (c, C)
    return votes.argmax(1)


def _torch_predictions(bank, labels, queries, k, temperature, num_classes, chunk_size):
    norms = torch.linalg.vector_norm(bank, dim=1).clamp_min_(1e-12)  # (n,)
    preds = []
    for i in range(0, queries.shape[0], chunk_size):
        q = F.normalize(queries[i:i + chunk_size].to(bank.device), dim=1)  # (c, d)
        sim = q @ bank.T  # (c, n): the only chunk_size x n temporary
        sim.div_(norms)
        top_sim, top_idx = sim.topk(k, dim=1)  # (c, k)
        del sim
        preds.append(_vote(top_sim, top_idx, labels, num_classes, temperature).cpu())
    return preds


def _faiss_predictions(bank, labels, queries, k, temperature, num_classes, chunk_size):
    try:
        import faiss
    except ImportError:
        raise ImportError("backend='faiss' needs the faiss package; pip install faiss-cpu "
                          "or use backend='torch'") from None
    d = bank.shape[1]
    index = faiss.IndexFlatIP(d)
    for i in range(0, bank.shape[0], MAX_CHUNK * 64):  # normalise the bank block by block
        block = F.normalize(bank[i:i + MAX_CHUNK * 64].float(), dim=1).cpu().numpy()
        index.add(np.ascontiguousarray(block, dtype=np.float32))
    labels_cpu = labels.cpu()
    preds = []
    for i in range(0, queries.shape[0], chunk_size):
        q = F.normalize(queries[i:i + chunk_size].float(), dim=1).cpu().numpy()
        sims, idx = index.search(np.ascontiguousarray(q, dtype=np.float32), k)  # (c, k) each
        preds.append(_vote(torch.from_numpy(sims), torch.from_numpy(idx).long(), labels_cpu,
                           num_classes, temperature))
    return preds


@torch.no_grad()
def knn_predictions(
    train_x, train_y, test_x, k: int = 200, temperature: float = 0.1,
    num_classes: int | None = None, chunk_size: int | None = None, backend: str = "torch",
) -> torch.Tensor:
    """Top-1 kNN predictions (m,) int64 on CPU for ``test_x`` (m, d) against ``train_x`` (n, d).

    Args:
        train_x: (n, d) bank features (tensor on any device, or array); train_y: (n,) labels.
        test_x: (m, d) query features. k: neighbours (clipped to n). temperature: T.
        num_classes: number of classes (default: max(train_y) + 1).
        chunk_size: query rows per chunk (default: :func:`default_chunk_size`).
        backend: ``"torch"`` (exact, on train_x's device) or ``"faiss"`` (IndexFlatIP, CPU).
    """
    if backend not in BACKENDS:
        raise ValueError(f"unknown kNN backend '{backend}'; use one of {', '.join(BACKENDS)}")
    bank = _as_tensor(train_x)
    labels = _as_tensor(train_y, torch.int64).to(bank.device)
    queries = _as_tensor(test_x)
    if bank.ndim != 2 or queries.ndim != 2:
        raise ValueError(f"features must be 2-D (n, d); got train_x {tuple(bank.shape)}, "
                         f"test_x {tuple(queries.shape)}")
    if bank.shape[0] != labels.shape[0]:
        raise ValueError(f"train_x has {bank.shape[0]} rows but train_y has {labels.shape[0]}")
    if bank.shape[1] != queries.shape[1]:
        raise ValueError(f"train_x has dim {bank.shape[1]} but test_x has dim {queries.shape[1]}")
    if bank.shape[0] == 0:
        raise ValueError("train_x is empty; the kNN bank needs at least one item")
    if k < 1 or temperature <= 0:
        raise ValueError(f"need k >= 1 and temperature > 0, got k={k}, temperature={temperature}")
    if chunk_size is None:
        chunk_size = default_chunk_size(bank.shape[0])
    if not isinstance(chunk_size, int) or chunk_size < 1:
        raise ValueError(f"chunk_size must be a positive integer or None, got {chunk_size!r}")
    num_classes = int(num_classes or int(labels.max()) + 1)
    k = min(k, bank.shape[0])
    run = _torch_predictions if backend == "torch" else _faiss_predictions
    preds = run(bank, labels, queries, k, temperature, num_classes, chunk_size)
    return torch.cat(preds) if preds else torch.empty(0, dtype=torch.int64)


def knn_accuracy(train_x, train_y, test_x, test_y, k: int = 200, temperature: float = 0.1,
                 *, chunk_size: int | None = None, backend: str = "torch") -> float:
    """Fraction of ``test_x`` whose weighted kNN vote over ``train_x`` equals ``test_y``.

    Args:
        train_x: (n, d) bank features; train_y: (n,) integer labels.
        test_x: (m, d) query features; test_y: (m,) integer labels.
        k: neighbours (clipped to n). temperature: T in exp(sim / T).
        chunk_size: query rows per chunk (memory bound in the module docstring).
        backend: ``"torch"`` (default) or ``"faiss"``.
    """
    test_y = _as_tensor(test_y, torch.int64).cpu()
    if test_y.numel() == 0:
        raise ValueError("test_x is empty")
    num_classes = max(int(_as_tensor(train_y, torch.int64).max()), int(test_y.max())) + 1
    pred = knn_predictions(train_x, train_y, test_x, k=k, temperature=temperature,
                           num_classes=num_classes, chunk_size=chunk_size, backend=backend)
    if pred.shape[0] != test_y.shape[0]:
        raise ValueError(f"test_x has {pred.shape[0]} rows but test_y has {test_y.shape[0]}")
    return float((pred == test_y).float().mean())
