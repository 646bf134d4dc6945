"""Retrieval metrics on frozen embeddings: Recall@K, MAP@R, R-precision and NMI.

Every item of the evaluation set is a query; its database is every *other* item of the same set
(the query itself is excluded by index, an exact duplicate of it is not), ranked by cosine
similarity, most similar first. This is the metric-learning protocol of the paper (CUB, Cars,
SOP) and of pytorch-metric-learning's ``AccuracyCalculator`` with ``query == reference``.

For a query q with label y_q and ranked neighbours 1, 2, ..., n - 1:

    R_q        = |{j != q : y_j = y_q}|                 other items of q's class
    rel_q(i)   = 1 if the i-th neighbour has label y_q else 0
    P_q(i)     = (1 / i) * sum_{j <= i} rel_q(j)         precision at rank i

    Recall@K   = mean_q max_{i <= K} rel_q(i)            a same-class item among the K nearest
    R-precision= mean_q (1 / R_q) * sum_{i <= R_q} rel_q(i)
    MAP@R      = mean_q (1 / R_q) * sum_{i <= R_q} P_q(i) * rel_q(i)
    NMI        = I(Y; C) / ((H(Y) + H(C)) / 2),  C = k-means clusters, k = number of classes

Queries with R_q = 0 (a class with a single member) can never be answered correctly; all three
ranking metrics skip them, as pytorch-metric-learning does (they stay in the database as
distractors). The paper's benchmarks have no such classes. A K larger than n - 1 is clipped.

Ranking and ties (results are exact and independent of ``chunk_size``, thread count and BLAS):
    The L2-normalised embeddings are rounded to integers, round(x * 2^b) with b <= 24 (b = 22 for
    n ~ 60k; rounding error <= 2^-(b+1) per coordinate, at float32 level), so each cosine
    similarity is an integer that float64 matmul computes exactly in any summation order.
    Neighbours are ordered by decreasing similarity, and exact ties by increasing index (the
    earlier item of the set ranks first). Per-query values are reduced once, over all queries.

Memory: queries are processed ``chunk_size`` rows at a time; the full (n, n) similarity matrix is
never built. Peak extra memory is about 8 * n * d bytes (the integer copy of the embeddings)
plus 16 * chunk_size * n bytes (one chunk of float64 similarities and its int64 sort keys);
for SOP (n = 60,502, d = 512, chunk_size = 1024) that is about 1.3 GiB (docs/eval_speed.md).

Example:
    >>> x = torch.randn(100, 64); y = torch.randint(0, 10, (100,))
    >>> recall_at_k(x, y, ks=(1, 2, 4, 8))   # {1: ..., 2: ..., 4: ..., 8: ...}
    >>> map_at_r(x, y), r_precision(x, y), nmi(x, y, seed=0)
    >>> retrieval_metrics(x, y, ks=(1, 10))   # all of them in one pass over the data
"""

from __future__ import annotations

import math
import operator
from collections.abc import Iterator, Sequence

import numpy as np
import torch

__all__ = ["map_at_r", "nmi", "r_precision", "recall_at_k", "retrieval_metrics"]

DEFAULT_CHUNK_SIZE = 1024
_INT64_MIN = torch.iinfo(torch.int64).min


# --------------------------------------------------------------------------- input checks
def _embeddings(embeddings) -> torch.Tensor:
    """(n, d) float64 copy of ``embeddings`` (torch tensor or array-like), validated."""
    if isinstance(embeddings, torch.Tensor):
        x = embeddings.detach().to(torch.float64, copy=True)
    else:
        x = torch.from_numpy(np.array(embeddings, dtype=np.float64, copy=True))
    if x.ndim != 2:
        raise ValueError(f"embeddings must be 2-D (n, d), got shape {tuple(x.shape)}; "
                         "stack one feature vector per row")
    if x.shape[0] < 2:
        raise ValueError(f"retrieval needs at least 2 embeddings (each query is ranked against the "
                         f"others), got {x.shape[0]}; evaluate on a larger set")
    if x.shape[1] < 1:
        raise ValueError("embeddings have 0 dimensions; pass features of shape (n, d) with d >= 1")
    if not bool(torch.isfinite(x).all()):
        raise ValueError("embeddings contain NaN or inf; check the model output (e.g. a diverged "
                         "run) before evaluating")
    return x


def _labels(labels, n: int, device: torch.device) -> torch.Tensor:
    """(n,) int64 class codes 0..C-1 for ``labels`` (any hashable values), validated."""
    if isinstance(labels, torch.Tensor):
        y = labels.detach().cpu()
        if y.ndim != 1:
            raise ValueError(f"labels must be 1-D (n,), got shape {tuple(y.shape)}; "
                             "pass one class label per embedding row")
        codes = torch.unique(y, return_inverse=True)[1]
    else:
        y = np.asarray(labels)
        if y.ndim != 1:
            raise ValueError(f"labels must be 1-D (n,), got shape {y.shape}; "
                             "pass one class label per embedding row")
        codes = torch.as_tensor(np.unique(y, return_inverse=True)[1].reshape(-1))
    if codes.shape[0] != n:
        raise ValueError(f"embeddings have {n} rows but labels have {codes.shape[0]}; "
                         "pass one label per embedding row")
    return codes.to(device=device, dtype=torch.int64)


def _inputs(embeddings, labels) -> tuple[torch.Tensor, torch.Tensor]:
    x = _embeddings(embeddings)
    return x, _labels(labels, x.shape[0], x.device)


def _ks(ks) -> tuple[int, ...]:
    ks = (ks,) if isinstance(ks, int) else tuple(ks)
    try:
        ks = tuple(operator.index(k) for k in ks)
    except TypeError:
        ks = ()
    if not ks or any(k < 1 for k in ks):
        raise ValueError(f"ks must be a non-empty sequence of positive integers, got {ks!r}; "
                         "e.g. ks=(1, 2, 4, 8)")
    return ks


def _chunk(chunk_size) -> int:
    if not isinstance(chunk_size, int) or chunk_size < 1:
        raise ValueError(f"chunk_size must be a positive integer, got {chunk_size!r}; "
                         f"the default is {DEFAULT_CHUNK_SIZE}")
    return chunk_size


# --------------------------------------------------------------------------- exact ranking
def _class_sizes_minus_one(y: torch.Tensor) -> torch.Tensor:
    """R_q = number of OTHER items with the query's label, (n,) int64."""
    return torch.bincount(y)[y] - 1


def _quantized_unit(x: torch.Tensor, index_bits: int) -> torch.Tensor:
    """round(2^b * x / ||x||), (n, d) float64 holding integers, with b chosen so that every dot
    product (|.| <= (2^b + sqrt(d)/2)^2 by Cauchy-Schwarz) is exact in float64 and still fits
    an int64 sort key next to ``index_bits`` bits of item index."""
    half_sqrt_d = math.isqrt(x.shape[1]) + 1  # > sqrt(d) >= the rounding error's norm
    b = 24
    while b > 1 and ((2 ** b + half_sqrt_d) ** 2 >= 2 ** 52
                     or (2 ** b + half_sqrt_d) ** 2 >= 2 ** (62 - index_bits)):
        b -= 1
    norms = torch.linalg.vector_norm(x, dim=1, keepdim=True).clamp_min_(1e-300)
    return x.div_(norms).mul_(2.0 ** b).round_()  # in place on our private float64 copy


def _iter_neighbours(x: torch.Tensor, k: int, chunk_size: int) -> Iterator[tuple[int, torch.Tensor]]:
    """Yield (start, idx) with idx (c, k) int64: the k nearest OTHER items of queries
    start..start+c-1, by decreasing cosine similarity, exact ties by increasing index.

    Sort key per (query, item) pair: sim * 2^L + (2^L - 1 - item), an int64 that is unique
    per row; the query's own column gets the smallest int64 so it is never selected.
    """
    n = x.shape[0]
    L = max(1, (n - 1).bit_length())
    q = _quantized_unit(x, L)  # (n, d) exact integers in float64
    low = (1 << L) - 1
    tiebreak = low - torch.arange(n, device=x.device, dtype=torch.int64)  # (n,)
    for start in range(0, n, chunk_size):
        stop = min(start + chunk_size, n)
        sim = q[start:stop] @ q.T  # (c, n) exact integer dot products
        key = sim.to(torch.int64)
        del sim
        key.mul_(1 << L).add_(tiebreak)
        rows = torch.arange(stop - start, device=x.device)
        key[rows, rows + start] = _INT64_MIN  # exclude the query itself
        top = torch.topk(key, k, dim=1, largest=True, sorted=True).values  # (c, k)
        del key
        yield start, low - (top & low)


# --------------------------------------------------------------------------- per-query stats
def _per_query(x: torch.Tensor, y: torch.Tensor, k: int, chunk_size: int, with_r: bool):
    """First-hit rank (n,) int64 (k if none in the top k) and, if ``with_r``, per-query
    R-precision and AP@R (n,) float64 (0 where R_q = 0)."""
    n = x.shape[0]
    r = _class_sizes_minus_one(y)  # (n,)
    first_hit = torch.empty(n, dtype=torch.int64, device=x.device)
    rprec = torch.zeros(n, dtype=torch.float64, device=x.device)
    ap = torch.zeros(n, dtype=torch.float64, device=x.device)
    ranks = torch.arange(1, k + 1, device=x.device)  # (k,)
    for start, idx in _iter_neighbours(x, k, chunk_size):
        stop = start + idx.shape[0]
        hits = y[idx] == y[start:stop, None]  # (c, k) rel_q(i)
        first_hit[start:stop] = torch.where(hits.any(1), hits.to(torch.uint8).argmax(1), k)
        if with_r:
            rq = r[start:stop]  # (c,)
            rel = hits & (ranks <= rq[:, None])  # only ranks i <= R_q count
            correct = rel.cumsum(1)  # (c, k) number of hits up to rank i
            terms = correct.to(torch.float64) / ranks * rel  # P_q(i) * rel_q(i)
            # row sums as the last cumsum entry: a sequential, chunk-independent reduction
            denom = rq.clamp_min(1).to(torch.float64)
            ap[start:stop] = terms.cumsum(1)[:, -1] / denom
            rprec[start:stop] = correct[:, -1].to(torch.float64) / denom
    return first_hit, rprec, ap, r > 0


def _answerable(r_pos: torch.Tensor) -> torch.Tensor:
    if not bool(r_pos.any()):
        raise ValueError("every class has a single item, so no query has a same-class neighbour "
                         "and retrieval metrics are undefined; pass labels with >= 2 items per class")
    return r_pos


def _neighbours_needed(y: torch.Tensor, ks: Sequence[int], with_r: bool) -> int:
    n = y.shape[0]
    k = max(ks) if ks else 1
    if with_r:
        k = max(k, int(_class_sizes_minus_one(y).max()))
    return max(1, min(k, n - 1))


# --------------------------------------------------------------------------- public metrics
@torch.no_grad()
def retrieval_metrics(embeddings, labels, ks=(1, 2, 4, 8), *,
                      chunk_size: int = DEFAULT_CHUNK_SIZE) -> dict[str, float]:
    """Recall@K for each K in ``ks``, MAP@R and R-precision in one pass over the data.

    Args:
        embeddings: (n, d) features, torch tensor (any device) or array-like.
        labels: (n,) class labels.
        ks: the K of Recall@K (clipped to n - 1).
        chunk_size: queries per similarity chunk; memory ~ 16 * chunk_size * n bytes.

    Returns:
        {"recall@1": ..., "recall@2": ..., "map@r": ..., "r_precision": ...}, fractions in [0, 1].
    """
    ks, chunk_size = _ks(ks), _chunk(chunk_size)
    x, y = _inputs(embeddings, labels)
    k = _neighbours_needed(y, ks, with_r=True)
    first_hit, rprec, ap, valid = _per_query(x, y, k, chunk_size, with_r=True)
    valid = _answerable(valid)
    out = {f"recall@{K}": _recall(first_hit[valid], K) for K in ks}
    out["map@r"] = float(ap[valid].mean())
    out["r_precision"] = float(rprec[valid].mean())
    return out


def _recall(first_hit: torch.Tensor, K: int) -> float:
    # first_hit is 0-based, so a hit within the top K means first_hit < K
    return int((first_hit < K).sum()) / first_hit.shape[0]


@torch.no_grad()
def recall_at_k(embeddings, labels, ks=(1, 2, 4, 8), *,
                chunk_size: int = DEFAULT_CHUNK_SIZE) -> dict[int, float]:
    """Recall@K = fraction of queries with a same-label item among their K nearest others.

    Args:
        embeddings: (n, d) features; labels: (n,) class labels.
        ks: the K values (clipped to n - 1); chunk_size: queries per similarity chunk.

    Returns:
        {K: recall} for each K in ``ks``. Queries whose class has a single member are skipped.
    """
    ks, chunk_size = _ks(ks), _chunk(chunk_size)
    x, y = _inputs(embeddings, labels)
    k = _neighbours_needed(y, ks, with_r=False)
    first_hit, _, _, valid = _per_query(x, y, k, chunk_size, with_r=False)
    first_hit = first_hit[_answerable(valid)]
    return {K: _recall(first_hit, K) for K in ks}


@torch.no_grad()
def map_at_r(embeddings, labels, *, chunk_size: int = DEFAULT_CHUNK_SIZE) -> float:
    """MAP@R = mean over queries of (1/R) * sum_{i<=R} P(i) * rel(i), R = other items of the
    query's class (Musgrave et al. 2020; pytorch-metric-learning ``mean_average_precision_at_r``).

    Args:
        embeddings: (n, d) features; labels: (n,) class labels; chunk_size: queries per chunk.
    """
    chunk_size = _chunk(chunk_size)
    x, y = _inputs(embeddings, labels)
    _, _, ap, valid = _per_query(x, y, _neighbours_needed(y, (), True), chunk_size, with_r=True)
    return float(ap[_answerable(valid)].mean())


@torch.no_grad()
def r_precision(embeddings, labels, *, chunk_size: int = DEFAULT_CHUNK_SIZE) -> float:
    """R-precision = mean over queries of (same-label items among the R nearest) / R.

    Args:
        embeddings: (n, d) features; labels: (n,) class labels; chunk_size: queries per chunk.
    """
    chunk_size = _chunk(chunk_size)
    x, y = _inputs(embeddings, labels)
    _, rp, _, valid = _per_query(x, y, _neighbours_needed(y, (), True), chunk_size, with_r=True)
    return float(rp[_answerable(valid)].mean())


def nmi(embeddings, labels, seed: int = 0) -> float:
    """Normalized mutual information between ``labels`` and k-means clusters of the
    L2-normalised embeddings, k = number of classes (scikit-learn KMeans, k-means++, one init,
    ``random_state=seed``). Cost ~ n * k * d per iteration: slow for SOP-sized k.

    Args:
        embeddings: (n, d) features; labels: (n,) class labels; seed: k-means seed.
    """
    from sklearn.cluster import KMeans  # scikit-learn takes a second to import: only NMI needs it
    from sklearn.metrics import normalized_mutual_info_score

    x, y = _inputs(embeddings, labels)
    x = torch.nn.functional.normalize(x, dim=1).cpu().numpy()
    y = y.cpu().numpy()
    num_classes = int(y.max()) + 1
    clusters = KMeans(n_clusters=num_classes, n_init=1, random_state=seed).fit_predict(x)
    return float(normalized_mutual_info_score(y, clusters))
