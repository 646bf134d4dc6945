"""Few labels: a stratified, seeded subset of the training labels (semi-supervised settings).

**Rule.** For each class ``c`` with ``n_c`` images the subset keeps

    k_c = min(n_c, max(1, floor(fraction * n_c + 1/2)))

images, i.e. ``fraction * n_c`` rounded half up, at least one image per class (never more than
the class has). The product is exact, with ``fraction`` read as the decimal it prints as
(``repr``, i.e. as written in a config): 0.009 * 5500 = 49.5 gives 50, where float arithmetic
(49.49999...) would give 49. Each class is off by at most 1/2 image, except a class raised to 1 image (then by less
than 1), so the total ``sum_c k_c`` differs from ``fraction * n`` by less than the number of
classes (at most half of it when no class is raised to 1). ``fraction = 1`` keeps everything.

**Which images.** ``np.random.default_rng(seed)`` draws one permutation per class, classes in
ascending label order; the subset takes the first ``k_c`` of each. So the result depends only on
``(labels, fraction, seed)``, different seeds give different subsets, and for one seed the
subsets are nested: the 1% subset lies inside the 10% one.

Example::

    labelled = labelled_subset(train_y, 0.1, seed=0)       # (m,) sorted indices into train_y
    unlabelled = unlabelled_indices(labelled, len(train_y))  # (n - m,) the rest
"""

from __future__ import annotations

import math
from fractions import Fraction
from numbers import Real

import numpy as np

from ..errors import ConfigError, DataError


def check_fraction(fraction: float, key: str = "label_fraction") -> float:
    """``fraction`` as a float in (0, 1]; one-line ConfigError naming ``key`` otherwise."""
    if isinstance(fraction, bool) or not isinstance(fraction, Real) or not math.isfinite(fraction) \
            or not 0 < fraction <= 1:
        raise ConfigError(f"{key} must be a number in (0, 1], got {fraction!r}; e.g. 0.1 keeps 10% of each "
                          "class's labels, 1.0 keeps all")
    return float(fraction)


def class_counts(labels: np.ndarray, fraction: float) -> dict:
    """Images kept per class, ``{class: k_c}`` (classes ascending), by the rule of the module."""
    f = Fraction(repr(check_fraction(fraction)))  # the decimal as written: exact half-up rounding
    classes, counts = np.unique(_as_labels(labels), return_counts=True)
    return {c.item(): min(int(n), max(1, math.floor(f * int(n) + Fraction(1, 2)))) for c, n in zip(classes, counts)}


def labelled_subset(labels: np.ndarray, fraction: float, seed: int) -> np.ndarray:
    """Sorted indices (m,) int64 into ``labels`` (n,) of a stratified subset keeping ``fraction``
    of each class (rounded half up, at least one per class; see the module docstring)."""
    labels = _as_labels(labels)
    keep = class_counts(labels, fraction)
    if fraction == 1:
        return np.arange(len(labels), dtype=np.int64)
    rng = np.random.default_rng(seed)
    chosen = []
    for c, k in keep.items():  # ascending classes: one permutation each, whatever the fraction
        members = np.flatnonzero(labels == c)
        chosen.append(members[rng.permutation(len(members))[:k]])
    return np.sort(np.concatenate(chosen)).astype(np.int64) if chosen else np.empty(0, dtype=np.int64)


def unlabelled_indices(labelled: np.ndarray, n: int) -> np.ndarray:
    """Sorted indices (n - m,) int64 in ``range(n)`` not in ``labelled`` (m,): the complement."""
    labelled = np.asarray(labelled)
    if labelled.size and (labelled.min() < 0 or labelled.max() >= n):
        raise DataError(f"labelled indices must lie in [0, {n}), got [{labelled.min()}, {labelled.max()}]; "
                        "pass the length of the label vector they index")
    mask = np.ones(n, dtype=bool)
    mask[labelled] = False
    return np.flatnonzero(mask).astype(np.int64)


def split_labelled(labels: np.ndarray, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """``(labelled, unlabelled)``: :func:`labelled_subset` and its complement; together ``range(n)``."""
    labelled = labelled_subset(labels, fraction, seed)
    return labelled, unlabelled_indices(labelled, len(labels))


def _as_labels(labels: np.ndarray) -> np.ndarray:
    labels = np.asarray(labels)
    if labels.ndim != 1:
        raise DataError(f"labels must be a 1-D array of class ids, got shape {labels.shape}; pass one label "
                        "per image")
    return labels
