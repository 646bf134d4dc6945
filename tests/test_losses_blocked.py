"""RelaxedContrastiveLoss(block_size=B) equals the dense computation (values and gradients).

The n = 8192, d = 512 memory check lives in bench/loss_memory.py (docs/loss_memory.md).
"""

import pytest
import torch

from ssl_transfer.losses import RelaxedContrastiveLoss
from ssl_transfer.losses.relaxed import relaxed_contrastive_loss


def clustered(n, d_s, d_t, seed, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    centres = torch.randn(6, d_t, generator=g, dtype=dtype)
    t = centres[torch.randint(0, 6, (n,), generator=g)] + 0.5 * torch.randn(n, d_t, generator=g, dtype=dtype)
    return torch.randn(n, d_s, generator=g, dtype=dtype), t


def value_and_grad(fn, s, t):
    x = s.clone().requires_grad_()
    loss = fn(x, t)
    loss.backward()
    return loss.detach(), x.grad


@pytest.mark.parametrize("n,block", [(20, 1), (300, 37), (300, 128), (300, 300), (300, 1000)])
@pytest.mark.parametrize("sigma,delta", [(1.0, 1.0), (3.0, 0.7)])
def test_blocked_equals_dense_in_float64(n, block, sigma, delta):
    s, t = clustered(n, 16, 24, seed=block)
    dense = value_and_grad(RelaxedContrastiveLoss(sigma=sigma, delta=delta), s, t)
    blocked = value_and_grad(RelaxedContrastiveLoss(sigma=sigma, delta=delta, block_size=block), s, t)
    torch.testing.assert_close(blocked[0], dense[0], rtol=1e-12, atol=0)
    torch.testing.assert_close(blocked[1], dense[1], rtol=1e-9, atol=1e-15)


def test_blocked_float32_matches_dense_float64_on_a_larger_batch():
    s, t = clustered(768, 48, 96, seed=0)
    dense64 = value_and_grad(RelaxedContrastiveLoss(), s, t)
    blocked32 = value_and_grad(RelaxedContrastiveLoss(block_size=256), s.float(), t.float())
    assert blocked32[0].dtype == torch.float32
    assert blocked32[0].item() == pytest.approx(dense64[0].item(), rel=1e-5)
    torch.testing.assert_close(blocked32[1].double(), dense64[1], rtol=1e-3, atol=1e-4 * dense64[1].abs().max().item())


def test_blocked_gradient_passes_gradcheck():
    s, t = clustered(12, 3, 5, seed=1)
    fn = RelaxedContrastiveLoss(block_size=5)
    assert torch.autograd.gradcheck(lambda x: fn(x, t), (s.clone().requires_grad_(),))


def test_blocked_autograd_stores_no_square_matrix():
    """After the forward only the (n, d) inputs are held for backward (blocks are recomputed);
    the dense path holds (n, n) matrices. Guards against the blocked path silently going dense."""
    n, d_s, d_t = 96, 4, 8
    s, t = clustered(n, d_s, d_t, seed=2)
    s.requires_grad_()
    for block, small in ((16, True), (None, False)):
        sizes = []
        with torch.autograd.graph.saved_tensors_hooks(lambda x, sizes=sizes: sizes.append(x.numel()) or x,
                                                      lambda x: x):
            loss = RelaxedContrastiveLoss(block_size=block)(s, t)
        loss.backward()
        assert (max(sizes) <= n * max(d_s, d_t)) is small


def test_blocked_without_grad_and_with_degenerate_student():
    s, t = clustered(50, 4, 6, seed=3)
    with torch.no_grad():
        assert RelaxedContrastiveLoss(block_size=8)(s, t).item() == pytest.approx(
            RelaxedContrastiveLoss()(s, t).item(), rel=1e-12)
    same = torch.ones(50, 4, dtype=torch.float64, requires_grad=True)
    loss = RelaxedContrastiveLoss(block_size=8)(same, t)
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(same.grad).all()
    assert loss.item() == pytest.approx(RelaxedContrastiveLoss()(same.detach(), t).item(), rel=1e-12)


@pytest.mark.parametrize("bad", [0, -3, 2.5, True])
def test_rejects_bad_block_size(bad):
    with pytest.raises(ValueError, match="block_size"):
        RelaxedContrastiveLoss(block_size=bad)


@pytest.mark.parametrize("block", [3, 50])  # 3: checkpointed blocks; 50 >= n: one plain block
def test_blocked_second_derivative_equals_the_formula(block):
    """The blocked path is pure autograd: Hessian-vector products equal those of the plain
    formula function (float64)."""
    s, t = clustered(8, 3, 4, seed=4)
    v = torch.randn(8, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(5))
    hvps = []
    for fn in (RelaxedContrastiveLoss(block_size=block), relaxed_contrastive_loss):
        x = s.clone().requires_grad_()
        (grad,) = torch.autograd.grad(fn(x, t), x, create_graph=True)
        (hvp,) = torch.autograd.grad((grad * v).sum(), x)
        hvps.append(hvp)
    assert hvps[1].abs().max() > 0.1
    torch.testing.assert_close(hvps[0], hvps[1], rtol=1e-9, atol=1e-12)
