"""RelaxedContrastiveLoss against an independent, loop-based re-computation of METHOD.md."""

import math

import numpy as np
import pytest
import torch

from ssl_transfer.losses import RelaxedContrastiveLoss
from ssl_transfer.losses.relaxed import relaxed_contrastive_loss, teacher_relaxed_labels
from ssl_transfer.losses.relaxed_fused import relaxed_labels_fused


def reference_loss(s: np.ndarray, t: np.ndarray, sigma: float, delta: float) -> float:
    """METHOD.md, written out pair by pair in float64 with plain Python loops."""
    n = s.shape[0]
    norms = [math.sqrt(sum(v * v for v in t[i])) for i in range(n)]
    # an all-zero teacher row stays at the origin (the documented convention)
    t_hat = [t[i] / norms[i] if norms[i] > 0 else 0.0 * t[i] for i in range(n)]
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


# ----------------------------------------------------------------------------- the formula function


@pytest.mark.parametrize("n,d_s,d_t,sigma,delta", [(2, 3, 5, 1.0, 1.0), (7, 3, 6, 3.0, 1.0), (9, 5, 3, 1.0, 1.5)])
def test_formula_function_matches_reference(n, d_s, d_t, sigma, delta):
    """relaxed.py's plain autograd formula equals the loop-based reference (value, gradient)."""
    rng = np.random.default_rng(n * 10 + d_t)
    s = rng.normal(size=(n, d_s))
    t = rng.normal(size=(3, d_t))[rng.integers(0, 3, n)] + 0.5 * rng.normal(size=(n, d_t))
    student = torch.tensor(s, requires_grad=True)
    loss = relaxed_contrastive_loss(student, torch.tensor(t), sigma=sigma, delta=delta)
    loss.backward()
    assert loss.item() == pytest.approx(reference_loss(s, t, sigma, delta), rel=1e-10, abs=1e-12)
    np.testing.assert_allclose(student.grad.numpy(), numeric_grad(s, t, sigma, delta), rtol=1e-5, atol=1e-7)


# ----------------------------------------------------------------------------- common offset


PATHS = {
    "dense": RelaxedContrastiveLoss(sigma=3.0),
    "blocked": RelaxedContrastiveLoss(sigma=3.0, block_size=16),
    "formula": lambda s, t: relaxed_contrastive_loss(s, t, sigma=3.0),
}


@pytest.mark.parametrize("path", sorted(PATHS))
@pytest.mark.parametrize("offset", [100.0, 1000.0])
def test_float32_with_a_large_common_offset_matches_float64(path, offset):
    """The loss is translation invariant; embeddings sharing a large common offset lose their
    differences to cancellation in the Gram form ||s_i||² + ||s_j||² - 2 s_i·s_j unless the
    batch mean is subtracted first (before: gradient errors 5e-3 at 100x, 0.49 at 1000x)."""
    g = torch.Generator().manual_seed(5)
    n, d = 64, 16
    s32 = (torch.randn(n, d, generator=g) + offset * torch.randn(1, d, generator=g)).float()
    t = torch.randn(4, 8, generator=g)[torch.randint(0, 4, (n,), generator=g)] + 0.5 * torch.randn(n, 8, generator=g)
    fn = PATHS[path]
    out = []
    for x in (s32.clone(), s32.double()):  # the same float32 values, computed in float32 / float64
        x.requires_grad_()
        loss = fn(x, t.to(x.dtype))
        loss.backward()
        out.append((loss.item(), x.grad.double()))
    (l32, g32), (l64, g64) = out
    assert l32 == pytest.approx(l64, rel=1e-4)
    assert (g32 - g64).abs().max().item() <= 1e-4 * g64.abs().max().item()


@pytest.mark.parametrize("block_size", [None, 5])
def test_near_overflow_scale_is_computed_at_unit_scale(block_size):
    """Entries near the float32 maximum: the batch mean and the centring cannot overflow
    (the student is first scaled by an exact power of two)."""
    g = torch.Generator().manual_seed(6)
    s, t = torch.randn(12, 6, generator=g), torch.randn(12, 5, generator=g)
    s = s / s.abs().max()
    fn = RelaxedContrastiveLoss(block_size=block_size)
    x1, xs = s.clone().requires_grad_(), (s * 3e38).requires_grad_()
    ref, loss = fn(x1, t), fn(xs, t)
    (ref + loss).backward()
    assert torch.isfinite(loss) and torch.isfinite(xs.grad).all()
    assert loss.item() == pytest.approx(ref.item(), rel=1e-5)
    torch.testing.assert_close(xs.grad.double() * 3e38, x1.grad.double(), rtol=1e-4, atol=1e-6)


# ----------------------------------------------------------------------------- zero teacher rows


def teacher_with_zero_rows(n, d_t, seed):
    rng = np.random.default_rng(seed)
    t = rng.normal(size=(3, d_t))[rng.integers(0, 3, n)] + 0.5 * rng.normal(size=(n, d_t))
    t[1] = 0.0
    t[4] = 0.0
    return t


@pytest.mark.parametrize("path", sorted(PATHS))
def test_zero_teacher_rows_are_the_origin_on_every_path(path):
    """A zero teacher row is at distance 1 from every unit row (w = exp(-1/sigma)) and 0 from
    another zero row (w = 1), on every path (before: the Gram shortcut 2 - 2 t̂_i·t̂_j put it at
    distance 2 while the direct definition gives 1)."""
    n, d_s = 7, 3
    t = teacher_with_zero_rows(n, 4, seed=7)
    s = np.random.default_rng(8).normal(size=(n, d_s))
    student = torch.tensor(s, requires_grad=True)
    loss = PATHS[path](student, torch.tensor(t))
    loss.backward()
    assert loss.item() == pytest.approx(reference_loss(s, t, 3.0, 1.0), rel=1e-10)
    np.testing.assert_allclose(student.grad.numpy(), numeric_grad(s, t, 3.0, 1.0), rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("n", [7, 300])  # n >= 128: the fused labels use the symmetric Gram blocks
def test_relaxed_labels_agree_with_the_direct_definition_on_zero_rows(n):
    t = torch.tensor(teacher_with_zero_rows(n, 6, seed=n))
    t_hat = torch.nn.functional.normalize(t, dim=1)  # zero rows stay at the origin
    direct = torch.exp(-((t_hat[:, None, :] - t_hat[None, :, :]) ** 2).sum(-1) / 2.0)
    assert direct[1, 4] == 1.0 and direct[1, 0].item() == pytest.approx(math.exp(-0.5))
    torch.testing.assert_close(teacher_relaxed_labels(t, 2.0), direct, rtol=1e-12, atol=1e-14)
    torch.testing.assert_close(relaxed_labels_fused(t, 2.0), direct, rtol=1e-12, atol=1e-14)

