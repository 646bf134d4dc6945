"""The speed-ups keep the arithmetic: the probe's hand-written gradient equals autograd's on the
same objective; channels_last extraction gives the same features, really runs the stem in NHWC
and leaves the model's weights as they were; the training callback does the same around a fit;
``eval.linear_tol`` reaches the probe."""

import lightning as L
import pytest
import torch
import torch.nn.functional as F
import torchvision
from torch import nn

from linear_eval import extract_features, linear_probe
from linear_eval.linear import _objective_and_grad
from ssl_transfer.runtime import ChannelsLast


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_probe_objective_and_gradient_equal_autograd_on_the_formula(dtype):
    g = torch.Generator().manual_seed(0)
    n, d, k, reg = 300, 17, 5, 0.013
    x, y = torch.randn(n, d, generator=g, dtype=dtype), torch.randint(0, k, (n,), generator=g)
    Wt, b = torch.randn(k, d, generator=g, dtype=dtype) * 0.3, torch.randn(k, generator=g, dtype=dtype)
    loss, gWt, gb = _objective_and_grad(x, y, Wt, b, reg, torch.float64)
    W_ = Wt.double().clone().requires_grad_()
    b_ = b.double().clone().requires_grad_()
    ref = F.cross_entropy(x.double() @ W_.T + b_, y) + reg * W_.square().sum()  # independent: float64 autograd
    ref.backward()
    tol = 1e-12 if dtype == torch.float64 else 1e-5
    assert float(loss) == pytest.approx(float(ref), rel=tol)
    assert gWt.dtype == dtype and gb.dtype == dtype and gWt.shape == (k, d)
    assert torch.allclose(gWt.double(), W_.grad, atol=tol) and torch.allclose(gb.double(), b_.grad, atol=tol)


def _stem_net():
    torch.manual_seed(0)
    net = torchvision.models.resnet18(num_classes=8)
    net.conv1 = nn.Conv2d(1, 64, 7, 2, 3, bias=False)  # one input channel: both layouts "contiguous"
    return net


def test_channels_last_extraction_same_features_nhwc_stem_and_weights_put_back():
    net = _stem_net()
    loader = [(torch.randn(6, 1, 28, 28), torch.arange(6)) for _ in range(2)]
    weights = {name: (p.data_ptr(), p.stride()) for name, p in net.named_parameters()}
    seen = []
    hook = net.conv1.register_forward_hook(lambda m, i, o: seen.append((m.weight.stride(), o.is_contiguous(
        memory_format=torch.channels_last))))
    plain, y0 = extract_features(net, loader)
    nhwc, y1 = extract_features(net, loader, channels_last=True)
    hook.remove()
    assert torch.allclose(plain, nhwc, atol=1e-5) and torch.equal(y0, y1)
    assert seen[0] == ((49, 49, 7, 1), False)  # the default layout
    assert seen[-1] == ((49, 1, 7, 1), True)  # restrided stem: the network ran in NHWC
    for name, p in net.named_parameters():  # the very same memory, in its old layout
        assert (p.data_ptr(), p.stride()) == weights[name], name
    assert not nhwc.is_inference() and not plain.is_inference()  # usable as constants in a loss


class _Tiny(L.LightningModule):
    def __init__(self):
        super().__init__()
        self.net = _stem_net()
        self.strides = []

    def training_step(self, batch, batch_idx):
        self.strides.append(self.net.conv1.weight.stride())
        return self.net(batch[0]).square().mean()

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.01, momentum=0.9)


@pytest.mark.parametrize("channels_last", [False, True])
def test_channels_last_callback_trains_in_nhwc_and_restores_the_layout(channels_last):
    module = _Tiny()
    trainer = L.Trainer(accelerator="cpu", max_steps=2, logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False,
                        callbacks=[ChannelsLast()] if channels_last else [])
    data = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(torch.randn(8, 1, 28, 28)), batch_size=4)
    trainer.fit(module, data)
    assert module.strides == [(49, 1, 7, 1) if channels_last else (49, 49, 7, 1)] * 2
    assert all(p.is_contiguous() for p in module.parameters())  # default layout again after the fit


def test_linear_tol_stops_fits_at_that_gradient():
    g = torch.Generator().manual_seed(1)
    x, y = torch.randn(120, 6, generator=g), torch.randint(0, 3, (120,), generator=g)
    loose = linear_probe(x[:80], y[:80], x[80:], y[80:], Cs=[1.0], tol=2e-3)
    tight = linear_probe(x[:80], y[:80], x[80:], y[80:], Cs=[1.0], tol=1e-6)
    assert loose["params"]["tol"] == 2e-3 and tight["params"]["tol"] == 1e-6
    assert loose["fits"]["1.0"]["n_iter"] < tight["fits"]["1.0"]["n_iter"]
    assert loose["fits"]["1.0"]["grad_norm"] <= 2e-3 and tight["fits"]["1.0"]["grad_norm"] <= 1e-6


def test_eval_linear_tol_and_channels_last_reach_the_evaluation(monkeypatch, smoke):
    from ssl_transfer.config import load_config
    from ssl_transfer.data import DataBundle
    from ssl_transfer.evaluation import frozen

    cfg = load_config(smoke, ["eval.linear_tol=0.002", "trainer.channels_last=false", "data.eval_train_subset=40",
                              "data.val_size=20", "data.test_subset=20", "eval.knn_k=3"])
    bundle = DataBundle.from_config(cfg.data, cfg.seed)
    probe, extract = {}, []

    def fake_probe(*args, **kwargs):
        probe.update(kwargs)
        return {"test_acc": 0.5, "val_acc_best": 0.5}

    def spy_extract(*args, **kwargs):
        extract.append(kwargs["channels_last"])
        return extract_features(*args, **kwargs)

    monkeypatch.setattr(frozen, "linear_probe", fake_probe)
    monkeypatch.setattr(frozen, "extract_features", spy_extract)
    frozen.evaluate(nn.Sequential(nn.Flatten(), nn.Linear(784, 4)), bundle, cfg)
    assert probe["tol"] == 0.002 and extract == [False, False, False]
