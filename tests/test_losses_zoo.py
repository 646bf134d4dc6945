"""The loss zoo against independent, loop-based re-computations of METHOD.md (float64).

Each ``ref_*`` function below spells its formula out element by element with plain Python
loops and the ``math`` module; gradients are checked against central finite differences of
these references, so neither values nor gradients rely on the implementation under test.
"""

import math

import numpy as np
import pytest
import torch

from ssl_transfer.losses import (
    LOSSES,
    DarkRankLoss,
    KDLoss,
    PKTLoss,
    RegressionLoss,
    RelaxedContrastiveLoss,
    RelaxedMSLoss,
    RKDLoss,
)

# ----------------------------------------------------------------------------- helpers


def dist(a, b) -> float:
    return math.sqrt(max(sum((x - y) ** 2 for x, y in zip(a, b)), 1e-12))


def dist_matrix(x):
    n = len(x)
    return [[0.0 if i == j else dist(x[i], x[j]) for j in range(n)] for i in range(n)]


def unit(v, eps=0.0):
    norm = math.sqrt(sum(c * c for c in v))
    return [c / (norm + eps) for c in v] if eps else [c / max(norm, 1e-12) for c in v]


def dot(a, b) -> float:
    return sum(x * y for x, y in zip(a, b))


def smooth_l1(a: float, b: float) -> float:
    z = abs(a - b)
    return 0.5 * z * z if z < 1.0 else z - 0.5


def numeric_grad(f, x: np.ndarray, h: float = 1e-6) -> np.ndarray:
    g = np.zeros_like(x)
    for idx in np.ndindex(*x.shape):
        xp, xm = x.copy(), x.copy()
        xp[idx] += h
        xm[idx] -= h
        g[idx] = (f(xp) - f(xm)) / (2 * h)
    return g


def clustered(rng, n, d, clusters=3, noise=0.5):
    """Teacher-like data whose cosine similarities span a wide range."""
    return rng.normal(size=(clusters, d))[rng.integers(0, clusters, n)] + noise * rng.normal(size=(n, d))


def run(loss_fn, s: np.ndarray, t: np.ndarray, **kw):
    student = torch.tensor(s, dtype=torch.float64, requires_grad=True)
    loss = loss_fn(student, torch.tensor(t, dtype=torch.float64), **kw)
    loss.backward()
    return loss.item(), student.grad.numpy()


# ----------------------------------------------------------------------------- references


def ref_relaxed_ms(s, t, sigma, delta, a, b, views):
    n = len(s)
    images = n // views
    D = dist_matrix(s)
    t_hat = [unit(v) for v in t]
    total = 0.0
    for i in range(n):
        mean = sum(D[i]) / n
        pos_sum, neg_sum = 0.0, 0.0
        for j in range(n):
            if j == i:
                continue
            x = D[i][j] / mean
            if i % images == j % images:
                w = 1.0
            else:
                w = math.exp(-sum((p - q) ** 2 for p, q in zip(t_hat[i], t_hat[j])) / sigma)
            pos_sum += w * math.exp(a * x)
            neg_sum += (1.0 - w) * math.exp(b * (delta - x))
        total += math.log(1.0 + pos_sum) / a + math.log(1.0 + neg_sum) / b
    return total / n


def ref_rkd(s, t, dist_weight, angle_weight):
    n = len(s)

    def normalised(x):
        D = dist_matrix(x)
        positive = [D[i][j] for i in range(n) for j in range(n) if D[i][j] > 0]
        mean = sum(positive) / len(positive)
        return [[D[i][j] / mean for j in range(n)] for i in range(n)]

    Ds, Dt = normalised(s), normalised(t)
    dist_term = sum(smooth_l1(Ds[i][j], Dt[i][j]) for i in range(n) for j in range(n)) / n ** 2

    def cosines(x):
        out = {}
        for a in range(n):  # vertex a, legs towards b and c
            e = [unit([x[b][k] - x[a][k] for k in range(len(x[a]))]) if b != a else [0.0] * len(x[a])
                 for b in range(n)]
            for b in range(n):
                for c in range(n):
                    out[a, b, c] = dot(e[b], e[c])
        return out

    cs, ct = cosines(s), cosines(t)
    angle_term = sum(smooth_l1(cs[k], ct[k]) for k in cs) / n ** 3
    return dist_weight * dist_term + angle_weight * angle_term


def ref_pkt(s, t, eps, keep_diagonal=True):
    n = len(s)

    def conditional(x):
        xh = [unit(v, eps) for v in x]
        K = [[(dot(xh[i], xh[j]) + 1.0) / 2.0 for j in range(n)] for i in range(n)]
        rows = []
        for i in range(n):
            cols = [j for j in range(n) if keep_diagonal or j != i]
            z = sum(K[i][j] for j in cols)
            rows.append({j: K[i][j] / z for j in cols})
        return rows

    P, Q = conditional(t), conditional(s)
    total = 0.0
    for i in range(n):
        for j, p in P[i].items():
            total += p * math.log((p + eps) / (Q[i][j] + eps))
    return total / n ** 2


def ref_darkrank(s, t, alpha, beta, k, labels=None, margin=0.2):
    n = len(s)
    Ds, Dt = dist_matrix(s), dist_matrix(t)
    total = 0.0
    for i in range(n):
        neighbours = sorted((j for j in range(n) if j != i), key=lambda j: Dt[i][j])[:k]
        remaining = [j for j in range(n) if j != i]
        score = {j: -alpha * Ds[i][j] ** beta for j in remaining}
        log_p = 0.0
        for j in neighbours:
            top = max(score[c] for c in remaining)
            log_p += score[j] - (top + math.log(sum(math.exp(score[c] - top) for c in remaining)))
            remaining.remove(j)
        total -= log_p
    loss = total / n
    if labels is not None:
        terms = []
        for i in range(n):
            pos = [Ds[i][j] for j in range(n) if j != i and labels[j] == labels[i]]
            neg = [Ds[i][j] for j in range(n) if labels[j] != labels[i]]
            if pos and neg:
                terms.append(max(0.0, max(pos) - min(neg) + margin))
        loss += sum(terms) / len(terms)
    return loss


def ref_regression(s, t, W, b):
    total = 0.0
    for i in range(len(s)):
        for o in range(len(t[i])):
            pred = b[o] + sum(W[o][c] * s[i][c] for c in range(len(s[i])))
            total += (pred - t[i][o]) ** 2
    return total / (len(s) * len(t[0]))


def ref_kd(s, t, T):
    def log_softmax(row):
        top = max(v / T for v in row)
        z = top + math.log(sum(math.exp(v / T - top) for v in row))
        return [v / T - z for v in row]

    total = 0.0
    for si, ti in zip(s, t):
        lq, lp = log_softmax(si), log_softmax(ti)
        total += sum(math.exp(p) * (p - q) for p, q in zip(lp, lq))
    return total / len(s) * T * T


# ----------------------------------------------------------------------------- value + gradient


@pytest.mark.parametrize("n,d_s,d_t,views,sigma,delta,a,b", [
    (6, 3, 5, 1, 1.0, 1.0, 1.0, 2.0),
    (8, 4, 3, 2, 1.0, 1.0, 1.0, 2.0),
    (9, 2, 6, 3, 3.0, 0.8, 2.0, 5.0),
])
def test_relaxed_ms_matches_reference(n, d_s, d_t, views, sigma, delta, a, b):
    rng = np.random.default_rng(n + d_s)
    s, t = rng.normal(size=(n, d_s)), clustered(rng, n, d_t)
    fn = RelaxedMSLoss(sigma=sigma, delta=delta, scale_pos=a, scale_neg=b, views=views)
    value, grad = run(fn, s, t)
    ref = lambda x: ref_relaxed_ms(x, t, sigma, delta, a, b, views)  # noqa: E731
    assert value == pytest.approx(ref(s), rel=1e-10)
    np.testing.assert_allclose(grad, numeric_grad(ref, s), rtol=1e-5, atol=1e-8)


def test_relaxed_ms_zero_teacher_rows_are_the_origin():
    """Same relaxed labels as RelaxedContrastiveLoss: a zero teacher row is at the origin
    (distance 1 to unit rows, 0 to another zero row), as the reference's unit() places it."""
    rng = np.random.default_rng(12)
    s, t = rng.normal(size=(8, 3)), clustered(rng, 8, 4)
    t[2] = 0.0
    t[5] = 0.0
    value, grad = run(RelaxedMSLoss(sigma=2.0), s, t)
    ref = lambda x: ref_relaxed_ms(x, t, 2.0, 1.0, 1.0, 2.0, 1)  # noqa: E731
    assert value == pytest.approx(ref(s), rel=1e-10)
    np.testing.assert_allclose(grad, numeric_grad(ref, s), rtol=1e-5, atol=1e-8)


def test_relaxed_ms_views_make_same_image_pairs_positive():
    rng = np.random.default_rng(0)
    s, t = rng.normal(size=(8, 3)), rng.normal(size=(8, 16))  # unrelated views: w << 1 without views
    one = RelaxedMSLoss(views=1)(torch.tensor(s), torch.tensor(t)).item()
    two = RelaxedMSLoss(views=2)(torch.tensor(s), torch.tensor(t)).item()
    assert one == pytest.approx(ref_relaxed_ms(s, t, 1.0, 1.0, 1.0, 2.0, 1), rel=1e-10)
    assert two == pytest.approx(ref_relaxed_ms(s, t, 1.0, 1.0, 1.0, 2.0, 2), rel=1e-10)
    assert abs(one - two) > 1e-3


def test_relaxed_ms_is_stable_for_large_scales():
    """Naive exp(α·D̃) overflows float64 here; the log-domain value must stay exact."""
    rng = np.random.default_rng(1)
    s, t = rng.normal(size=(7, 3)), clustered(rng, 7, 4)
    s[0] *= 300.0  # one far outlier: D̃ up to ~n
    a, b = 400.0, 300.0
    value, grad = run(RelaxedMSLoss(scale_pos=a, scale_neg=b), s, t)
    # log-domain reference with numpy
    n = len(s)
    D = np.array(dist_matrix(s))
    D = D / D.mean(axis=1, keepdims=True)
    th = t / np.linalg.norm(t, axis=1, keepdims=True)
    W = np.exp(-((th[:, None] - th[None]) ** 2).sum(-1))
    expected = 0.0
    for i in range(n):
        js = [j for j in range(n) if j != i]
        expected += np.logaddexp.reduce([0.0] + [math.log(W[i, j]) + a * D[i, j] for j in js]) / a
        expected += np.logaddexp.reduce([0.0] + [math.log1p(-W[i, j]) + b * (1 - D[i, j]) for j in js]) / b
    assert math.isfinite(value) and np.isfinite(grad).all()
    assert value == pytest.approx(expected / n, rel=1e-9)


def test_relaxed_ms_rejects_batch_not_divisible_by_views():
    with pytest.raises(ValueError, match="views"):
        RelaxedMSLoss(views=2)(torch.randn(5, 3), torch.randn(5, 3))
    with pytest.raises(ValueError):
        RelaxedMSLoss(views=0)


@pytest.mark.parametrize("n,d_s,d_t,wd,wa", [(5, 3, 4, 1.0, 2.0), (6, 2, 5, 1.0, 0.0), (4, 4, 2, 0.0, 1.0)])
def test_rkd_matches_reference(n, d_s, d_t, wd, wa):
    rng = np.random.default_rng(10 * n + d_s)
    s, t = rng.normal(size=(n, d_s)), rng.normal(size=(n, d_t))
    value, grad = run(RKDLoss(dist_weight=wd, angle_weight=wa, chunk_size=2), s, t)
    ref = lambda x: ref_rkd(x, t, wd, wa)  # noqa: E731
    assert value == pytest.approx(ref(s), rel=1e-10)
    np.testing.assert_allclose(grad, numeric_grad(ref, s), rtol=1e-5, atol=1e-8)


def test_rkd_large_differences_use_the_linear_part_of_smooth_l1():
    """Teacher distances far from the student's: the |z| - 0.5 branch must be exercised too."""
    rng = np.random.default_rng(3)
    s = rng.normal(size=(5, 3))
    t = rng.normal(size=(5, 3))
    t[0] += 40.0  # normalised teacher distances to item 0 ≫ student ones
    value, _ = run(RKDLoss(), s, t)
    assert value == pytest.approx(ref_rkd(s, t, 1.0, 2.0), rel=1e-10)


@pytest.mark.parametrize("chunk", [1, 7, 13, 40, None])
def test_rkd_chunked_angle_equals_unchunked(chunk):
    g = torch.Generator().manual_seed(4)
    s, t = torch.randn(40, 6, generator=g, dtype=torch.float64), torch.randn(40, 9, generator=g, dtype=torch.float64)
    grads, values = [], []
    for c in (None, chunk):
        x = s.clone().requires_grad_()
        loss = RKDLoss(dist_weight=0.0, angle_weight=1.0, chunk_size=c)(x, t)
        loss.backward()
        values.append(loss.item())
        grads.append(x.grad)
    assert values[1] == pytest.approx(values[0], rel=1e-12)
    torch.testing.assert_close(grads[1], grads[0], rtol=1e-10, atol=1e-14)


def test_rkd_chunked_angle_keeps_no_cubic_tensor_for_backward():
    """With chunking, nothing of size n²·d or n³ is stored by autograd after the forward."""
    n, d, chunk = 48, 8, 8
    s = torch.randn(n, d, dtype=torch.float64, requires_grad=True)
    t = torch.randn(n, d, dtype=torch.float64)
    for c, bound_ok in ((chunk, True), (None, False)):
        sizes = []
        with torch.autograd.graph.saved_tensors_hooks(lambda x, sizes=sizes: sizes.append(x.numel()) or x,
                                                      lambda x: x):
            RKDLoss(chunk_size=c)(s, t).backward()
        assert (max(sizes) <= n * n) is bound_ok


@pytest.mark.parametrize("n,d_s,d_t", [(5, 3, 4), (7, 2, 6)])
def test_pkt_matches_reference_with_diagonal(n, d_s, d_t):
    rng = np.random.default_rng(n)
    s, t = rng.normal(size=(n, d_s)), clustered(rng, n, d_t)
    value, grad = run(PKTLoss(), s, t)
    ref = lambda x: ref_pkt(x, t, 1e-7)  # noqa: E731
    assert value == pytest.approx(ref(s), rel=1e-10)
    np.testing.assert_allclose(grad, numeric_grad(ref, s), rtol=1e-5, atol=1e-9)
    # the authors' code keeps the diagonal; the paper's formula (no diagonal) gives another value
    assert abs(value - ref_pkt(s, t, 1e-7, keep_diagonal=False)) > 1e-4 * value


@pytest.mark.parametrize("n,d_s,d_t,k,alpha,beta", [
    (6, 3, 4, 4, 3.0, 3.0), (7, 2, 5, 2, 1.0, 2.0), (5, 3, 3, 4, 2.0, 1.5), (6, 3, 3, 3, 1.0, 0.5),
])
def test_darkrank_matches_reference(n, d_s, d_t, k, alpha, beta):
    rng = np.random.default_rng(n * k)
    s, t = 0.5 * rng.normal(size=(n, d_s)), rng.normal(size=(n, d_t))
    value, grad = run(DarkRankLoss(alpha=alpha, beta=beta, k=k), s, t)
    ref = lambda x: ref_darkrank(x, t, alpha, beta, k)  # noqa: E731
    assert value == pytest.approx(ref(s), rel=1e-10)
    np.testing.assert_allclose(grad, numeric_grad(ref, s), rtol=1e-5, atol=1e-8)


def test_darkrank_with_labels_adds_batch_hard_triplet():
    rng = np.random.default_rng(5)
    s, t = 0.5 * rng.normal(size=(8, 3)), rng.normal(size=(8, 4))
    labels = np.array([0, 0, 1, 1, 2, 2, 3, 0])
    value, grad = run(DarkRankLoss(), s, t, labels=torch.tensor(labels))
    ref = lambda x: ref_darkrank(x, t, 3.0, 3.0, 4, labels=labels)  # noqa: E731
    assert value == pytest.approx(ref(s), rel=1e-10)
    assert value > ref_darkrank(s, t, 3.0, 3.0, 4)
    np.testing.assert_allclose(grad, numeric_grad(ref, s), rtol=1e-5, atol=1e-8)


def test_darkrank_triplet_without_valid_anchor_is_zero():
    s, t = torch.randn(6, 3, dtype=torch.float64), torch.randn(6, 3, dtype=torch.float64)
    fn = DarkRankLoss()
    assert fn(s, t, torch.arange(6)).item() == pytest.approx(fn(s, t).item(), rel=1e-12)  # no positives


def test_darkrank_input_errors():
    with pytest.raises(ValueError, match="at least 5"):
        DarkRankLoss(k=4)(torch.randn(4, 3), torch.randn(4, 3))
    with pytest.raises(ValueError, match="with_triplet"):
        DarkRankLoss(with_triplet=False)(torch.randn(6, 3), torch.randn(6, 3), torch.zeros(6))
    with pytest.raises(ValueError, match="labels"):
        DarkRankLoss()(torch.randn(6, 3), torch.randn(6, 3), torch.zeros(5))


def test_regression_matches_reference_and_trains_its_projection():
    rng = np.random.default_rng(6)
    s, t = rng.normal(size=(5, 3)), rng.normal(size=(5, 4))
    fn = RegressionLoss(student_dim=3, teacher_dim=4)
    W, b = fn.proj.weight.detach().double().numpy(), fn.proj.bias.detach().double().numpy()
    value, grad = run(fn, s, t)
    assert value == pytest.approx(ref_regression(s, t, W, b), rel=1e-6)  # float32 parameters
    np.testing.assert_allclose(grad, numeric_grad(lambda x: ref_regression(x, t, W, b), s), rtol=1e-5, atol=1e-8)
    w_grad = numeric_grad(lambda m: ref_regression(s, t, m, b), W)
    np.testing.assert_allclose(fn.proj.weight.grad.double().numpy(), w_grad, rtol=1e-5, atol=1e-7)
    assert {name for name, _ in fn.named_parameters()} == {"proj.weight", "proj.bias"}


def test_regression_rejects_wrong_widths():
    with pytest.raises(ValueError, match="d_s=3"):
        RegressionLoss(student_dim=3, teacher_dim=4)(torch.randn(5, 2), torch.randn(5, 4))


@pytest.mark.parametrize("T", [1.0, 4.0])
def test_kd_matches_reference_and_closed_form_gradient(T):
    rng = np.random.default_rng(7)
    s, t = 3 * rng.normal(size=(4, 5)), 3 * rng.normal(size=(4, 5))
    value, grad = run(KDLoss(temperature=T), s, t)
    assert value == pytest.approx(ref_kd(s, t, T), rel=1e-10)
    np.testing.assert_allclose(grad, numeric_grad(lambda x: ref_kd(x, t, T), s), rtol=1e-5, atol=1e-9)
    q = np.exp(s / T) / np.exp(s / T).sum(1, keepdims=True)
    p = np.exp(t / T) / np.exp(t / T).sum(1, keepdims=True)
    np.testing.assert_allclose(grad, T * (q - p) / len(s), rtol=1e-10, atol=1e-14)


def test_kd_is_zero_for_equal_logits_and_rejects_shape_mismatch():
    x = torch.randn(3, 6)
    assert KDLoss()(x, x).item() == pytest.approx(0.0, abs=1e-6)
    with pytest.raises(ValueError, match="same"):
        KDLoss()(torch.randn(3, 6), torch.randn(3, 5))


# ----------------------------------------------------------------------------- shared contract

D_S, D_T = 5, 7
FACTORIES = {
    "relaxed_contrastive": lambda: RelaxedContrastiveLoss(),
    "relaxed_contrastive_blocked": lambda: RelaxedContrastiveLoss(block_size=3),
    "relaxed_ms": lambda: RelaxedMSLoss(views=2),
    "rkd": lambda: RKDLoss(chunk_size=3),
    "pkt": lambda: PKTLoss(),
    "darkrank": lambda: DarkRankLoss(),
    "regression": lambda: RegressionLoss(student_dim=D_S, teacher_dim=D_T),
}


def test_every_config_choice_builds_its_loss_from_the_registry():
    """transfer.loss offers exactly the registered losses, and the registry builds each from the
    defaults the config resolves (a loss added to one but not the other fails here)."""
    import typing

    from ssl_transfer.config import TransferConfig, config_from_dict
    from ssl_transfer.losses import build_loss

    choices = set(typing.get_args(typing.get_type_hints(TransferConfig)["loss"]))
    assert choices == set(LOSSES) and KDLoss not in LOSSES.values()
    g = torch.Generator().manual_seed(5)
    s, t = torch.randn(8, D_S, generator=g), torch.randn(8, D_T, generator=g)
    for name in sorted(choices):
        args = config_from_dict({"transfer": {"loss": name}}).transfer.loss_args
        loss = build_loss(name, args, student_dim=D_S, teacher_dim=D_T, views=2)
        assert isinstance(loss, LOSSES[name]) and torch.isfinite(loss(s, t))


@pytest.mark.parametrize("name", sorted(FACTORIES))
def test_teacher_gets_no_gradient(name):
    g = torch.Generator().manual_seed(8)
    s = torch.randn(10, D_S, generator=g, requires_grad=True)
    t = torch.randn(10, D_T, generator=g, requires_grad=True)
    loss = FACTORIES[name]()(s, t)
    loss.backward()
    assert t.grad is None
    assert s.grad is not None and s.grad.abs().sum() > 0


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("kind", ["identical", "zero"])
@pytest.mark.parametrize("name", sorted(FACTORIES))
def test_degenerate_student_gives_finite_value_and_gradient(name, kind, dtype):
    n = 10
    s = (torch.full((n, D_S), 3.0) if kind == "identical" else torch.zeros(n, D_S)).to(dtype).requires_grad_()
    t = torch.randn(n, D_T, generator=torch.Generator().manual_seed(9), dtype=dtype)
    loss = FACTORIES[name]()(s, t)
    loss.backward()
    assert loss.dtype == dtype
    assert torch.isfinite(loss) and torch.isfinite(s.grad).all()


@pytest.mark.parametrize("name", sorted(FACTORIES))
def test_float32_matches_float64(name):
    g = torch.Generator().manual_seed(10)
    s, t = 0.5 * torch.randn(24, D_S, generator=g), torch.randn(24, D_T, generator=g)
    torch.manual_seed(0)
    fn = FACTORIES[name]()
    l32, l64 = fn(s, t), fn(s.double(), t.double())
    assert l32.dtype == torch.float32 and l64.dtype == torch.float64
    assert l32.item() == pytest.approx(l64.item(), rel=1e-4)


@pytest.mark.parametrize("name", sorted(set(FACTORIES) - {"regression"}))
def test_pairwise_losses_reject_bad_shapes(name):
    fn = FACTORIES[name]()
    with pytest.raises(ValueError, match="same n"):
        fn(torch.randn(6, D_S), torch.randn(8, D_T))
    with pytest.raises(ValueError, match="matrices"):
        fn(torch.randn(6), torch.randn(6, D_T))


@pytest.mark.parametrize("cls,bad", [
    (RelaxedMSLoss, dict(scale_pos=0.0)), (RelaxedMSLoss, dict(sigma=-1.0)),
    (RKDLoss, dict(dist_weight=0.0, angle_weight=0.0)), (RKDLoss, dict(chunk_size=0)),
    (PKTLoss, dict(eps=0.0)), (DarkRankLoss, dict(k=0)), (DarkRankLoss, dict(alpha=0.0)),
    (KDLoss, dict(temperature=0.0)), (RelaxedContrastiveLoss, dict(block_size=0)),
])
def test_rejects_bad_hyper_parameters(cls, bad):
    with pytest.raises(ValueError):
        cls(**bad)


@pytest.mark.parametrize("amp_dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("name", sorted(FACTORIES))
def test_autocast_does_not_reach_the_losses(name, amp_dtype):
    """Under mixed precision (trainer.precision 16-mixed / bf16-mixed the training step runs in
    autocast) every loss still computes in float32: the value and the gradient are bit-identical
    to the same call without autocast, on clustered embeddings whose small pairwise differences
    half-precision Gram distances would lose."""
    g = torch.Generator().manual_seed(11)
    s0 = torch.randn(4, D_S, generator=g).repeat(8, 1) + 1e-2 * torch.randn(32, D_S, generator=g)
    t = torch.randn(4, D_T, generator=g).repeat(8, 1) + 1e-2 * torch.randn(32, D_T, generator=g)
    results = []
    for amp in (False, True):
        torch.manual_seed(0)  # RegressionLoss's projection
        fn = FACTORIES[name]()
        s = s0.clone().requires_grad_()
        with torch.autocast("cpu", dtype=amp_dtype, enabled=amp):
            loss = fn(s, t)
        loss.backward()
        results.append((loss.detach(), s.grad))
    (l_ref, g_ref), (l_amp, g_amp) = results
    assert l_amp.dtype == torch.float32
    assert torch.equal(l_amp, l_ref) and torch.equal(g_amp, g_ref)
