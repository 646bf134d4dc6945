"""Class-balanced batches (ssl_transfer.data.balanced.ClassBalancedBatchSampler)."""

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader, Dataset

from ssl_transfer import distributed
from ssl_transfer.data.balanced import ClassBalancedBatchSampler
from ssl_transfer.errors import ConfigError
from ssl_transfer.sampling import EpochBatchSampler, SeededDataset

# 12 classes with 1..9 images (class 0 has one image: fewer than m = 2), shuffled order
SIZES = [1, 2, 3, 4, 5, 6, 7, 8, 9, 3, 4, 8]
LABELS = np.random.default_rng(0).permutation(np.repeat(np.arange(len(SIZES)) * 10 + 5, SIZES))
N = len(LABELS)  # 60


def sampler(labels=LABELS, m=2, batch=8, seed=3):
    return ClassBalancedBatchSampler(labels, images_per_class=m, batch_size=batch, seed=seed)


def items(batch, n=N):
    return [k % n for k in batch]


def test_every_batch_is_p_distinct_classes_times_m_images():
    for m, batch in ((2, 8), (3, 12), (1, 5)):
        s = sampler(m=m, batch=batch)
        p = batch // m
        assert s.classes_per_batch == p and len(s) == N // batch
        for epoch in range(3):
            s.set_epoch(epoch)
            batches = list(s)
            assert len(batches) == N // batch
            for b in batches:
                labels = LABELS[items(b)]
                blocks = labels.reshape(p, m)  # class-major: P blocks of m
                assert (blocks == blocks[:, :1]).all()
                assert len(set(blocks[:, 0])) == p
                for c in set(blocks[:, 0]):
                    imgs = [i for i in items(b) if LABELS[i] == c]
                    if (LABELS == c).sum() >= m:  # replacement only for classes smaller than m
                        assert len(set(imgs)) == m


def test_classes_are_drawn_equally_often_and_small_classes_repeat_images():
    s = sampler(m=2, batch=8)  # 7 steps × 4 classes = 28 class draws over 12 classes
    drawn = [c for b in s for c in LABELS[items(b)][::2]]
    counts = np.unique(drawn, return_counts=True)[1]
    assert len(counts) == 12 and counts.max() - counts.min() <= 1
    s = ClassBalancedBatchSampler(np.array([0, 1, 1, 1, 1, 1]), images_per_class=3, batch_size=6, seed=0)
    (batch,) = list(s)
    blocks = sorted([batch[:3], batch[3:]])
    assert blocks[0] == [0, 0, 0] and len(set(blocks[1])) == 3 and 0 not in blocks[1]


def test_keys_are_epoch_times_n_plus_index_and_depend_only_on_seed_epoch_step():
    s = sampler()
    s.set_epoch(4)
    first = list(s)
    assert all(4 * N <= k < 5 * N for b in first for k in b)
    again = sampler()
    again.set_epoch(4)
    assert list(again) == first  # a new sampler, same (seed, epoch): same batches
    s.set_epoch(5)
    assert [items(b) for b in s] != [items(b) for b in first]  # another epoch differs
    other = sampler(seed=4)
    other.set_epoch(4)
    assert list(other) != first  # another seed differs


def test_batches_of_an_epoch_visit_images_of_large_classes_without_repeats():
    labels = np.repeat(np.arange(10), 20)  # 10 classes × 20 images, n = 200
    s = ClassBalancedBatchSampler(labels, images_per_class=4, batch_size=20, seed=1)
    drawn = [i for b in s for i in b]
    assert len(drawn) == 200 and len(set(drawn)) == 200  # each class drawn 5 times × 4 = 20 images


def test_skip_and_position_resume_at_the_exact_batch():
    s = sampler()
    s.set_epoch(2)
    full = list(s)
    s.skip = 3
    assert list(s) == full[3:]
    assert list(s) == full  # skip applies once
    fresh = sampler()
    fresh.position = lambda: (2, 5)  # restored checkpoint: epoch 2, 5 batches consumed
    assert list(fresh) == full[5:]


@pytest.mark.parametrize("world", [2, 4])
def test_processes_take_distinct_classes_and_gather_to_the_single_process_batch(monkeypatch, world):
    single = list(sampler(m=2, batch=16))  # P = 8 classes per batch
    shards = []
    for rank in range(world):
        monkeypatch.setattr(distributed, "world_size", lambda w=world: w)
        monkeypatch.setattr(distributed, "global_rank", lambda r=rank: r)
        s = sampler(m=2, batch=16)
        assert len(s) == len(single)
        shards.append(list(s))
    for step in range(len(single)):
        local = [shards[r][step] for r in range(world)]
        assert [k for part in local for k in part] == single[step]
        class_sets = [set(LABELS[items(part)]) for part in local]
        assert all(len(c) == 8 // world for c in class_sets)  # balanced: m images per local class
        assert len(set().union(*class_sets)) == 8  # no class on two processes


def test_classes_per_batch_must_split_over_processes(monkeypatch):
    monkeypatch.setattr(distributed, "world_size", lambda: 3)
    monkeypatch.setattr(distributed, "global_rank", lambda: 0)
    with pytest.raises(ConfigError, match="gives 4 classes per batch, which do not split evenly over 3 processes"):
        list(sampler(m=2, batch=8))


def test_world_ignores_the_launcher_rank_before_the_process_group_exists(monkeypatch):
    monkeypatch.setattr(distributed, "global_rank", lambda: 1)  # from RANK, group not yet initialised
    assert EpochBatchSampler._world() == (0, 1)
    assert list(sampler()) == list(sampler())


def test_configuration_errors_are_one_line():
    with pytest.raises(ConfigError, match="needs 13 distinct classes per batch, but the training split has 12"):
        sampler(m=2, batch=26)
    with pytest.raises(ConfigError, match="data.batch_size = 9 is not a multiple of data.images_per_class = 2"):
        sampler(m=2, batch=9)
    with pytest.raises(ConfigError, match="images_per_class = 0 must be at least 1"):
        sampler(m=0)
    with pytest.raises(ConfigError, match="1-D integer array of labels"):
        sampler(labels=LABELS.astype(float))


class Tagged(Dataset):
    """Item i = (i, its label, a draw from torch's RNG, as an augmentation would make)."""

    def __len__(self):
        return N

    def __getitem__(self, i):
        return torch.tensor([float(i), float(LABELS[i]), torch.rand(()).item()])


def test_keys_decode_with_seeded_dataset_in_a_loader():
    s = sampler(m=2, batch=8)
    s.set_epoch(1)
    keys = list(s)
    loader = DataLoader(SeededDataset(Tagged(), seed=3), batch_sampler=s)
    s.set_epoch(1)
    for k, x in zip(keys, loader):
        assert x[:, 0].long().tolist() == items(k)
        assert (x[:, 1].view(-1, 2) == x[:, 1].view(-1, 2)[:, :1]).all()  # m = 2 images per class
    ds = SeededDataset(Tagged(), seed=3)
    assert torch.equal(ds[keys[0][0]], ds[N + items(keys[0])[0]])  # key (epoch 1, i) decodes to (1, i)
