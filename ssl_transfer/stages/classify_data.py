"""Training data of the classification stages: one augmented view per image, labelled and unlabelled.

A training batch is a dict::

    {"image": (b, C, H, W), "label": (b,) int64, "labelled": (b,) bool, "index": (b,) int64}

``label`` is -1 for every unlabelled image (its true label never leaves the dataset), so only
the rows with ``labelled`` can reach the cross-entropy. ``index`` is the position in the
:class:`ClassifyDataset` (labelled images first).

**Pools.** The labelled pool is ``bundle.labelled_idx`` (``data.label_fraction``: a stratified,
seeded subset) or, without a fraction, every labelled image of the training split; the
unlabelled pool is the rest of the training split (``bundle.unlabelled_idx``; STL-10's unlabeled
images with ``data.unlabeled``).

**Batches** (:class:`MixedBatchSampler`) are a pure function of ``(seed, step)``, so runs resume
mid-epoch exactly (``ssl_transfer.sampling``): step k of epoch e takes batch k of the labelled
permutation drawn from ``(seed, e)`` (``classify.batch_size`` images, an :class:`EpochBatchSampler`;
an epoch is one pass over the labelled pool) and, with ``classify.unlabelled``, the next
``b_u = round(unlabelled_ratio · batch_size)`` images of an endless stream of unlabelled
permutations (permutation q drawn from ``(seed, 2^32 + q)``). Item keys are ``epoch · n + i``
(:class:`SeededDataset`: the augmentation of item i in epoch e is seeded by ``(seed, e, i)``);
labelled items keep the same keys with or without unlabelled images, so every row of a paired
comparison sees the same labelled images with the same augmentations, step for step. Under DDP
each of k processes takes its contiguous ``1/k`` of both parts of every global batch.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler
from torchvision import transforms as T

from ..errors import DataError
from ..sampling import EpochBatchSampler, SeededDataset, check_batch_splits, mix_seed


def train_transform(bundle, augment: str) -> Callable:
    """PIL image -> normalised (C, size, size) tensor with the ``classify.augment`` augmentation.

    ``crop_flip``: RandomCrop(size, padding=size // 8) + horizontal flip (CIFAR: 32, padding 4;
    Fashion-MNIST: 28, padding 3; STL-10: 96, padding 12); file-backed datasets (ImageNet, image
    folders): RandomResizedCrop(size) + flip. ``flip``: flip only. ``none``: the eval transform.
    """
    size = bundle.image_size
    if augment == "none":
        return bundle.eval_transform()
    resize = [T.Resize((size, size))] if bundle.array_backed and size != bundle.raw.image_size else []
    if augment == "crop_flip":
        crop = [T.RandomCrop(size, padding=size // 8)] if bundle.array_backed else [T.RandomResizedCrop(size)]
    elif bundle.array_backed:
        crop = []
    else:
        crop = [T.Resize(round(size / 0.875)), T.CenterCrop(size)]
    return T.Compose([*resize, *crop, T.RandomHorizontalFlip(), T.ToTensor(), T.Normalize(bundle.raw.mean,
                                                                                          bundle.raw.std)])


def pools(bundle) -> tuple[np.ndarray, np.ndarray]:
    """``(labelled, unlabelled)`` training-pool indices (sorted) of the classification stages."""
    if bundle.labelled_idx is not None:
        return np.sort(bundle.labelled_idx), np.sort(bundle.unlabelled_idx)
    n_train = bundle.raw.count("train")
    return bundle.train_idx[bundle.train_idx < n_train], bundle.train_idx[bundle.train_idx >= n_train]


class ClassifyDataset(Dataset):
    """The labelled pool (items ``0 .. n_l - 1``) then the unlabelled pool (``n_l .. n - 1``) of a
    bundle, as ``{image, label (-1 when unlabelled), labelled, index}`` through ``transform``."""

    def __init__(self, bundle, labelled: np.ndarray, unlabelled: np.ndarray, transform: Callable):
        self.source = bundle.raw
        self.pool = np.concatenate([labelled, unlabelled]).astype(np.int64)
        self.n_labelled = len(labelled)
        self.n_train = self.source.count("train")
        self.labels = np.full(len(self.pool), -1, dtype=np.int64)
        self.labels[: self.n_labelled] = self.source.labels("train")[labelled]  # labelled pool: official images
        self.transform = transform

    def __len__(self) -> int:
        return len(self.pool)

    def __getitem__(self, k: int) -> dict:
        i = int(self.pool[k])
        img = self.source.pil("train", i) if i < self.n_train else self.source.pil("unlabeled", i - self.n_train)
        return {"image": self.transform(img), "label": int(self.labels[k]), "labelled": k < self.n_labelled,
                "index": k}


class MixedBatchSampler(Sampler[list[int]]):
    """Keys of ``labelled_batch`` labelled items + ``unlabelled_batch`` unlabelled items per step
    (global sizes), for a :class:`ClassifyDataset` of ``n_labelled + n_unlabelled`` items.

    ``len`` is the steps per epoch (``n_labelled // labelled_batch``). Like
    :class:`EpochBatchSampler` it has ``set_epoch`` and ``position`` (set by
    :func:`ssl_transfer.runtime.fit` so that a restored run continues at its checkpoint's step).
    """

    def __init__(self, n_labelled: int, n_unlabelled: int, seed: int, labelled_batch: int, unlabelled_batch: int):
        self.labelled = EpochBatchSampler(n_labelled, seed, labelled_batch)
        self.n_l, self.n_u, self.seed, self.b_u = n_labelled, n_unlabelled, int(seed), int(unlabelled_batch)
        self.n = n_labelled + n_unlabelled
        self.epoch = 0
        self.position = None
        self._perms: dict[int, list[int]] = {}  # the unlabelled permutations in use (at most 2 kept)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return len(self.labelled)

    def permutation(self, q: int) -> list[int]:
        """Permutation q of the unlabelled pool, drawn from ``(seed, 2^32 + q)``."""
        if q not in self._perms:
            g = torch.Generator().manual_seed(mix_seed(self.seed, 2**32 + q))
            self._perms = {k: v for k, v in self._perms.items() if k == q - 1}
            self._perms[q] = torch.randperm(self.n_u, generator=g).tolist()
        return self._perms[q]

    def unlabelled_batch(self, step: int) -> list[int]:
        """This process's keys of the unlabelled part of global step ``step`` (all epochs counted)."""
        rank, world = EpochBatchSampler._world()
        check_batch_splits(self.b_u, world)
        share = self.b_u // world
        start = step * self.b_u + rank * share  # positions in the endless unlabelled stream
        keys = []
        for p in range(start, start + share):
            q, j = divmod(p, self.n_u)
            keys.append(q * self.n + self.n_l + self.permutation(q)[j])  # "epoch" q seeds its augmentation
        return keys

    def __iter__(self) -> Iterator[list[int]]:
        skip = 0
        if self.position is not None:
            self.epoch, skip = self.position()
        steps = len(self)
        out = []
        for k, batch in enumerate(self.labelled.batches(self.epoch)[skip:], start=skip):
            keys = [self.epoch * self.n + i for i in batch]
            out.append(keys + self.unlabelled_batch(self.epoch * steps + k))
        return iter(out)


def unlabelled_batch_size(cfg) -> int:
    """Unlabelled images per global batch: round(unlabelled_ratio · labelled batch), at least 1."""
    return max(1, int(round(cfg.classify.unlabelled_ratio * cfg.classify.student_batch(cfg))))


def check_pools(cfg, bundle) -> None:
    """One-line DataErrors, before anything is written, when the pools cannot fill a batch (the
    student's, and the supervised teacher's)."""
    labelled, unlabelled = pools(bundle)
    batches = {"classify.batch_size" if cfg.classify.batch_size else "data.batch_size": cfg.classify.student_batch(cfg)}
    if cfg.source.method == "supervised":
        batches["data.batch_size"] = cfg.data.batch_size
    for key, b in batches.items():
        if len(labelled) < b:
            frac = f" (data.label_fraction {cfg.data.label_fraction:g})" if cfg.data.label_fraction else ""
            raise DataError(f"{key} = {b} exceeds the {len(labelled)} labelled training images{frac}; lower {key} or "
                            "keep more labels")
    if cfg.classify.unlabelled and len(unlabelled) == 0:
        raise DataError("classify.unlabelled is set but the training split has no unlabelled image; lower "
                        "data.label_fraction or set classify.unlabelled: false")


def classify_loader(cfg, bundle, seed: int, batch_size: int, unlabelled: bool = False) -> DataLoader:
    """Training batches of the classification stages (module docstring): ``batch_size`` labelled
    images per global batch, plus unlabelled ones with ``unlabelled``, drawn with ``seed``."""
    check_pools(cfg, bundle)
    lab, unl = pools(bundle)
    if not unlabelled:
        unl = unl[:0]
    dataset = ClassifyDataset(bundle, lab, unl, train_transform(bundle, cfg.classify.augment))
    if unlabelled:
        sampler = MixedBatchSampler(len(lab), len(unl), seed, batch_size, unlabelled_batch_size(cfg))
    else:
        sampler = EpochBatchSampler(len(lab), seed, batch_size)
    return DataLoader(SeededDataset(dataset, seed), batch_sampler=sampler, num_workers=cfg.data.num_workers,
                      persistent_workers=cfg.data.num_workers > 0)


__all__ = ["ClassifyDataset", "MixedBatchSampler", "check_pools", "classify_loader", "pools", "train_transform",
           "unlabelled_batch_size"]
