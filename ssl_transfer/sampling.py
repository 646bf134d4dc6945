"""Reproducible, resumable training data order and augmentation.

Two pieces make every training batch a pure function of ``(seed, epoch, step)``:

- :class:`EpochBatchSampler` draws the permutation of epoch ``e`` from ``(seed, e)`` (shared by
  all processes), cuts it into global batches of ``data.batch_size`` and gives each of the k DDP
  processes a contiguous ``batch_size / k`` slice of every global batch, so the gathered batch
  [process 0; process 1; ...] is the single-process batch, in the same order. It yields *keys*
  ``e * n + i`` instead of bare indices ``i``. ``skip`` drops the first global batches of the
  next iteration: resuming mid-epoch continues exactly where the interrupted run stopped.
- :class:`SeededDataset` decodes a key into ``(epoch, i)`` and seeds Python's, NumPy's and
  PyTorch's RNGs from ``(seed, epoch, i)`` around the wrapped dataset's ``__getitem__``, so the
  random augmentation of image ``i`` in epoch ``e`` does not depend on the number of loader
  workers, on which worker or process loads it, or on what was loaded before.
"""

from __future__ import annotations

import random
from collections.abc import Iterator

import numpy as np
import torch
from torch.utils.data import Dataset, Sampler, get_worker_info

from . import distributed
from .errors import ConfigError


def mix_seed(*parts: int) -> int:
    """A 63-bit seed from integers (SplitMix64 steps), stable across processes and runs.

    Every seeded draw of the data pipeline derives its seed this way from ``(seed, ...)``:
    ``mix_seed(seed, epoch)`` orders an epoch, ``mix_seed(seed, epoch, i)`` augments item i.
    """
    x = 0x9E3779B97F4A7C15
    for p in parts:
        x = (x ^ (p & 0xFFFFFFFFFFFFFFFF)) * 0xBF58476D1CE4E5B9 & 0xFFFFFFFFFFFFFFFF
        x = (x ^ (x >> 27)) * 0x94D049BB133111EB & 0xFFFFFFFFFFFFFFFF
        x ^= x >> 31
    return x & 0x7FFFFFFFFFFFFFFF


class SeededDataset(Dataset):
    """Wraps ``dataset`` (n items); item key ``e * n + i`` is item ``i`` under RNGs seeded by
    ``(seed, e, i)``. The caller's RNG states are restored afterwards."""

    def __init__(self, dataset: Dataset, seed: int):
        self.dataset = dataset
        self.seed = int(seed)
        self.n = len(dataset)

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, key: int):
        epoch, i = divmod(int(key), self.n)
        s = mix_seed(self.seed, epoch, i)
        in_worker = get_worker_info() is not None  # a worker's RNGs serve nothing else
        if not in_worker:
            saved = random.getstate(), np.random.get_state(), torch.get_rng_state()
        random.seed(s)
        np.random.seed(s % 2**32)
        torch.default_generator.manual_seed(s)
        try:
            return self.dataset[i]
        finally:
            if not in_worker:
                random.setstate(saved[0])
                np.random.set_state(saved[1])
                torch.set_rng_state(saved[2])


def check_batch_splits(batch_size: int, processes: int) -> None:
    """Raise a ConfigError unless the global batch splits evenly over the processes."""
    if batch_size % processes:
        raise ConfigError(
            f"data.batch_size = {batch_size} (the global batch) does not split evenly over {processes} "
            f"processes; set data.batch_size to a multiple of {processes} or change trainer.devices"
        )


class EpochBatchSampler(Sampler[list[int]]):
    """Batches of keys ``epoch * n + i``: global batch j of epoch e is items
    ``[j·B, (j+1)·B)`` of the permutation drawn from ``(seed, e)``; the incomplete last batch is
    dropped.

    ``batch_size`` B is the *global* batch. Under ``torch.distributed`` with k processes, process
    r takes items ``[j·B + r·B/k, j·B + (r+1)·B/k)`` of every global batch (B must be divisible
    by k), so ``len`` (steps per epoch, n // B), the images of every step and their order after
    gathering do not depend on k. ``set_epoch`` is called by Lightning at every epoch start;
    ``skip`` (global batches) applies once.
    """

    def __init__(self, n: int, seed: int, batch_size: int, shuffle: bool = True):
        self.n, self.seed, self.batch_size, self.shuffle = int(n), int(seed), int(batch_size), shuffle
        self.epoch = 0
        self.skip = 0
        #: Optional callable returning (epoch, global batches already consumed in it), read when
        #: an iteration starts; the training loop sets it so that a restored run continues at the
        #: exact position of its checkpoint (Lightning creates the iterator before set_epoch).
        self.position = None

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    @staticmethod
    def _world() -> tuple[int, int]:
        """(global rank, number of processes); (0, 1) outside torch.distributed."""
        world = distributed.world_size()
        return (distributed.global_rank() if world > 1 else 0), world

    def __len__(self) -> int:
        return self.n // self.batch_size

    def batches(self, epoch: int) -> list[list[int]]:
        """This process's item indices for every step of ``epoch`` (before ``skip``)."""
        if self.shuffle:
            g = torch.Generator().manual_seed(mix_seed(self.seed, epoch))
            order = torch.randperm(self.n, generator=g).tolist()
        else:
            order = list(range(self.n))
        rank, world = self._world()
        check_batch_splits(self.batch_size, world)
        b = self.batch_size // world
        starts = range(rank * b, len(self) * self.batch_size, self.batch_size)
        return [order[s: s + b] for s in starts]

    def __iter__(self) -> Iterator[list[int]]:
        if self.position is not None:
            self.epoch, self.skip = self.position()
        skip, self.skip = self.skip, 0
        base = self.epoch * self.n
        return iter([[base + i for i in batch] for batch in self.batches(self.epoch)[skip:]])
