"""Reproducible, resumable data order and augmentation (ssl_transfer.sampling)."""

import random

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader, Dataset

from ssl_transfer.errors import ConfigError
from ssl_transfer.sampling import EpochBatchSampler, SeededDataset


class Noisy(Dataset):
    """Item i = i + draws from all three RNGs (like an augmentation would make)."""

    def __len__(self):
        return 10

    def __getitem__(self, i):
        return torch.tensor([float(i), torch.rand(()).item(), random.random(), np.random.rand()])


def flat(batches):
    return [k for b in batches for k in b]


def test_keys_encode_epoch_and_index_and_orders_differ_by_epoch():
    s = EpochBatchSampler(10, seed=3, batch_size=5)
    first = flat(s)
    assert len(s) == 2 and sorted(k % 10 for k in first) == list(range(10)) and all(k < 10 for k in first)
    s.set_epoch(2)
    second = flat(s)
    assert all(20 <= k < 30 for k in second)
    assert [k % 10 for k in second] != [k % 10 for k in first]
    assert flat(EpochBatchSampler(10, seed=3, batch_size=5)) == first  # same seed, same order


def test_incomplete_last_batch_is_dropped():
    s = EpochBatchSampler(10, seed=0, batch_size=4)
    assert len(s) == 2 and [len(b) for b in s] == [4, 4]


def test_skip_resumes_exactly_where_the_epoch_stopped():
    s = EpochBatchSampler(12, seed=1, batch_size=3)
    s.set_epoch(4)
    full = list(s)
    s.skip = 2  # global batches already consumed
    assert list(s) == full[2:]
    assert list(s) == full  # skip applies once


def test_processes_split_every_global_batch_in_order(monkeypatch):
    """k processes, global batch B: each step, process r loads the r-th B/k slice of the
    single-process batch, so gathering [rank 0; rank 1; ...] gives that batch in its order."""
    single = list(EpochBatchSampler(25, seed=0, batch_size=6))  # 4 steps, 1 image dropped
    for world in (2, 3):
        shards = []
        for rank in range(world):
            monkeypatch.setattr(EpochBatchSampler, "_world", staticmethod(lambda r=rank, w=world: (r, w)))
            s = EpochBatchSampler(25, seed=0, batch_size=6)
            assert len(s) == 4  # steps per epoch do not depend on the number of processes
            shards.append(list(s))
        assert all(len(b) == 6 // world for x in shards for b in x)
        for step in range(4):
            assert [k for r in range(world) for k in shards[r][step]] == single[step]


def test_global_batch_must_split_over_processes(monkeypatch):
    monkeypatch.setattr(EpochBatchSampler, "_world", staticmethod(lambda: (0, 4)))
    with pytest.raises(ConfigError, match="data.batch_size = 6 .* does not split evenly over 4 processes"):
        list(EpochBatchSampler(24, seed=0, batch_size=6))


def test_augmentation_is_a_function_of_seed_epoch_index_only():
    ds = SeededDataset(Noisy(), seed=7)
    a = ds[3]
    torch.manual_seed(123), random.seed(5), np.random.seed(9)  # caller's RNG state is irrelevant
    b = ds[3]
    assert torch.equal(a, b)
    assert not torch.equal(ds[13], a)  # same image, next epoch: new augmentation
    assert torch.equal(ds[13][:1], a[:1])
    before = torch.get_rng_state()
    ds[4]
    assert torch.equal(torch.get_rng_state(), before)  # caller's RNG untouched


def test_loader_batches_do_not_depend_on_workers():
    def batches(workers):
        ds = SeededDataset(Noisy(), seed=2)
        return [b for b in DataLoader(ds, batch_sampler=EpochBatchSampler(10, 2, batch_size=4), num_workers=workers)]
    for x, y in zip(batches(0), batches(2)):
        assert torch.equal(x, y)
