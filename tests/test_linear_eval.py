import numpy as np
import pytest
import torch

import linear_eval.linear as linear_mod
from linear_eval import extract_features, knn_accuracy, linear_probe


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
    from linear_eval import knn_predictions

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


def test_probe_separable_features_reach_99_percent():
    x, y = clustered(3000, 32, 10, seed=0, spread=0.5)
    r = linear_probe(x[:2000], y[:2000], x[2000:2500], y[2000:2500], x[2500:], y[2500:])
    assert r["test_acc"] >= 0.99 and r["val_acc_best"] >= 0.99


def test_probe_matches_scikit_learn():
    from sklearn.linear_model import LogisticRegression
    from sklearn.preprocessing import StandardScaler

    x, y = clustered(600, 10, 3, seed=3, spread=3.0)
    xs = StandardScaler().fit_transform(x.astype(np.float64))
    for C in (0.05, 1.0):
        W, b = linear_mod.fit_logistic_regression(torch.tensor(xs), torch.tensor(y), 3, C, max_iter=500, tol=1e-12)
        ref = LogisticRegression(C=C, max_iter=10000, tol=1e-12).fit(xs, y)
        # same objective, same minimiser: weights (centred over classes) and probabilities agree
        W = W.numpy().T
        np.testing.assert_allclose(W - W.mean(0), ref.coef_ - ref.coef_.mean(0), rtol=1e-3, atol=1e-3)
        probs = torch.softmax(torch.tensor(xs) @ torch.tensor(W.T) + b, dim=1).numpy()
        np.testing.assert_allclose(probs, ref.predict_proba(xs), atol=1e-4)


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
    assert reads == [3]  # read exactly once, after the three fits
    # the choice depends on val only: garbage test labels change nothing but test_acc
    r2 = linear_probe(x[:500], y[:500], x[500:700], y[500:700], x[700:], (y[700:] + 1) % 5, Cs=[0.01, 0.1, 1.0])
    assert r2["C"] == r["C"] and r2["val_acc"] == r["val_acc"]
    assert r["val_acc"][str(r["C"])] == r["val_acc_best"] == max(r["val_acc"].values())


def test_probe_rejects_bad_input():
    x, y = clustered(50, 4, 2, seed=0)
    with pytest.raises(ValueError, match="2 classes"):
        linear_probe(x, np.zeros(50), x, y)
    with pytest.raises(ValueError, match="positive"):
        linear_probe(x, y, x, y, Cs=[])
    with pytest.raises(ValueError, match="dim"):
        linear_probe(x, y, x[:, :2], y)


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
