"""DDP exactness with 2 CPU processes (gloo): the transfer loss on the gathered global batch gives
the same value and the same parameter gradients as one process on that batch."""

import os
import socket

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from ssl_transfer.distributed import gather_views
from ssl_transfer.losses import RelaxedContrastiveLoss, RelaxedMSLoss

VIEWS, B_LOCAL, WORLD, D_IN, D_S, D_T = 2, 6, 2, 5, 4, 7


def make_data():
    g = torch.Generator().manual_seed(0)
    # global batch, view-major: x[v, img] for WORLD * B_LOCAL images
    x = torch.randn(VIEWS, WORLD * B_LOCAL, D_IN, generator=g, dtype=torch.float64)
    t = torch.randn(VIEWS, WORLD * B_LOCAL, D_T, generator=g, dtype=torch.float64)
    layer = torch.nn.Linear(D_IN, D_S).double()
    torch.nn.init.normal_(layer.weight, generator=g)
    torch.nn.init.normal_(layer.bias, generator=g)
    return x, t, layer


def losses():
    return {"relaxed_contrastive": RelaxedContrastiveLoss(sigma=1.0), "relaxed_ms": RelaxedMSLoss(views=VIEWS)}


def worker(rank, port, results):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=WORLD)
    try:
        x, t, layer = make_data()
        mine = slice(rank * B_LOCAL, (rank + 1) * B_LOCAL)
        x_local = x[:, mine].reshape(-1, D_IN)  # [view0 of my images; view1 of my images]
        t_local = t[:, mine].reshape(-1, D_T)
        out = {}
        for name, fn in losses().items():
            layer.zero_grad()
            loss = fn(gather_views(layer(x_local), VIEWS), gather_views(t_local, VIEWS))
            loss.backward()
            grads = torch.cat([p.grad.flatten() for p in layer.parameters()])
            dist.all_reduce(grads)  # what DDP does: average the gradients over processes
            out[name] = (loss.item(), (grads / WORLD).tolist())
        results[rank] = out
    finally:
        dist.destroy_process_group()


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_process_loss_and_gradients_equal_single_process():
    x, t, layer = make_data()
    reference = {}
    for name, fn in losses().items():
        layer.zero_grad()
        loss = fn(layer(x.reshape(-1, D_IN)), t.reshape(-1, D_T))
        loss.backward()
        reference[name] = (loss.item(), torch.cat([p.grad.flatten() for p in layer.parameters()]))
    manager = mp.Manager()
    results = manager.dict()
    mp.spawn(worker, args=(free_port(), results), nprocs=WORLD, join=True)
    for rank in range(WORLD):
        for name, (value, grads) in results[rank].items():
            ref_value, ref_grads = reference[name]
            assert value == pytest.approx(ref_value, rel=1e-10), (rank, name)
            torch.testing.assert_close(torch.tensor(grads, dtype=torch.float64), ref_grads, rtol=1e-5, atol=1e-8)


def test_gather_is_identity_without_process_group():
    s = torch.randn(6, 3)
    assert gather_views(s, 2) is s


def bn_data():
    g = torch.Generator().manual_seed(1)
    x = torch.randn(WORLD * 4, 3, 5, 5, generator=g, dtype=torch.float64) * 2 + 1  # global batch
    w = torch.randn(WORLD * 4, 3, 5, 5, generator=g, dtype=torch.float64)  # loss = sum(w * bn(x))
    return x, w


def bn_model():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.BatchNorm2d(3)).double()
    torch.nn.init.normal_(model[0].weight)
    torch.nn.init.normal_(model[0].bias)
    return model


def bn_worker(rank, port, results):
    from ssl_transfer.distributed import CPUSyncBatchNorm, GlobalBatchNorm

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=WORLD)
    try:
        x, w = bn_data()
        mine = slice(rank * 4, (rank + 1) * 4)
        plugin, model = GlobalBatchNorm(), bn_model()
        weight = model[0].weight
        plugin.apply(model)
        assert type(model[0]) is CPUSyncBatchNorm and model[0].weight is weight  # converted in place
        xl = x[mine].clone().requires_grad_(True)
        for _ in range(2):  # twice: running statistics accumulate
            xl.grad = None
            model.zero_grad()
            y = model(xl)
            (w[mine] * y).sum().backward()
        grads = torch.cat([model[0].weight.grad, model[0].bias.grad])
        dist.all_reduce(grads)  # the loss is a sum over processes: sum the parameter gradients
        results[rank] = {"y": y.detach(), "x_grad": xl.grad, "param_grad": grads,
                         "running": torch.cat([model[0].running_mean, model[0].running_var])}
        plugin.revert(model)
        assert type(model[0]) is torch.nn.BatchNorm2d and model[0].weight is weight
    finally:
        dist.destroy_process_group()


def test_global_batchnorm_on_cpu_equals_batchnorm_on_the_whole_batch():
    """torch's SyncBatchNorm (and DDP with it) refuse CPU tensors; ours gives, on 2 gloo processes,
    the outputs, input and parameter gradients and running statistics of one BatchNorm2d on the
    global batch, and reverts to the original layer."""
    x, w = bn_data()
    model = bn_model()
    xg = x.clone().requires_grad_(True)
    for _ in range(2):
        xg.grad = None
        model.zero_grad()
        y = model(xg)
        (w * y).sum().backward()
    ref = {"y": y.detach(), "x_grad": xg.grad, "param_grad": torch.cat([model[0].weight.grad, model[0].bias.grad]),
           "running": torch.cat([model[0].running_mean, model[0].running_var])}
    results = mp.Manager().dict()
    mp.spawn(bn_worker, args=(free_port(), results), nprocs=WORLD, join=True)
    for rank in range(WORLD):
        got, mine = results[rank], slice(rank * 4, (rank + 1) * 4)
        torch.testing.assert_close(got["y"], ref["y"][mine], rtol=1e-10, atol=1e-12)
        torch.testing.assert_close(got["x_grad"], ref["x_grad"][mine], rtol=1e-10, atol=1e-12)
        torch.testing.assert_close(got["param_grad"], ref["param_grad"], rtol=1e-10, atol=1e-12)
        torch.testing.assert_close(got["running"], ref["running"], rtol=1e-10, atol=1e-12)
