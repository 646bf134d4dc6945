"""Retrieval metrics: hand-computed cases, pytorch-metric-learning as reference, chunking, ties."""

import numpy as np
import pytest
import torch

from linear_eval.retrieval import map_at_r, nmi, r_precision, recall_at_k, retrieval_metrics


def on_circle(degrees, scales=None):
    """2-D points at the given angles; cosine ranking = ranking by angular distance."""
    a = np.deg2rad(np.asarray(degrees, dtype=np.float64))
    x = np.stack([np.cos(a), np.sin(a)], axis=1)
    return x if scales is None else x * np.asarray(scales, dtype=np.float64)[:, None]


def clustered(n, d, num_classes, seed, spread=1.0, singletons=0):
    """Gaussian clusters of uneven size (some classes large, some of 2), plus ``singletons``
    items whose class has a single member."""
    rng = np.random.default_rng(seed)
    sizes = rng.integers(2, 2 * n // num_classes, num_classes)
    y = np.repeat(np.arange(num_classes), sizes)[:n - singletons]
    y = np.concatenate([y, num_classes + np.arange(singletons)])
    rng.shuffle(y)
    centres = rng.normal(size=(num_classes + singletons, d))
    x = centres[y] + spread * rng.normal(size=(len(y), d))
    return x.astype(np.float32), y


def brute_force_recall(x, y, ks):
    """Reference Recall@K: float64 cosine, full stable sort (ties -> lower index), self excluded,
    queries without a same-class item skipped."""
    u = x.astype(np.float64) / np.linalg.norm(x.astype(np.float64), axis=1, keepdims=True)
    sim = u @ u.T
    np.fill_diagonal(sim, -np.inf)
    order = np.argsort(-sim, axis=1, kind="stable")[:, :-1]  # drop self (last)
    hits = y[order] == y[:, None]
    valid = np.bincount(y)[y] > 1
    return {k: float(hits[valid, :k].any(1).mean()) for k in ks}


# Six points on the unit circle, rows rescaled by arbitrary positive factors (cosine ignores
# the norm; a Euclidean ranking would differ). Labels: class 0 = {0, 15, 62} deg,
# class 1 = {50, 105, 170} deg, so R = 2 for every query. All 15 angular gaps are distinct.
#   query   neighbours by angular distance (label)               rel
#   0 deg   15(0)  50(1)  62(0)  105(1) 170(1)                    1 0 1 0 0
#   15      0(0)   50(1)  62(0)  105(1) 170(1)                    1 0 1 0 0
#   50      62(0)  15(0)  0(0)   105(1) 170(1)                    0 0 0 1 1
#   62      50(1)  105(1) 15(0)  0(0)   170(1)                    0 0 1 1 0
#   105     62(0)  50(1)  170(1) 15(0)  0(0)                      0 1 1 0 0
#   170     105(1) 62(0)  50(1)  15(0)  0(0)                      1 0 1 0 0
# Recall@1 = 3/6 (first hit at rank 1 for 0, 15, 170), @2 = 4/6 (+105), @3 = 5/6 (+62), @4 = 1.
# R-precision (hits in top 2, / 2): 1/2 1/2 0 0 1/2 1/2 -> mean 1/3.
# AP@R = (1/R) sum_{i<=2} P(i) rel(i): 1/2, 1/2, 0, 0, (1/2)/2 = 1/4, 1/2 -> mean 1.75/6 = 7/24.
HAND_X = on_circle([0, 15, 50, 62, 105, 170], scales=[1, 3, 0.5, 2, 10, 0.1])
HAND_Y = np.array([0, 0, 1, 0, 1, 1])


def test_hand_made_case():
    assert recall_at_k(HAND_X, HAND_Y, ks=(1, 2, 3, 4, 5)) == pytest.approx(
        {1: 3 / 6, 2: 4 / 6, 3: 5 / 6, 4: 1.0, 5: 1.0})
    assert r_precision(HAND_X, HAND_Y) == pytest.approx(1 / 3)
    assert map_at_r(HAND_X, HAND_Y) == pytest.approx(7 / 24)
    assert retrieval_metrics(HAND_X, HAND_Y, ks=(1, 4)) == pytest.approx(
        {"recall@1": 0.5, "recall@4": 1.0, "map@r": 7 / 24, "r_precision": 1 / 3})


def test_ks_larger_than_the_set_are_clipped_and_keys_kept():
    # n - 1 = 5 neighbours exist; K = 8 and 1000 both mean "all of them" -> 1.0
    assert recall_at_k(HAND_X, HAND_Y, ks=(8, 1000)) == {8: 1.0, 1000: 1.0}
    assert recall_at_k(HAND_X, HAND_Y, ks=1) == pytest.approx({1: 0.5})


def test_torch_and_numpy_inputs_agree_and_are_not_modified():
    xt = torch.tensor(HAND_X)
    before = xt.clone()
    assert recall_at_k(xt, torch.tensor(HAND_Y)) == recall_at_k(HAND_X, HAND_Y)
    assert map_at_r(xt.float(), torch.tensor(HAND_Y)) == pytest.approx(7 / 24)
    assert map_at_r(HAND_X, ["b", "b", "a", "b", "a", "a"]) == pytest.approx(7 / 24)  # any labels
    assert torch.equal(xt, before)


def test_singleton_classes_are_skipped_but_stay_as_distractors():
    # angles 0, 20 (class 0) and 8 (class 1, single member).
    #   q 0 deg : 8(1) 20(0) -> rel 0 1, R = 1: first hit at rank 2, AP@R = 0, R-prec = 0
    #   q 20    : 8(1) 0(0)  -> rel 0 1, same
    #   q 8     : R = 0 -> skipped (counting it as a miss would give Recall@2 = 2/3)
    x, y = on_circle([0, 20, 8]), np.array([0, 0, 1])
    assert recall_at_k(x, y, ks=(1, 2)) == {1: 0.0, 2: 1.0}
    assert map_at_r(x, y) == 0.0
    assert r_precision(x, y) == 0.0


def test_all_singletons_is_an_error():
    with pytest.raises(ValueError, match="single item"):
        map_at_r(HAND_X, np.arange(6))
    with pytest.raises(ValueError, match="single item"):
        recall_at_k(HAND_X, np.arange(6))


def test_exact_ties_are_broken_by_lower_index():
    # q = [1, 0]; a = [0, 1] and b = [0, -1] are both at cosine 0 from q (exact tie).
    # a before b, labels (q 0, a 1, b 0): q's first neighbour is a (other class) -> miss;
    #   a is a singleton (skipped); b's neighbours q (0) then a (-1): hit. Recall@1 = 1/2.
    assert recall_at_k([[1, 0], [0, 1], [0, -1]], [0, 1, 0], ks=(1,)) == {1: 0.5}
    # Same geometry, b listed before a: q's first neighbour is now b (same class) -> hit;
    #   b: neighbours q (0) then a (-1) -> hit; a skipped. Recall@1 = 1.
    assert recall_at_k([[1, 0], [0, -1], [0, 1]], [0, 0, 1], ks=(1,)) == {1: 1.0}


def test_identical_embeddings_rank_by_index_and_self_is_excluded_by_index():
    # Five identical vectors: every similarity ties, so each query ranks the others by index.
    #   labels 0 1 0 1 1
    #   q0 (R=1): 1(1) 2(0) 3 4        rel 0 1 0 0 -> first hit 2, AP@R 0, R-prec 0
    #   q1 (R=2): 0(0) 2(0) 3(1) 4(1)  rel 0 0 1 1 -> first hit 3, AP@R 0, R-prec 0
    #   q2 (R=1): 0(0) 1 3 4           rel 1 0 0 0 -> first hit 1, AP@R 1, R-prec 1
    #   q3 (R=2): 0 1(1) 2 4(1)        rel 0 1 0 1 -> first hit 2, AP@R (1/2)/2 = 1/4, R-prec 1/2
    #   q4 (R=2): 0 1(1) 2 3(1)        rel 0 1 0 1 -> same as q3
    # Recall@1 = 1/5, @2 = 4/5, @3 = 1; MAP@R = (1 + 1/4 + 1/4)/5 = 0.3; R-prec = 2/5 = 0.4.
    x = np.ones((5, 3))
    y = np.array([0, 1, 0, 1, 1])
    assert recall_at_k(x, y, ks=(1, 2, 3)) == pytest.approx({1: 0.2, 2: 0.8, 3: 1.0})
    assert map_at_r(x, y) == pytest.approx(0.3)
    assert r_precision(x, y) == pytest.approx(0.4)
    # a zero vector is at cosine 0 from everything: a tie with every other item
    z = np.array([[0.0, 0.0], [1.0, 0.0], [0.0, 1.0]])
    assert recall_at_k(z, [1, 0, 1], ks=(1,)) == {1: 0.5}  # q0: 1(0) before 2(1); q2: 0(1) first


@pytest.mark.parametrize("seed,knn", [(0, "cosine"), (1, "cosine"), (2, "faiss")])
def test_matches_pytorch_metric_learning(seed, knn):
    pml_calc = pytest.importorskip("pytorch_metric_learning.utils.accuracy_calculator")
    from pytorch_metric_learning.distances import CosineSimilarity
    from pytorch_metric_learning.utils.inference import CustomKNN

    x, y = clustered(300, 16, 25, seed=seed, spread=1.5, singletons=4)
    query = torch.tensor(x)
    if knn == "cosine":
        knn_func = CustomKNN(CosineSimilarity())
    else:  # PML's default faiss IndexFlatL2 on L2-normalised rows: the same ranking as cosine
        pytest.importorskip("faiss")  # PML only imports faiss when it is installed
        knn_func = None
        query = torch.nn.functional.normalize(query, dim=1)
    calc = pml_calc.AccuracyCalculator(
        include=("mean_average_precision_at_r", "r_precision", "precision_at_1"),
        avg_of_avgs=False, k="max_bin_count", device=torch.device("cpu"), knn_func=knn_func)
    # reference omitted -> reference = query, ref_includes_query=True (self removed);
    # k="max_bin_count" -> the largest R neighbours, all MAP@R needs; lone queries skipped
    ref = calc.get_accuracy(query, torch.tensor(y))
    assert 0.05 < ref["mean_average_precision_at_r"] < 0.95  # a non-trivial case
    got = retrieval_metrics(x, y, ks=(1, 2, 4, 8, 16))
    assert got["map@r"] == pytest.approx(ref["mean_average_precision_at_r"], rel=1e-12)
    assert got["r_precision"] == pytest.approx(ref["r_precision"], rel=1e-12)
    assert got["recall@1"] == pytest.approx(ref["precision_at_1"], rel=1e-12)
    assert map_at_r(x, y) == got["map@r"]
    assert r_precision(x, y) == got["r_precision"]
    expected = brute_force_recall(x, y, (1, 2, 4, 8, 16))
    assert recall_at_k(x, y, ks=(1, 2, 4, 8, 16)) == pytest.approx(expected, rel=1e-12)
    assert {k: got[f"recall@{k}"] for k in expected} == recall_at_k(x, y, ks=tuple(expected))


def test_chunk_boundaries_give_identical_results():
    x, y = clustered(61, 8, 6, seed=3, spread=2.0, singletons=2)
    x[10] = x[20]  # exact duplicates -> exact ties in rows 10 and 20 and in every other row
    x[30] = 2 * x[40]
    n = len(y)
    full = retrieval_metrics(x, y, ks=(1, 2, 4, 8), chunk_size=n)
    for chunk in (1, 7, n - 1, n + 5):
        assert retrieval_metrics(x, y, ks=(1, 2, 4, 8), chunk_size=chunk) == full
        assert map_at_r(x, y, chunk_size=chunk) == full["map@r"]
        assert r_precision(x, y, chunk_size=chunk) == full["r_precision"]
        assert recall_at_k(x, y, ks=(1, 2, 4, 8), chunk_size=chunk) == {
            k: full[f"recall@{k}"] for k in (1, 2, 4, 8)}


def test_nmi():
    # Four well separated directions: k-means recovers the classes exactly -> NMI = 1,
    # whatever the row norms and label names.
    x, y = clustered(120, 8, 4, seed=0, spread=0.05)
    x = x * np.random.default_rng(0).uniform(0.1, 10, size=(len(y), 1)).astype(np.float32)
    assert nmi(x, y, seed=0) == pytest.approx(1.0)
    assert nmi(torch.tensor(x), torch.tensor(y + 7), seed=1) == pytest.approx(1.0)
    # Labels independent of the geometry -> NMI near 0; deterministic for a given seed.
    noise = np.random.default_rng(1).normal(size=(200, 8))
    rand_y = np.random.default_rng(2).integers(0, 4, 200)
    assert nmi(noise, rand_y, seed=0) < 0.1
    assert nmi(noise, rand_y, seed=3) == nmi(noise, rand_y, seed=3)


@pytest.mark.parametrize("fn", [recall_at_k, map_at_r, r_precision, nmi, retrieval_metrics])
def test_input_validation(fn):
    with pytest.raises(ValueError, match="2-D"):
        fn(np.ones(5), np.zeros(5))
    with pytest.raises(ValueError, match="2-D"):
        fn(torch.ones(5, 2, 2), torch.zeros(5))
    with pytest.raises(ValueError, match="5 rows but labels have 4"):
        fn(np.ones((5, 2)), np.zeros(4))
    with pytest.raises(ValueError, match="at least 2"):
        fn(np.ones((1, 2)), np.zeros(1))
    with pytest.raises(ValueError, match="1-D"):
        fn(np.ones((5, 2)), np.zeros((5, 1)))
    with pytest.raises(ValueError, match="NaN"):
        fn(np.array([[1.0, 0.0], [np.nan, 1.0]]), np.zeros(2))


def test_argument_validation():
    with pytest.raises(ValueError, match="ks must"):
        recall_at_k(HAND_X, HAND_Y, ks=(0, 1))
    with pytest.raises(ValueError, match="ks must"):
        retrieval_metrics(HAND_X, HAND_Y, ks=())
    with pytest.raises(ValueError, match="chunk_size"):
        map_at_r(HAND_X, HAND_Y, chunk_size=0)
