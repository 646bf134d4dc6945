"""RelaxedContrastiveLoss against an independent, loop-based re-computation of METHOD.md."""

import math

import numpy as np
import pytest
import torch

from ssl_transfer.losses import RelaxedContrastiveLoss


def reference_loss(s: np.ndarray, t: np.ndarray, sigma: float, delta: float) -> float:
    """METHOD.md, written out pair by pair in float64 with plain Python loops."""
    n = s.shape[0]
    t_hat = [t[i] / math.sqrt(sum(v * v for v in t[i])) for i in range(n)]
    D = [[0.0] * n for _ in range(n)]
    for i in range(n):
        for j in range(n):
            if i != j:
                sq = sum((a - b) ** 2 for a, b in zip(s[i], s[j]))
                D[i][j] = math.sqrt(max(sq, 1e-12))
    total = 0.0
    for i in range(n):
        row_mean = sum(D[i]) / n
        for j in range(n):
            if i == j:
                continue
            d = D[i][j] / row_mean
            if d <= 0:
                continue
            w = math.exp(-sum((a - b) ** 2 for a, b in zip(t_hat[i], t_hat[j])) / sigma)
            total += w * d * d + (1 - w) * max(0.0, delta - d) ** 2
    return total / n


def numeric_grad(s: np.ndarray, t: np.ndarray, sigma: float, delta: float, h: float = 1e-6) -> np.ndarray:
    g = np.zeros_like(s)
    for idx in np.ndindex(*s.shape):
        sp, sm = s.copy(), s.copy()
        sp[idx] += h
        sm[idx] -= h
        g[idx] = (reference_loss(sp, t, sigma, delta) - reference_loss(sm, t, sigma, delta)) / (2 * h)
    return g


@pytest.mark.parametrize("n,d_s,d_t,sigma,delta", [
    (2, 3, 5, 1.0, 1.0),
    (5, 4, 4, 1.0, 1.0),
    (7, 3, 6, 3.0, 1.0),
    (6, 8, 2, 0.5, 0.7),
    (9, 5, 3, 1.0, 1.5),
])
def test_value_and_gradient_match_reference(n, d_s, d_t, sigma, delta):
    rng = np.random.default_rng(n * 100 + d_s)
    s = rng.normal(size=(n, d_s))
    # clustered teacher so that w spans (0, 1) instead of being ~0 everywhere
    t = rng.normal(size=(3, d_t))[rng.integers(0, 3, n)] + 0.5 * rng.normal(size=(n, d_t))
    student = torch.tensor(s, dtype=torch.float64, requires_grad=True)
    loss = RelaxedContrastiveLoss(sigma=sigma, delta=delta)(student, torch.tensor(t))
    loss.backward()
    assert loss.item() == pytest.approx(reference_loss(s, t, sigma, delta), rel=1e-10, abs=1e-12)
    np.testing.assert_allclose(student.grad.numpy(), numeric_grad(s, t, sigma, delta), rtol=1e-5, atol=1e-7)


def test_float32_matches_float64():
    g = torch.Generator().manual_seed(0)
    s, t = torch.randn(64, 32, generator=g), torch.randn(64, 128, generator=g)
    fn = RelaxedContrastiveLoss(sigma=1.0, delta=1.0)
    l32, l64 = fn(s, t), fn(s.double(), t.double())
    assert l32.dtype == torch.float32 and l64.dtype == torch.float64
    assert l32.item() == pytest.approx(l64.item(), rel=1e-5)


@pytest.mark.parametrize("scale", [1e-3, 0.1, 7.0, 1e3])
def test_invariant_to_global_scale_of_student(scale):
    g = torch.Generator().manual_seed(1)
    s, t = torch.randn(32, 16, generator=g, dtype=torch.float64), torch.randn(32, 8, generator=g, dtype=torch.float64)
    fn = RelaxedContrastiveLoss(sigma=1.0, delta=1.0)
    assert fn(scale * s, t).item() == pytest.approx(fn(s, t).item(), rel=1e-9)


def test_teacher_scale_does_not_matter_but_teacher_gets_no_gradient():
    g = torch.Generator().manual_seed(2)
    s, t = torch.randn(16, 8, generator=g), torch.randn(16, 8, generator=g, requires_grad=True)
    fn = RelaxedContrastiveLoss()
    loss = fn(s.requires_grad_(), t)
    loss.backward()
    assert t.grad is None
    assert fn(s, 5 * t.detach()).item() == pytest.approx(loss.item(), rel=1e-6)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("kind", ["identical", "zero"])
def test_degenerate_student_gives_finite_loss_and_gradient(kind, dtype):
    n = 10
    s = torch.ones(n, 4, dtype=dtype) * 3.0 if kind == "identical" else torch.zeros(n, 4, dtype=dtype)
    s.requires_grad_()
    t = torch.randn(n, 6, generator=torch.Generator().manual_seed(3), dtype=dtype)
    loss = RelaxedContrastiveLoss()(s, t)
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(s.grad).all()
    # all off-diagonal normalised distances equal n / (n - 1)
    d = n / (n - 1)
    w = torch.exp(-(torch.cdist(*(2 * [torch.nn.functional.normalize(t.double(), dim=1)])) ** 2))
    off = ~torch.eye(n, dtype=torch.bool)
    expected = (w * d * d + (1 - w) * max(0.0, 1 - d) ** 2)[off].sum() / n
    assert loss.item() == pytest.approx(expected.item(), rel=1e-5)


def test_zero_weight_pairs_are_not_pulled():
    """Teacher embeddings orthogonal in a tiny sigma: w ~ 0, so only the push term acts."""
    s = torch.tensor([[0.0, 0.0], [3.0, 0.0], [0.0, 4.0]], dtype=torch.float64, requires_grad=True)
    t = torch.eye(3, dtype=torch.float64)
    loss = RelaxedContrastiveLoss(sigma=1e-3, delta=0.1)(s, t)  # every D̃ > 0.1: push inactive
    loss.backward()
    assert loss.item() == pytest.approx(0.0, abs=1e-300)
    assert torch.count_nonzero(s.grad) == 0


def test_identical_teacher_pairs_are_pure_pull():
    s = torch.randn(6, 3, dtype=torch.float64)
    t = torch.ones(6, 5, dtype=torch.float64)  # w = 1 everywhere
    loss = RelaxedContrastiveLoss()(s, t)
    d = torch.cdist(s, s)
    d = d / d.mean(1, keepdim=True)
    assert loss.item() == pytest.approx((d ** 2).sum().item() / 6, rel=1e-10)


@pytest.mark.parametrize("bad", [dict(sigma=0.0), dict(sigma=-1.0), dict(delta=0.0)])
def test_rejects_non_positive_hyper_parameters(bad):
    with pytest.raises(ValueError):
        RelaxedContrastiveLoss(**bad)


def test_rejects_mismatched_shapes():
    fn = RelaxedContrastiveLoss()
    with pytest.raises(ValueError, match="same n"):
        fn(torch.randn(4, 3), torch.randn(5, 3))
    with pytest.raises(ValueError, match="at least 2"):
        fn(torch.randn(1, 3), torch.randn(1, 3))
    with pytest.raises(ValueError, match="matrices"):
        fn(torch.randn(4), torch.randn(4, 3))


@pytest.mark.parametrize("scale", [1e-30, 1e25])
@pytest.mark.parametrize("block_size", [None, 5])
def test_extreme_scales_stay_finite_and_equal(scale, block_size):
    """float32: squared norms of 1e25-scaled embeddings overflow; the loss is computed at unit
    scale, so value and (rescaled) gradient equal those at scale 1."""
    g = torch.Generator().manual_seed(4)
    s, t = torch.randn(12, 6, generator=g), torch.randn(12, 5, generator=g)
    fn = RelaxedContrastiveLoss(sigma=3.0, block_size=block_size)
    x1 = s.clone().requires_grad_()
    ref = fn(x1, t)
    ref.backward()
    xs = (s * scale).requires_grad_()
    loss = fn(xs, t)
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(xs.grad).all()
    assert loss.item() == pytest.approx(ref.item(), rel=1e-5)
    torch.testing.assert_close(xs.grad * scale, x1.grad, rtol=1e-4, atol=1e-6)


def test_gradient_is_orthogonal_to_the_embedding():
    """Scale invariance (Euler): <∇L(s), s> = 0, so plain SGD steps can only grow ||s||."""
    s = torch.randn(10, 4, dtype=torch.float64, requires_grad=True)
    RelaxedContrastiveLoss(sigma=3.0)(s, torch.randn(10, 7, dtype=torch.float64)).backward()
    assert abs((s.grad * s.detach()).sum().item()) < 1e-10
