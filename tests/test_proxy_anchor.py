"""Proxy-Anchor loss (ssl_transfer.losses.proxy_anchor) against the paper's formula."""

import copy
import math
import pickle

import pytest
import torch

from ssl_transfer.losses.proxy_anchor import ProxyAnchorLoss


def paper_loss(x, labels, proxies, margin, alpha):
    """Kim et al. 2020, eq. 4, term by term with Python loops (float64)."""
    xn = x / x.norm(dim=1, keepdim=True)
    pn = proxies / proxies.norm(dim=1, keepdim=True)
    n, c = x.shape[0], proxies.shape[0]
    with_pos = sorted(set(labels.tolist()))
    pos = 0.0
    for p in with_pos:
        pos = pos + torch.log(1 + sum(torch.exp(-alpha * (xn[i] @ pn[p] - margin))
                                      for i in range(n) if labels[i] == p))
    neg = 0.0
    for p in range(c):
        terms = [torch.exp(alpha * (xn[i] @ pn[p] + margin)) for i in range(n) if labels[i] != p]
        if terms:  # else log(1 + 0) = 0
            neg = neg + torch.log(1 + sum(terms))
    return pos / len(with_pos) + neg / c


def inputs(n=12, d=6, c=5, seed=0, labels=None):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, d, generator=g, dtype=torch.float64)
    if labels is None:
        labels = torch.randint(0, c, (n,), generator=g)
    return x, torch.as_tensor(labels)


@pytest.mark.parametrize("margin, alpha", [(0.1, 32.0), (0.3, 4.0), (0.0, 1.0)])
def test_value_and_gradients_equal_the_paper_formula(margin, alpha):
    torch.manual_seed(1)
    loss = ProxyAnchorLoss(num_classes=5, embed_dim=6, margin=margin, alpha=alpha).double()
    x, y = inputs()
    x.requires_grad_(True)
    got = loss(x, y)
    gx, gp = torch.autograd.grad(got, [x, loss.proxies])
    proxies = loss.proxies.detach().clone().requires_grad_(True)
    x2 = x.detach().clone().requires_grad_(True)
    want = paper_loss(x2, y, proxies, margin, alpha)
    wx, wp = torch.autograd.grad(want, [x2, proxies])
    assert got.dtype == torch.float64 and got.ndim == 0
    torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(gx, wx, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(gp, wp, rtol=1e-10, atol=1e-12)


def test_classes_absent_from_the_batch():
    """|P⁺| counts only proxies with positives; the negative term still runs over all C
    proxies, so absent classes' proxies are pushed away from the batch."""
    torch.manual_seed(2)
    loss = ProxyAnchorLoss(num_classes=10, embed_dim=4).double()
    x, y = inputs(n=9, d=4, labels=[0, 3, 7, 0, 3, 7, 7, 0, 3])
    got = loss(x, y)
    (gp,) = torch.autograd.grad(got, [loss.proxies])
    torch.testing.assert_close(got, paper_loss(x, y, loss.proxies.detach(), 0.1, 32.0), rtol=1e-12, atol=1e-12)
    absent = [c for c in range(10) if c not in (0, 3, 7)]
    assert (gp[absent].abs().sum(1) > 0).all()
    one_class = loss(x[:3], torch.tensor([5, 5, 5]))  # proxy 5 has no negatives; |P⁺| = 1
    torch.testing.assert_close(one_class, paper_loss(x[:3], torch.tensor([5, 5, 5]), loss.proxies.detach(), 0.1, 32.0))


def test_large_alpha_stays_finite_in_float32():
    loss = ProxyAnchorLoss(num_classes=3, embed_dim=4, alpha=1000.0)
    x = torch.randn(6, 4, requires_grad=True)
    value = loss(x, torch.tensor([0, 0, 1, 1, 2, 2]))
    value.backward()
    assert torch.isfinite(value) and torch.isfinite(x.grad).all() and torch.isfinite(loss.proxies.grad).all()


def test_proxies_parameter_init_and_state_dict():
    torch.manual_seed(0)
    loss = ProxyAnchorLoss(num_classes=200, embed_dim=512)
    assert isinstance(loss.proxies, torch.nn.Parameter) and loss.proxies.shape == (200, 512)
    assert [name for name, _ in loss.named_parameters()] == ["proxies"]
    assert list(loss.state_dict()) == ["proxies"]
    # kaiming_normal_(mode='fan_out') on (C, d): N(0, 2 / C)
    assert abs(loss.proxies.std().item() - math.sqrt(2 / 200)) < 0.03 * math.sqrt(2 / 200)
    assert abs(loss.proxies.mean().item()) < 0.003


def test_proxies_keep_their_dtype_and_autocast_is_off():
    torch.manual_seed(0)
    loss = ProxyAnchorLoss(num_classes=4, embed_dim=8)
    x, y = inputs(n=8, d=8, c=4)
    ref = loss(x.float(), y)
    half = loss(x.to(torch.bfloat16), y)  # pml alone would turn the proxies into bfloat16 for good
    assert loss.proxies.dtype == torch.float32 and half.dtype == torch.float32
    with torch.autocast("cpu", dtype=torch.bfloat16):
        auto = loss(x.float(), y)
    assert auto.dtype == torch.float32
    torch.testing.assert_close(auto, ref)
    torch.testing.assert_close(half, ref, rtol=2e-2, atol=2e-2)  # only the inputs' rounding differs


def test_copies_and_pickles_with_the_proxies_shared():
    loss = ProxyAnchorLoss(num_classes=3, embed_dim=4)
    x, y = inputs(n=6, d=4, c=3)
    for other in (copy.deepcopy(loss), pickle.loads(pickle.dumps(loss))):
        torch.testing.assert_close(other(x.float(), y), loss(x.float(), y))
        with torch.no_grad():
            other.proxies.mul_(2)
        assert not torch.equal(other.proxies, loss.proxies)


def test_bad_inputs_give_clear_errors():
    loss = ProxyAnchorLoss(num_classes=5, embed_dim=6)
    x = torch.randn(4, 6)
    with pytest.raises(ValueError, match=r"embeddings must be \(n, 6\) with n >= 1, got \(4, 3\)"):
        loss(torch.randn(4, 3), torch.zeros(4, dtype=torch.long))
    with pytest.raises(ValueError, match=r"got \(0, 6\)"):
        loss(torch.randn(0, 6), torch.zeros(0, dtype=torch.long))
    with pytest.raises(ValueError, match=r"labels must be \(4,\), one per embedding, got \(3,\)"):
        loss(x, torch.zeros(3, dtype=torch.long))
    with pytest.raises(ValueError, match="labels must be integer class indices"):
        loss(x, torch.zeros(4))
    with pytest.raises(ValueError, match=r"labels must lie in \[0, 5\).*got values in \[0, 5\]"):
        loss(x, torch.tensor([0, 1, 2, 5]))
    with pytest.raises(ValueError, match=r"got values in \[-1, 2\]"):
        loss(x, torch.tensor([0, -1, 2, 2]))
    with pytest.raises(ValueError, match="num_classes and embed_dim must be at least 1"):
        ProxyAnchorLoss(num_classes=0, embed_dim=6)
    with pytest.raises(ValueError, match="alpha .* must be > 0"):
        ProxyAnchorLoss(num_classes=3, embed_dim=6, alpha=0.0)
