"""linear_eval: package boundary, the fast linear probe (convergence, grid extension, test read once),
feature extraction and the kNN backends."""

import subprocess
import sys
import warnings

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import linear_eval.linear as linear_mod
from linear_eval import extract_features, knn_accuracy, knn_predictions, linear_probe
from linear_eval.knn import default_chunk_size


def clustered(n, d, k, seed, spread=1.0):
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(k, d)) * 3
    y = rng.integers(0, k, n)
    return (centres[y] + spread * rng.normal(size=(n, d))).astype(np.float32), y


def knn_reference(bank, bank_y, queries, k, T, num_classes):
    """Brute force: cosine similarity, top-k, exp(sim / T) weighted class votes."""
    b = bank / np.linalg.norm(bank, axis=1, keepdims=True)
    q = queries / np.linalg.norm(queries, axis=1, keepdims=True)
    preds = []
    for row in q @ b.T:
        top = np.argsort(-row)[:k]
        votes = np.zeros(num_classes)
        for j in top:
            votes[bank_y[j]] += np.exp(row[j] / T)
        preds.append(int(np.argmax(votes)))
    return np.array(preds)


@pytest.mark.parametrize("k,T", [(1, 0.1), (5, 0.07), (20, 0.5), (200, 0.1)])
def test_knn_matches_brute_force(k, T):
    bank, bank_y = clustered(150, 16, 4, seed=k, spread=4.0)
    q, q_y = clustered(40, 16, 4, seed=k + 1, spread=4.0)
    expected = (knn_reference(bank, bank_y, q, min(k, 150), T, 4) == q_y).mean()
    assert knn_accuracy(bank, bank_y, q, q_y, k=k, temperature=T) == pytest.approx(expected)


def test_knn_chunk_boundaries_do_not_change_result():
    bank, bank_y = clustered(100, 8, 3, seed=0, spread=3.0)
    q, _ = clustered(37, 8, 3, seed=1, spread=3.0)
    full = knn_predictions(bank, bank_y, q, k=10, chunk_size=1000)
    for chunk in (1, 5, 36, 37):
        assert torch.equal(knn_predictions(bank, bank_y, q, k=10, chunk_size=chunk), full)


def test_knn_hand_made_case():
    bank = np.array([[1, 0], [0.9, 0.1], [0, 1], [0.1, 0.9]], dtype=np.float32)
    labels = np.array([0, 0, 1, 1])
    q = np.array([[1, 0.05], [0.05, 1]], dtype=np.float32)
    assert knn_accuracy(bank, labels, q, np.array([0, 1]), k=2) == 1.0
    assert knn_accuracy(bank, labels, q, np.array([1, 0]), k=2) == 0.0


@pytest.mark.parametrize("backend", ["torch", "faiss"])
@pytest.mark.parametrize("T", [0.02, 0.01, 0.005])
def test_knn_small_temperature_does_not_overflow(T, backend):
    """exp(1 / T) overflows float32 for T < 1/88.7: the vote must still go to the class whose
    neighbour is closest (an identical item of class 1) and not tie at inf."""
    bank = np.array([[1.0, 0.0], [0.95, np.sqrt(1 - 0.95 ** 2)], [0.94, -np.sqrt(1 - 0.94 ** 2)]],
                    dtype=np.float32)
    labels = np.array([1, 0, 0])
    q = np.array([[1.0, 0.0]], dtype=np.float32)
    assert knn_accuracy(bank, labels, q, np.array([1]), k=3, temperature=T, backend=backend) == 1.0
    # with the far class-0 pair's summed weight larger (T = 1), the vote goes to class 0
    assert knn_accuracy(bank, labels, q, np.array([0]), k=3, temperature=1.0, backend=backend) == 1.0


def test_knn_rejects_bad_input():
    with pytest.raises(ValueError, match="dim"):
        knn_accuracy(np.ones((4, 3)), np.zeros(4), np.ones((2, 5)), np.zeros(2))
    with pytest.raises(ValueError, match="temperature"):
        knn_accuracy(np.ones((4, 3)), np.zeros(4), np.ones((2, 3)), np.zeros(2), temperature=0)


def test_package_boundary_imports_torch_numpy_sklearn_only():
    code = ("import sys, linear_eval; from linear_eval import recall_at_k, map_at_r, knn_accuracy, linear_probe, "
            "extract_features, knn_predictions, nmi, r_precision, retrieval_metrics; "
            "print(','.join(m for m in ('ssl_transfer', 'lightning', 'lightly', 'pytorch_lightning', 'torchvision') "
            "if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "", f"linear_eval imported {out.stdout.strip()}"


def test_probe_separable_features_reach_99_percent_and_ties_take_the_smallest_C():
    x, y = clustered(3000, 32, 10, seed=0, spread=0.5)
    r = linear_probe(x[:2000], y[:2000], x[2000:2500], y[2000:2500], x[2500:], y[2500:])
    assert r["test_acc"] >= 0.99 and r["val_acc_best"] >= 0.99
    # every C of the grid ties on val (separable clusters): no direction to prefer, so the grid grows
    # both ways until the accuracy changes (below 1e-4 the class-prior bias takes over); the first
    # best in increasing C is kept, and it is interior
    assert set(r["val_acc"][str(c)] for c in (0.01, 0.1, 1.0)) == {1.0}
    assert r["val_acc"]["1e-05"] < 1.0 and r["C"] == 0.0001 and not r["C_at_edge"]
    assert r["Cs_searched"] == [1e-5, 1e-4, 1e-3, 0.01, 0.1, 1.0, 10.0, 100.0, 1000.0]


def scaled_gradient(x, y, k, C, W, b):
    """max |gradient| of mean CE + ||W||^2 / (2 C n) in float64, computed independently."""
    W = W.double().clone().requires_grad_(True)
    b = b.double().clone().requires_grad_(True)
    x = torch.as_tensor(x).double()
    loss = F.cross_entropy(x @ W + b, torch.as_tensor(y)) + (W * W).sum() / (2 * C * len(y))
    gW, gb = torch.autograd.grad(loss, [W, b])
    return max(float(gW.abs().max()), float(gb.abs().max()))


def correlated(n, d, k, seed):
    """Ill-conditioned features (mixed by a random matrix with a decaying spectrum), like real ones."""
    g = torch.Generator().manual_seed(seed)
    y = torch.randint(0, k, (n,), generator=g)
    z = torch.randn(k, d, generator=g)[y] + 2 * torch.randn(n, d, generator=g)
    mix = torch.randn(d, d, generator=g) * torch.logspace(0, -2, d)[:, None]
    x = z @ mix
    return (x - x.mean(0)) / x.std(0), y


@pytest.mark.parametrize("C", [0.01, 1.0, 100.0])
def test_fit_runs_to_the_gradient_tolerance(C):
    x, y = correlated(2000, 64, 5, seed=0)
    fit = linear_mod.fit_logistic_regression(x, y, 5, C)  # float32, default tol and cap
    assert fit.converged and 0 < fit.n_iter < linear_mod.MAX_ITER and fit.grad_norm <= linear_mod.TOL
    assert scaled_gradient(x, y, 5, C, fit.W, fit.b) <= 1.5 * linear_mod.TOL  # float64 recomputation agrees
    # the old 100-iteration cap did not get there on this problem for weak regularisation
    if C == 100.0:
        assert fit.n_iter > 100


def test_probe_records_iterations_and_warns_when_the_cap_is_hit():
    x, y = correlated(1500, 64, 5, seed=1)
    r = linear_probe(x[:1000], y[:1000], x[1000:], y[1000:], Cs=[0.1, 1.0, 10.0])
    assert r["converged"] and all(f["converged"] and not f["hit_max_iter"] for f in r["fits"].values())
    assert set(r["fits"]) == set(r["val_acc"]) == {str(c) for c in r["Cs_searched"]}
    assert r["params"]["tol"] == linear_mod.TOL and r["params"]["max_iter"] == linear_mod.MAX_ITER
    with pytest.warns(RuntimeWarning, match="did not reach tol"):
        r = linear_probe(x[:1000], y[:1000], x[1000:], y[1000:], Cs=[0.1, 1.0, 10.0], max_iter=3)
    assert not r["converged"] and r["fits"]["10.0"] == {**r["fits"]["10.0"], "n_iter": 3, "converged": False,
                                                          "hit_max_iter": True}


def test_probe_matches_scikit_learn():
    from sklearn.linear_model import LogisticRegression
    from sklearn.preprocessing import StandardScaler

    x, y = clustered(600, 10, 3, seed=3, spread=3.0)
    xs = StandardScaler().fit_transform(x.astype(np.float64))
    for C in (0.05, 1.0):
        fit = linear_mod.fit_logistic_regression(torch.tensor(xs), torch.tensor(y), 3, C, tol=1e-9)
        assert fit.converged and fit.grad_norm <= 1e-9
        ref = LogisticRegression(C=C, max_iter=100000, tol=1e-14).fit(xs, y)
        # same objective, same minimiser: weights (centred over classes) and probabilities agree
        W = fit.W.numpy().T
        np.testing.assert_allclose(W - W.mean(0), ref.coef_ - ref.coef_.mean(0), rtol=0, atol=5e-6)
        probs = torch.softmax(torch.tensor(xs) @ fit.W + fit.b, dim=1).numpy()
        np.testing.assert_allclose(probs, ref.predict_proba(xs), rtol=0, atol=2e-6)


def noisy_few(seed=0, n_train=60, n_val=4000, d=200):
    """2 classes (60/40), one informative feature among 199 noise features and 60 training items:
    a large C fits the noise, a tiny C predicts the majority class; the best C is ~0.01."""
    rng = np.random.default_rng(seed)

    def draw(n):
        y = (rng.random(n) > 0.6).astype(int)
        x = rng.normal(size=(n, d))
        x[:, 0] += 2.5 * y
        return x.astype(np.float32), y

    return draw(n_train), draw(n_val)


def imbalanced(seed=0, n=2000, d=8):
    """2 well separated classes (80/20): a tiny C predicts the majority class, the best C is ~0.03."""
    rng = np.random.default_rng(seed)

    def draw(n):
        y = (rng.random(n) > 0.8).astype(int)
        x = rng.normal(size=(n, d))
        x[:, :2] += 3.0 * y[:, None]
        return x.astype(np.float32), y

    return draw(n), draw(n)


def test_probe_grid_extends_below_until_the_best_C_is_interior():
    (tx, ty), (vx, vy) = noisy_few()
    r = linear_probe(tx, ty, vx, vy, Cs=[1.0, 10.0])
    assert r["Cs_searched"] == [0.001, 0.01, 0.1, 1.0, 10.0]  # the grid's own ratio, 10
    assert r["C"] == 0.01 and not r["C_at_edge"]
    assert r["val_acc_best"] == max(r["val_acc"].values()) > r["val_acc"]["1.0"] + 0.005
    with pytest.warns(RuntimeWarning, match="at a bound"):  # a hard bound stops it
        r = linear_probe(tx, ty, vx, vy, Cs=[1.0, 10.0], C_bounds=(0.1, 100.0))
    assert r["Cs_searched"] == [0.1, 1.0, 10.0] and r["C"] == 0.1 and r["C_at_edge"]


def test_probe_grid_extends_above_until_the_best_C_is_interior():
    (tx, ty), (vx, vy) = imbalanced()
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # converged, interior: no warning
        r = linear_probe(tx, ty, vx, vy, Cs=[3e-4, 1e-3])
    # ratio 10/3 at the upper edge, rounded to 6 significant digits
    assert r["Cs_searched"][:3] == [3e-4, 1e-3, 0.00333333] and r["Cs_searched"][3] == 0.0111111
    assert 1e-3 < r["C"] < r["Cs_searched"][-1] and not r["C_at_edge"]
    assert r["val_acc_best"] > r["val_acc"]["0.001"] + 0.05
    with pytest.warns(RuntimeWarning, match="at a bound"):
        r = linear_probe(tx, ty, vx, vy, Cs=[3e-4, 1e-3], C_bounds=(1e-6, 3e-3))
    assert r["Cs_searched"] == [3e-4, 1e-3, 3e-3] and r["C"] == 3e-3 and r["C_at_edge"]  # clipped to the bound


def test_probe_flat_or_one_point_grid_looks_both_ways():
    (tx, ty), (vx, vy) = imbalanced()
    # both Cs predict the majority class (a tie): the first best, 1e-5, is the lower edge, but with
    # no direction to prefer the grid also grows upwards, where the accuracy is
    r = linear_probe(tx, ty, vx, vy, Cs=[1e-5, 1e-4])
    assert r["val_acc"]["1e-05"] == r["val_acc"]["0.0001"] and min(r["Cs_searched"]) == 1e-6
    assert 1e-3 < r["C"] < r["Cs_searched"][-1] and not r["C_at_edge"]
    r = linear_probe(tx, ty, vx, vy, Cs=[0.03])  # one point: x sqrt(10) both ways
    assert r["Cs_searched"][:3] == [0.00948683, 0.03, 0.0948683] and not r["C_at_edge"]


def test_probe_selects_on_val_and_reads_test_once_after_all_fits(monkeypatch):
    x, y = clustered(900, 16, 5, seed=4, spread=2.5)
    fits = []
    original = linear_mod.fit_logistic_regression
    monkeypatch.setattr(linear_mod, "fit_logistic_regression", lambda *a, **k: fits.append(1) or original(*a, **k))
    reads = []

    class Spy:  # array-like that records when it is read
        def __init__(self, a):
            self.a = a

        def __array__(self, *args, **kwargs):
            reads.append(len(fits))
            return self.a

    test_x = Spy(x[700:])
    r = linear_probe(x[:500], y[:500], x[500:700], y[500:700], test_x, y[700:], Cs=[0.01, 0.1, 1.0])
    assert len(fits) == len(r["Cs_searched"]) >= 3
    assert reads == [len(fits)]  # read exactly once, after every fit (grid extension included)
    # the choice depends on val only: garbage test labels change nothing but test_acc
    r2 = linear_probe(x[:500], y[:500], x[500:700], y[500:700], x[700:], (y[700:] + 1) % 5, Cs=[0.01, 0.1, 1.0])
    assert r2["C"] == r["C"] and r2["val_acc"] == r["val_acc"] and r2["Cs_searched"] == r["Cs_searched"]
    assert r["val_acc"][str(r["C"])] == r["val_acc_best"] == max(r["val_acc"].values())


def test_probe_rejects_bad_input():
    x, y = clustered(50, 4, 2, seed=0)
    with pytest.raises(ValueError, match="2 classes"):
        linear_probe(x, np.zeros(50), x, y)
    with pytest.raises(ValueError, match="positive"):
        linear_probe(x, y, x, y, Cs=[])
    with pytest.raises(ValueError, match="dim"):
        linear_probe(x, y, x[:, :2], y)
    with pytest.raises(ValueError, match="C_bounds"):
        linear_probe(x, y, x, y, Cs=[1e-7, 1.0])
    with pytest.raises(TypeError, match="seed"):  # removed: the solver is deterministic
        linear_probe(x, y, x, y, seed=0)


def test_extract_features_eval_mode_and_bn_stats_unchanged():
    net = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.BatchNorm1d(8))
    net.train()
    before = {k: v.clone() for k, v in net.state_dict().items()}
    loader = [(torch.randn(16, 4), torch.zeros(16)) for _ in range(3)]
    feats, labels = extract_features(net, loader)
    assert feats.shape == (48, 8) and labels.shape == (48,)
    for k, v in net.state_dict().items():
        assert torch.equal(v, before[k]), k
    assert net.training  # mode restored
    # eval-mode output: running stats (mean 0, var 1) applied, i.e. just the linear layer
    x = loader[0][0]
    torch.testing.assert_close(feats[:16], net[0](x).detach() / torch.sqrt(torch.tensor(1 + 1e-5)))


# --------------------------------------------------------------------------- extract_features
def test_extract_features_max_batches_and_mixed_modes_restored():
    net = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.BatchNorm1d(8), torch.nn.Dropout(0.5))
    net.train()
    net[1].eval()  # a mixed state (e.g. a frozen part) must come back exactly as it was
    loader = [(torch.randn(16, 4), torch.arange(16)) for _ in range(5)]
    seen = []
    net.register_forward_hook(lambda m, i, o: seen.append([c.training for c in m]))
    feats, labels = extract_features(net, loader, max_batches=2, dtype=torch.float64)
    assert feats.shape == (32, 8) and feats.dtype == torch.float64 and torch.equal(labels, torch.arange(16).repeat(2))
    assert seen == [[False] * 3] * 2  # eval mode (no dropout) during extraction
    assert [m.training for m in net] == [True, False, True] and net.training
    again, _ = extract_features(net, loader, max_batches=2, dtype=torch.float64)
    assert torch.equal(feats, again)  # deterministic
    with pytest.raises(ValueError, match="max_batches"):
        extract_features(net, loader, max_batches=0)


# --------------------------------------------------------------------------- kNN
def clustered_unit(n, d, k, seed, spread):
    """Like ``clustered`` with unit-scale centres."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(k, d))
    y = rng.integers(0, k, n)
    return (centres[y] + spread * rng.normal(size=(n, d))).astype(np.float32), y


def reference_votes(bank, bank_y, queries, k, T, num_classes):
    """float64 brute force: predictions, relative margin between the two best class scores,
    and the similarity gap between the k-th and (k+1)-th neighbour (near-tie detectors)."""
    b = bank / np.linalg.norm(bank, axis=1, keepdims=True)
    q = queries / np.linalg.norm(queries, axis=1, keepdims=True)
    sim = q.astype(np.float64) @ b.astype(np.float64).T
    order = np.argsort(-sim, axis=1)
    votes = np.zeros((len(q), num_classes))
    for i in range(len(q)):
        for j in order[i, :k]:
            votes[i, bank_y[j]] += np.exp(sim[i, j] / T)
    top2 = np.sort(votes, axis=1)[:, -2:]
    srt = np.take_along_axis(sim, order, 1)
    gap = srt[:, k - 1] - srt[:, k] if k < sim.shape[1] else np.full(len(q), np.inf)
    return votes.argmax(1), (top2[:, 1] - top2[:, 0]) / top2[:, 1], gap


def assert_same_up_to_ties(pred, ref, margin, gap):
    differ = np.asarray(pred) != ref
    assert differ.mean() <= 0.02
    assert np.all((margin[differ] < 1e-4) | (gap[differ] < 1e-5)), "a non-tied prediction differs"


@pytest.mark.parametrize("k", [1, 20, 200])
def test_knn_torch_backend_matches_lightly_knn_predict(k):
    from lightly.utils.benchmarking import knn_predict

    x, y = clustered_unit(750, 24, 10, seed=k, spread=1.5)
    bank, bank_y, q = x[:600], y[:600], x[600:]
    bank_t = torch.nn.functional.normalize(torch.tensor(bank), dim=1)
    lightly_pred = knn_predict(torch.nn.functional.normalize(torch.tensor(q), dim=1), bank_t.T,
                               torch.tensor(bank_y), 10, k, 0.1)[:, 0].numpy()
    ours = knn_predictions(bank, bank_y, q, k=k, temperature=0.1, num_classes=10, chunk_size=64)
    _, margin, gap = reference_votes(bank, bank_y, q, k, 0.1, 10)
    assert_same_up_to_ties(ours.numpy(), lightly_pred, margin, gap)
    assert (ours.numpy() == lightly_pred).mean() >= 0.98


@pytest.mark.parametrize("k,T", [(1, 0.1), (10, 0.07), (100, 0.5)])
def test_knn_faiss_backend_matches_torch_backend(k, T):
    pytest.importorskip("faiss")
    x, y = clustered_unit(2300, 32, 10, seed=k, spread=2.0)
    bank, bank_y, q, q_y = x[:2000], y[:2000], x[2000:], y[2000:]
    torch_pred = knn_predictions(bank, bank_y, q, k=k, temperature=T, backend="torch")
    faiss_pred = knn_predictions(bank, bank_y, q, k=k, temperature=T, backend="faiss", chunk_size=128)
    ref, margin, gap = reference_votes(bank, bank_y, q, k, T, 10)
    assert_same_up_to_ties(torch_pred.numpy(), ref, margin, gap)
    assert_same_up_to_ties(faiss_pred.numpy(), ref, margin, gap)
    assert 0.3 < (ref == q_y).mean() < 1.0  # a non-trivial problem: the votes matter
    assert knn_accuracy(bank, bank_y, q, q_y, k, T, backend="faiss") == pytest.approx(
        knn_accuracy(bank, bank_y, q, q_y, k, T), abs=0.01)


def test_knn_rejects_unknown_backend_and_bad_chunk():
    x, y = clustered_unit(20, 4, 2, seed=0, spread=1.0)
    with pytest.raises(ValueError, match="unknown kNN backend 'annoy'"):
        knn_accuracy(x, y, x, y, backend="annoy")
    with pytest.raises(ValueError, match="chunk_size"):
        knn_predictions(x, y, x, chunk_size=0)


def test_knn_torch_memory_is_bounded_by_chunk_times_bank():
    """No tensor created during the search is larger than chunk_size x n: no copy of the
    (n, d) bank (d > chunk here), no (chunk * k, classes) one-hot (k * classes > n here)."""
    from torch.utils._python_dispatch import TorchDispatchMode

    class Largest(TorchDispatchMode):
        def __init__(self):
            super().__init__()
            self.numel = 0

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            out = func(*args, **(kwargs or {}))
            flat = list(args) + list((kwargs or {}).values())
            inputs = {a.untyped_storage().data_ptr() for a in flat if isinstance(a, torch.Tensor)}
            for t in out if isinstance(out, (tuple, list)) else (out,):
                # new allocations only: views (detach, transpose) share an input's storage
                if isinstance(t, torch.Tensor) and t.untyped_storage().data_ptr() not in inputs:
                    self.numel = max(self.numel, t.untyped_storage().nbytes() // t.element_size())
            return out

    n, d, chunk, k, classes = 600, 64, 16, 50, 200
    bank = torch.randn(n, d)
    labels = torch.randint(0, classes, (n,))
    queries = torch.randn(100, d)
    with Largest() as spy:
        pred = knn_predictions(bank, labels, queries, k=k, num_classes=classes, chunk_size=chunk)
    assert pred.shape == (100,)
    assert 0 < spy.numel <= chunk * n
    # the default chunk keeps an ImageNet-sized similarity block within 2**28 floats (1 GiB)
    n_imagenet = 1_281_167
    assert 100 < default_chunk_size(n_imagenet) and default_chunk_size(n_imagenet) * n_imagenet <= 2 ** 28
    assert default_chunk_size(50_000) == 1024 and default_chunk_size(10 ** 10) == 1
