"""Data-parallel training (Lightning DDP): the global batch, global BatchNorm, rank-0 outputs.

**The global batch.** ``data.batch_size`` B is the global batch; each of k processes loads its
B/k share of every step (:class:`ssl_transfer.sampling.EpochBatchSampler`). Each process holds
``views`` blocks of its b = B/k local images, stacked [view0; view1; ...]. The pairwise transfer
losses must see all B images, in the single-process layout ([view0 of all processes; view1 of
all processes; ...]) so that view-aware losses (Relaxed MS) still find the views of one image at
indices i, i + B, ...: :func:`gather_views`.

Gradients: lightly's ``GatherLayer`` sums, in backward, the gradient that every process
computes for each gathered block, so each process receives k · ∂L/∂s_local for the global loss
L; DDP then averages parameter gradients over the k processes, which gives exactly ∂L/∂θ of one
process computing L on the global batch. No extra scaling is needed (tests/test_distributed.py).

**BatchNorm** normalises with the statistics of the global batch (:class:`GlobalBatchNorm`,
Lightning's ``sync_batchnorm`` plugin, extended to CPU), as one process on the whole batch would.

**Outputs** are written by global rank 0 only (:func:`is_global_zero`).
"""

from __future__ import annotations

import torch
import torch.distributed as dist
from lightly.utils.dist import gather
from lightning.pytorch.plugins.layer_sync import LayerSync, TorchSyncBatchNorm
from lightning_utilities.core.rank_zero import rank_zero_only
from torch.nn.modules.batchnorm import _BatchNorm


def world_size() -> int:
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def global_rank() -> int:
    """This process's global rank: from the process group once it exists, before that from the
    launcher's environment (Lightning reads RANK / LOCAL_RANK into ``rank_zero_only.rank``; a
    process started by Lightning's DDP launcher knows its rank from its first line)."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank()
    return int(getattr(rank_zero_only, "rank", 0) or 0)


def is_global_zero() -> bool:
    """True in the process that evaluates and writes outputs (the only one, or DDP's rank 0)."""
    return global_rank() == 0


def gather_views(x: torch.Tensor, views: int) -> torch.Tensor:
    """(views·b, d) local → (views·k·b, d) global, view-major; differentiable; no-op for k = 1."""
    if world_size() == 1:
        return x
    if x.shape[0] % views:
        raise ValueError(f"{x.shape[0]} embeddings do not split into {views} views")
    blocks = x.chunk(views)  # one (b, d) block per view
    if x.requires_grad:
        return torch.cat([torch.cat(gather(block)) for block in blocks])
    out = []
    for block in blocks:
        parts = [torch.empty_like(block) for _ in range(world_size())]
        dist.all_gather(parts, block.contiguous())
        out.append(torch.cat(parts))
    return torch.cat(out)


def _global_sum(x: torch.Tensor) -> torch.Tensor:
    """Σ over processes of ``x``, differentiable (lightly's gather: in backward every process's
    gradient reaches every process's input), summed in rank order: identical on every process."""
    return torch.stack(gather(x.contiguous())).sum(0)


class CPUSyncBatchNorm(_BatchNorm):
    """BatchNorm with the statistics of the global batch on CPU processes (gloo), where torch's
    SyncBatchNorm (CUDA kernels) and DDP refuse to run.

    :class:`GlobalBatchNorm` turns a model's BatchNorm layers into this class in place (their
    parameters and buffers stay the same objects) and back. In training under torch.distributed,
    with N the number of values per channel over all processes (batch × spatial)::

        mean = Σ_processes Σ x / N,    var = Σ_processes Σ (x - mean)² / N,
        y = (x - mean) / sqrt(var + eps) · weight + bias,

    and the running statistics move by ``momentum`` towards mean and the unbiased var · N / (N - 1),
    as the original layer on one process does with the whole batch. The gradient of every
    process's loss reaches every process's inputs through the statistics (as in torch's
    SyncBatchNorm), so DDP's averaged gradient is the single-process gradient
    (tests/test_distributed.py). In eval mode or on one process it is the original layer.
    """

    _bn_class: type  # the layer's original class (BatchNorm1d/2d/3d), set by GlobalBatchNorm

    def _check_input_dim(self, x: torch.Tensor) -> None:
        self._bn_class._check_input_dim(self, x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not (self.training and world_size() > 1):
            return self._bn_class.forward(self, x)
        self._check_input_dim(x)
        dims = [0, *range(2, x.dim())]
        shape = [1, -1] + [1] * (x.dim() - 2)
        count = torch.tensor(float(x.numel() // x.shape[1]), dtype=torch.float64)
        dist.all_reduce(count)
        n = count.item()
        mean = _global_sum(x.sum(dims)) / n
        xc = x - mean.view(shape)
        var = _global_sum(xc.pow(2).sum(dims)) / n
        y = xc * torch.rsqrt(var + self.eps).view(shape)
        if self.affine:
            y = y * self.weight.view(shape) + self.bias.view(shape)
        if self.track_running_stats:
            with torch.no_grad():
                self.num_batches_tracked.add_(1)
                f = 1.0 / self.num_batches_tracked.item() if self.momentum is None else self.momentum
                self.running_mean.mul_(1 - f).add_(f * mean.detach())
                self.running_var.mul_(1 - f).add_(f * var.detach() * (n / max(n - 1, 1)))
        return y


class GlobalBatchNorm(LayerSync):
    """Lightning's ``sync_batchnorm`` plugin, on CPU too: BatchNorm normalises with the statistics
    of the global batch. Lightning applies it when fitting starts under DDP (not on one process)
    and reverts it when fitting ends. GPU process groups (NCCL) get torch's SyncBatchNorm
    (Lightning's ``TorchSyncBatchNorm``); CPU ones (gloo) :class:`CPUSyncBatchNorm`."""

    def apply(self, model: torch.nn.Module) -> torch.nn.Module:
        if dist.get_backend() != "gloo":
            return TorchSyncBatchNorm().apply(model)
        for m in model.modules():
            if isinstance(m, _BatchNorm) and not isinstance(m, (torch.nn.SyncBatchNorm, CPUSyncBatchNorm)):
                m._bn_class = type(m)
                m.__class__ = CPUSyncBatchNorm
        return model

    def revert(self, model: torch.nn.Module) -> torch.nn.Module:
        for m in model.modules():
            if isinstance(m, CPUSyncBatchNorm):
                m.__class__ = m.__dict__.pop("_bn_class")
        return TorchSyncBatchNorm().revert(model)
