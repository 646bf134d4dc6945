"""The global batch under DDP: gather view-stacked embeddings from every process.

Each process holds ``views`` blocks of its b local images, stacked [view0; view1; ...]. The
pairwise transfer losses must see all k·b images of the global batch, in the same layout
([view0 of all processes; view1 of all processes; ...]) so that view-aware losses (Relaxed MS)
still find the views of one image at indices i, i + k·b, ...

Gradients: lightly's ``GatherLayer`` sums, in backward, the gradient that every process
computes for each gathered block, so each process receives k · ∂L/∂s_local for the global loss
L; DDP then averages parameter gradients over the k processes, which gives exactly ∂L/∂θ of one
process computing L on the global batch. No extra scaling is needed (tests/test_distributed.py).
"""

from __future__ import annotations

import torch
import torch.distributed as dist
from lightly.utils.dist import gather


def world_size() -> int:
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


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
