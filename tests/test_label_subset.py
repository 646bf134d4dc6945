"""Few labels: the stratified, seeded labelled subset and its complement."""

import math
from fractions import Fraction

import numpy as np
import pytest

from ssl_transfer.data.labels import (
    check_fraction,
    class_counts,
    labelled_subset,
    split_labelled,
    unlabelled_indices,
)
from ssl_transfer.errors import ConfigError, DataError


def fashion_like() -> np.ndarray:
    """10 classes x 5,500 images (Fashion-MNIST's training split less a 5,000 validation split), shuffled."""
    return np.random.default_rng(123).permutation(np.repeat(np.arange(10), 5500))


def imbalanced() -> np.ndarray:
    """Non-contiguous class ids with very different sizes, including a class of 1 and one of 3."""
    sizes = {0: 1000, 3: 250, 7: 41, 9: 3, 12: 1, 20: 5}
    return np.random.default_rng(7).permutation(np.concatenate([np.full(n, c) for c, n in sizes.items()]))


def per_class(labels: np.ndarray, idx: np.ndarray) -> dict:
    classes, counts = np.unique(labels[idx], return_counts=True)
    return {c.item(): int(n) for c, n in zip(classes, counts)}


@pytest.mark.parametrize("fraction, expect", [(0.1, 550), (0.01, 55), (0.001, 6), (0.5, 2750), (0.0001, 1)])
def test_stratified_on_fashion_like_labels(fraction, expect):
    y = fashion_like()
    idx = labelled_subset(y, fraction, seed=0)
    assert idx.dtype == np.int64 and np.all(np.diff(idx) > 0)  # sorted, no duplicates
    assert per_class(y, idx) == {c: expect for c in range(10)}  # 0.001 * 5500 = 5.5 -> 6 (half up)
    assert abs(len(idx) - fraction * len(y)) < 10


def test_stratified_on_imbalanced_labels():
    y = imbalanced()
    counts = per_class(y, labelled_subset(y, 0.1, seed=3))
    # round half up of 0.1 * n_c, at least 1: 100, 25, 4.1 -> 4, 0.3 -> 1, 0.1 -> 1, 0.5 -> 1
    assert counts == {0: 100, 3: 25, 7: 4, 9: 1, 12: 1, 20: 1}
    assert class_counts(y, 0.1) == counts
    assert per_class(y, labelled_subset(y, 0.3, seed=3)) == {0: 300, 3: 75, 7: 12, 9: 1, 12: 1, 20: 2}


@pytest.mark.parametrize("fraction", [0.003, 0.01, 0.05, 0.1, 0.25, 0.37, 0.5, 0.9, 0.999])
def test_the_documented_rule_and_deviation_bound(fraction):
    for y in (fashion_like(), imbalanced()):
        idx = labelled_subset(y, fraction, seed=1)
        classes, sizes = np.unique(y, return_counts=True)
        got = per_class(y, idx)
        for c, n in zip(classes.tolist(), sizes.tolist()):
            assert got[c] == min(n, max(1, math.floor(Fraction(str(fraction)) * n + Fraction(1, 2))))
            assert 1 <= got[c] <= n
        assert abs(len(idx) - fraction * len(y)) < len(classes)


def test_deterministic_and_seed_dependent():
    y = fashion_like()
    a = labelled_subset(y, 0.01, seed=0)
    assert np.array_equal(a, labelled_subset(y, 0.01, seed=0))
    assert np.array_equal(a, labelled_subset(y.copy(), 0.01, seed=0))
    assert np.array_equal(a, labelled_subset(list(y), 0.01, seed=0))  # any array-like
    b = labelled_subset(y, 0.01, seed=1)
    assert not np.array_equal(a, b)
    assert per_class(y, a) == per_class(y, b)  # same counts, different images
    assert len(np.intersect1d(a, b)) < len(a) / 2  # about 1% overlap expected for independent draws
    assert len({labelled_subset(y, 0.01, seed=s).tobytes() for s in range(5)}) == 5


def test_subsets_are_nested_for_one_seed():
    y = imbalanced()
    small, large = labelled_subset(y, 0.01, seed=5), labelled_subset(y, 0.1, seed=5)
    assert np.isin(small, large).all()
    assert np.isin(large, labelled_subset(y, 0.8, seed=5)).all()


def test_fraction_one_gives_everything():
    y = imbalanced()
    assert np.array_equal(labelled_subset(y, 1.0, seed=0), np.arange(len(y)))
    assert np.array_equal(labelled_subset(y, 1, seed=9), np.arange(len(y)))
    assert len(unlabelled_indices(labelled_subset(y, 1.0, seed=0), len(y))) == 0


def test_complement_is_disjoint_and_covers_everything():
    y = fashion_like()
    lab, unl = split_labelled(y, 0.05, seed=2)
    assert np.array_equal(lab, labelled_subset(y, 0.05, seed=2))
    assert len(np.intersect1d(lab, unl)) == 0
    assert np.array_equal(np.sort(np.concatenate([lab, unl])), np.arange(len(y)))
    assert unl.dtype == np.int64 and np.all(np.diff(unl) > 0)
    assert per_class(y, unl) == {c: 5500 - 275 for c in range(10)}
    assert np.array_equal(unlabelled_indices(np.array([4, 0, 2]), 6), [1, 3, 5])  # unsorted input is fine
    assert np.array_equal(unlabelled_indices(np.array([], dtype=np.int64), 3), [0, 1, 2])


def test_edge_cases():
    one_each = np.array([5, 2, 9])  # every class has one image: kept whatever the fraction
    assert np.array_equal(labelled_subset(one_each, 0.01, seed=0), [0, 1, 2])
    assert len(labelled_subset(np.array([], dtype=np.int64), 0.5, seed=0)) == 0
    single_class = np.zeros(10, dtype=np.int64)
    assert len(labelled_subset(single_class, 0.25, seed=0)) == 3  # 2.5 -> 3 (half up)
    assert len(labelled_subset(single_class, 0.15, seed=0)) == 2  # 1.5 -> 2
    # exact half-up on the decimal as written, where float products fall just below .5
    assert 0.009 * 5500 < 49.5 and class_counts(np.zeros(5500, dtype=np.int64), 0.009) == {0: 50}
    assert 0.018 * 750 < 13.5 and class_counts(np.zeros(750, dtype=np.int64), 0.018) == {0: 14}
    strings = np.array(["cat", "dog", "cat", "dog", "cat", "dog"])  # non-integer class ids work too
    assert per_class(strings, labelled_subset(strings, 0.5, seed=0)) == {"cat": 2, "dog": 2}


@pytest.mark.parametrize("bad", [0, 0.0, -0.1, 1.0001, 2, float("nan"), float("inf"), -float("inf"), "0.1",
                                 None, True])
def test_bad_fraction_is_a_one_line_config_error(bad):
    with pytest.raises(ConfigError, match=r"label_fraction must be a number in \(0, 1\]") as e:
        labelled_subset(np.arange(10) % 2, bad, seed=0)
    assert "\n" not in str(e.value)
    with pytest.raises(ConfigError, match="data.label_fraction"):
        check_fraction(bad, "data.label_fraction")


def test_bad_labels_and_indices():
    with pytest.raises(DataError, match="1-D"):
        labelled_subset(np.zeros((4, 2)), 0.5, seed=0)
    with pytest.raises(DataError, match=r"\[0, 5\)"):
        unlabelled_indices(np.array([0, 5]), 5)
    assert check_fraction(np.float32(0.5)) == 0.5
