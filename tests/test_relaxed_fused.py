"""The dense RelaxedContrastiveLoss (hand-written gradient, docs/speed.md) equals autograd on
the formula: values and gradients, on clamped pairs, at extreme scales, with and without grad."""

import pytest
import torch
import torch.nn.functional as F

from ssl_transfer.losses import RelaxedContrastiveLoss
from ssl_transfer.losses.relaxed import (
    relaxed_contrastive_loss,
    row_normalised_distances,
    teacher_relaxed_labels,
)


def autograd_loss(student, teacher, sigma, delta):
    """The formula composed from the public helpers, differentiated by autograd."""
    w = teacher_relaxed_labels(teacher.detach(), sigma)
    d = row_normalised_distances(student)
    w = w.to(d.dtype)
    terms = w * d.pow(2) + (1.0 - w) * F.relu(delta - d).pow(2)
    return torch.where(d > 0, terms, torch.zeros_like(d)).sum() / d.shape[0]


def both(s, t, sigma=1.0, delta=1.0):
    out = []
    for fn in (RelaxedContrastiveLoss(sigma=sigma, delta=delta), lambda a, b: autograd_loss(a, b, sigma, delta)):
        x = s.clone().requires_grad_()
        loss = fn(x, t)
        loss.backward()
        out.append((loss.detach(), x.grad))
    return out


@pytest.mark.parametrize("n,d_s,d_t,sigma,delta", [(2, 3, 4, 1.0, 1.0), (40, 8, 16, 3.0, 1.0),
                                                   (130, 32, 8, 0.5, 0.6), (64, 100, 3, 1.0, 2.0),
                                                   (301, 16, 24, 3.0, 1.0)])  # n >= 128: symmetric Gram
def test_value_and_gradient_equal_autograd_float64(n, d_s, d_t, sigma, delta):
    g = torch.Generator().manual_seed(n)
    s, t = torch.randn(n, d_s, generator=g, dtype=torch.float64), torch.randn(n, d_t, generator=g, dtype=torch.float64)
    (l1, g1), (l2, g2) = both(s, t, sigma, delta)
    torch.testing.assert_close(l1, l2, rtol=1e-12, atol=0)
    torch.testing.assert_close(g1, g2, rtol=1e-9, atol=1e-13)


def test_gradcheck():
    g = torch.Generator().manual_seed(0)
    s, t = torch.randn(9, 4, generator=g, dtype=torch.float64), torch.randn(9, 5, generator=g, dtype=torch.float64)
    fn = RelaxedContrastiveLoss(sigma=2.0, delta=1.2)
    assert torch.autograd.gradcheck(lambda x: fn(x, t), (s.requires_grad_(),))


@pytest.mark.parametrize("n", [12, 200])
def test_duplicate_rows_take_the_clamp_gradient_of_autograd(n):
    """Pairs of identical student rows hit the 1e-12 clamp: no gradient through them."""
    g = torch.Generator().manual_seed(1)
    s = torch.randn(n, 5, generator=g, dtype=torch.float64)
    s[3], s[7], s[8], s[n - 1] = s[0], s[0], s[5], s[5]
    t = torch.randn(n, 6, generator=g, dtype=torch.float64)
    (l1, g1), (l2, g2) = both(s, t, sigma=3.0)
    torch.testing.assert_close(l1, l2, rtol=1e-12, atol=0)
    torch.testing.assert_close(g1, g2, rtol=1e-9, atol=1e-13)


@pytest.mark.parametrize("scale", [0.0, 1e-30, 1e-12, 1e12, 1e25])
def test_extreme_scales_follow_the_safe_path(scale):
    g = torch.Generator().manual_seed(2)
    s, t = torch.randn(16, 6, generator=g), torch.randn(16, 5, generator=g)
    (l1, g1), (l2, g2) = both(s * scale, t, sigma=3.0)
    assert torch.isfinite(l1) and torch.isfinite(g1).all()
    torch.testing.assert_close(l1, l2, rtol=1e-5, atol=0)
    torch.testing.assert_close(g1, g2, rtol=1e-4, atol=1e-6 * max(g2.abs().max().item(), 1e-30))


def test_no_grad_and_low_precision_inputs():
    g = torch.Generator().manual_seed(3)
    s, t = torch.randn(30, 8, generator=g), torch.randn(30, 8, generator=g)
    fn = RelaxedContrastiveLoss()
    with torch.no_grad():
        ref = fn(s.clone().requires_grad_(), t)
    assert not ref.requires_grad
    x = s.to(torch.bfloat16).requires_grad_()
    loss = fn(x, t.to(torch.bfloat16))
    loss.backward()
    assert loss.dtype == torch.float32 and x.grad.dtype == torch.bfloat16
    assert loss.item() == pytest.approx(autograd_loss(x.detach(), t.to(torch.bfloat16), 1.0, 1.0).item(), rel=1e-5)


def test_backward_keeps_one_square_matrix():
    n = 64
    s, t = torch.randn(n, 4).requires_grad_(), torch.randn(n, 8)
    sizes = []
    with torch.autograd.graph.saved_tensors_hooks(lambda x: sizes.append(x.numel()) or x, lambda x: x):
        loss = RelaxedContrastiveLoss()(s, t)
    loss.backward()
    assert sum(v for v in sizes if v >= n * n) == n * n


def test_autograd_composition_equals_the_formula_function():
    g = torch.Generator().manual_seed(5)
    s, t = torch.randn(20, 4, generator=g, dtype=torch.float64), torch.randn(20, 6, generator=g, dtype=torch.float64)
    torch.testing.assert_close(relaxed_contrastive_loss(s, t, 2.0, 0.8), autograd_loss(s, t, 2.0, 0.8),
                               rtol=1e-14, atol=0)


@pytest.mark.parametrize("extra_term", [False, True])
def test_second_derivative_raises_instead_of_being_wrong(extra_term):
    """The hand-written backward saves P + Pᵀ as a constant: differentiating the gradient again
    would be wrong (before: a Hessian-vector product off by 0.72 where the formula's largest
    entry is 0.61, or, next to a twice-differentiable term, silently missing the loss's part).
    It raises RuntimeError, also when the incoming gradient needs no grad and when other terms
    of the graph are differentiated twice."""
    g = torch.Generator().manual_seed(0)
    s, t = torch.randn(8, 3, generator=g, dtype=torch.float64), torch.randn(8, 4, generator=g, dtype=torch.float64)
    x = s.clone().requires_grad_()
    loss = RelaxedContrastiveLoss()(x, t)
    if extra_term:
        loss = loss + (x ** 3).sum()
    (grad,) = torch.autograd.grad(loss, x, create_graph=True)
    with pytest.raises(RuntimeError, match="differentiated twice"):
        torch.autograd.grad((grad * torch.randn_like(grad)).sum(), x)
    # .backward(create_graph=True) then a second backward through x.grad
    y = s.clone().requires_grad_()
    RelaxedContrastiveLoss()(y, t).backward(create_graph=True)
    with pytest.raises(RuntimeError, match="differentiated twice"):
        y.grad.pow(2).sum().backward()


def test_create_graph_first_derivative_is_unchanged():
    """create_graph=True alone still gives the right (first-order) gradient."""
    g = torch.Generator().manual_seed(1)
    s, t = torch.randn(10, 3, generator=g, dtype=torch.float64), torch.randn(10, 4, generator=g, dtype=torch.float64)
    x = s.clone().requires_grad_()
    (g1,) = torch.autograd.grad(RelaxedContrastiveLoss()(x, t), x, create_graph=True)
    (g2,) = torch.autograd.grad(relaxed_contrastive_loss(x, t), x)
    torch.testing.assert_close(g1.detach(), g2, rtol=1e-10, atol=1e-14)
