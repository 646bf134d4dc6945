"""Reproducible, resumable data order and augmentation (ssl_transfer.sampling)."""

import random

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from ssl_transfer.sampling import EpochSampler, SeededDataset


class Noisy(Dataset):
    """Item i = i + draws from all three RNGs (like an augmentation would make)."""

    def __len__(self):
        return 10

    def __getitem__(self, i):
        return torch.tensor([float(i), torch.rand(()).item(), random.random(), np.random.rand()])


def test_keys_encode_epoch_and_index_and_orders_differ_by_epoch():
    s = EpochSampler(10, seed=3)
    first = list(s)
    assert sorted(k % 10 for k in first) == list(range(10)) and all(k < 10 for k in first)
    s.set_epoch(2)
    second = list(s)
    assert all(20 <= k < 30 for k in second)
    assert [k % 10 for k in second] != [k % 10 for k in first]
    assert list(EpochSampler(10, seed=3)) == first  # same seed, same order


def test_skip_resumes_exactly_where_the_epoch_stopped():
    s = EpochSampler(10, seed=1)
    s.set_epoch(4)
    full = list(s)
    s.skip = 6
    assert list(s) == full[6:]
    assert list(s) == full  # skip applies once


def test_shards_are_disjoint_equal_and_cover(monkeypatch):
    shards = []
    for rank in range(3):
        monkeypatch.setattr(EpochSampler, "_world", staticmethod(lambda rank=rank: (rank, 3)))
        s = EpochSampler(10, seed=0)
        shards.append(s.indices(0))
        assert len(s) == 3
    assert all(len(x) == 3 for x in shards)
    flat = [i for x in shards for i in x]
    assert len(set(flat)) == 9
    monkeypatch.setattr(EpochSampler, "_world", staticmethod(lambda: (0, 1)))
    order = EpochSampler(10, seed=0).indices(0)  # the single-process permutation
    assert [shards[r][j] for j in range(3) for r in range(3)] == order[:9]  # rank r takes every 3rd


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
        return [b for b in DataLoader(ds, batch_size=4, sampler=EpochSampler(10, 2), num_workers=workers,
                                      drop_last=True)]
    for x, y in zip(batches(0), batches(2)):
        assert torch.equal(x, y)
