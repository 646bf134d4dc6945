"""Torch datasets over a source, the train/val split, and the data bundle used by stages.

Conventions: a training batch is a dict with ``views`` (a list of ``data.views`` tensors of
shape (b, C, H, W)), ``label`` (b,) (-1 for unlabeled images), ``index`` (b,) (position in the
training split) and, when asked for, ``clean`` (b, C, H, W), the un-augmented image. Stages
stack the views as ``torch.cat(views)`` = [view0 of all images; view1 of all images; ...].
Evaluation batches are tuples ``(x (b, C, H, W), y (b,))`` of un-augmented, normalised images.

Un-augmented ("clean") images: for array-backed sources at their stored size, ToTensor +
Normalize, computed in one vectorised step per batch (:func:`normalise`); at another
``data.input_size``, Resize(input_size) first. For file-backed sources (ImageNet, image
folders), Resize(round(input_size / 0.875)) + CenterCrop(input_size) (256/224 at 224).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
from torch.utils.data import BatchSampler, DataLoader, Dataset, SequentialSampler
from torchvision import transforms as T

from ..config import DataConfig
from ..distributed import is_global_zero
from ..errors import DataError
from ..sampling import EpochBatchSampler, SeededDataset
from .base import Source, found_via
from .sources import load_source
from .views import multi_view_transform

log = logging.getLogger("ssl_transfer")


class ViewDataset(Dataset):
    """Training images of a source as dicts ``{views, label, index[, clean]}``, read on demand.

    ``pool`` indexes the source's training pool: ``i < n_train`` is training image i, larger
    values are unlabeled image ``i - n_train`` (label -1). ``index`` in an item is the position
    in ``pool``.
    """

    def __init__(self, source: Source, pool: np.ndarray, transform: Callable, clean: Callable | None = None):
        self.source = source
        self.pool = pool
        self.n_train = source.count("train")
        self.labels = _pool_labels(source, pool)
        self.transform = transform
        self.clean = clean

    def __len__(self) -> int:
        return len(self.pool)

    def __getitem__(self, k: int) -> dict:
        i = int(self.pool[k])
        img = self.source.pil("train", i) if i < self.n_train else self.source.pil("unlabeled", i - self.n_train)
        item = {"views": self.transform(img), "label": int(self.labels[k]), "index": k}
        if self.clean is not None:
            item["clean"] = self.clean(img)
        return item


class EvalDataset(Dataset):
    """``(x (C, H, W), y)`` of a split, each image read and transformed on demand."""

    def __init__(self, source: Source, split: str, idx: np.ndarray, transform: Callable):
        self.source, self.split, self.idx, self.transform = source, split, idx, transform
        self.n_train = source.count("train")
        self.labels = _pool_labels(source, idx) if split == "train" else source.labels("test")[idx]

    def __len__(self) -> int:
        return len(self.idx)

    def __getitem__(self, k: int) -> tuple[torch.Tensor, int]:
        i = int(self.idx[k])
        if self.split == "test":
            img = self.source.pil("test", i)
        else:
            img = self.source.pil("train", i) if i < self.n_train else self.source.pil("unlabeled", i - self.n_train)
        return self.transform(img), int(self.labels[k])


class ArrayBatchDataset(Dataset):
    """Batches ``(x (b, C, H, W), y (b,))`` of normalised arrays; item = a list of positions.

    Used with a BatchSampler (``batch_size=None`` in the DataLoader): each batch is normalised
    in one vectorised step (:func:`normalise`).
    """

    def __init__(self, gather: Callable[[np.ndarray], np.ndarray], labels: np.ndarray,
                 mean: list[float], std: list[float]):
        self.gather, self.labels, self.mean, self.std = gather, labels, mean, std

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, positions: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
        pos = np.asarray(positions)
        return normalise(self.gather(pos), self.mean, self.std), torch.from_numpy(self.labels[pos])


def _pool_labels(source: Source, pool: np.ndarray) -> np.ndarray:
    n_train = source.count("train")
    labels = np.full(len(pool), -1, dtype=np.int64)
    labelled = pool < n_train
    labels[labelled] = source.labels("train")[pool[labelled]]
    return labels


def split_train_val(n: int, val_size: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Deterministic disjoint (train, val) index arrays of the official training split."""
    if val_size >= n:
        raise DataError(
            f"data.val_size = {val_size} leaves no training images out of {n}; "
            f"set data.val_size < {n}"
        )
    perm = np.random.default_rng(seed).permutation(n)
    return np.sort(perm[val_size:]), np.sort(perm[:val_size])


def _subset(idx: np.ndarray, size: int | None, seed: int) -> np.ndarray:
    if size is None or size >= len(idx):
        return idx
    return np.sort(np.random.default_rng(seed).choice(idx, size=size, replace=False))


def normalise(images: np.ndarray, mean: list[float], std: list[float]) -> torch.Tensor:
    """uint8 (n, H, W[, C]) -> float32 (n, C, H, W), scaled to [0, 1] and standardised."""
    x = torch.from_numpy(np.ascontiguousarray(images)).float().div_(255.0)
    x = x.unsqueeze(1) if x.ndim == 3 else x.permute(0, 3, 1, 2)
    m = torch.tensor(mean).view(1, -1, 1, 1)
    s = torch.tensor(std).view(1, -1, 1, 1)
    return ((x - m) / s).contiguous()


@dataclass
class DataBundle:
    """The splits of one dataset and the loaders every stage uses.

    ``train``: images for SSL training and transfer (official train minus val, plus the
    unlabeled images of STL-10 when ``data.unlabeled``, optionally subset). Its indices address
    the training pool: ``i < n`` is official training image i, ``i >= n`` unlabeled image i - n.
    ``eval_train``: labelled images whose frozen features fit the linear probe and form the kNN
    bank. ``val``: held-out part of the official training split, for every selection.
    ``test``: the official test split, evaluated once at the end.
    ``method``: the SSL method whose views ``train_loader`` draws (``simclr`` or ``mocov2``).
    """

    cfg: DataConfig
    raw: Source
    train_idx: np.ndarray
    eval_train_idx: np.ndarray
    val_idx: np.ndarray
    test_idx: np.ndarray
    method: str = "simclr"
    #: ``data.label_fraction``: training-pool indices that keep their labels, and the others.
    labelled_idx: np.ndarray | None = None
    unlabelled_idx: np.ndarray | None = None

    @classmethod
    def from_config(cls, cfg: DataConfig, seed: int, method: str = "simclr") -> DataBundle:
        """Splits of the dataset ``cfg`` names.

        - ``data.train_classes`` (zero-shot on a classification dataset): the training split keeps
          those classes, the test split the others (classes never trained on);
        - ``data.val_classes``: the validation split is that many whole classes of the training
          split (metric learning: selection on unseen classes), else ``data.val_size`` images;
        - ``data.label_fraction``: a stratified, seeded subset of the training images keeps its
          labels (``labelled_idx``); the other training images are ``unlabelled_idx``.
        """
        raw = load_source(cfg)
        if is_global_zero():
            log.info("dataset %s: %s (found via %s)", cfg.name, raw.location, found_via(raw.location, cfg.root))
        labels, test_labels = raw.labels("train"), raw.labels("test")
        if len(np.unique(labels)) < 2:
            raise DataError(f"dataset '{cfg.name}' has fewer than 2 classes; evaluation needs at least 2")
        official = np.arange(raw.count("train"))
        test_idx = np.arange(raw.count("test"))
        if cfg.train_classes is not None:
            missing = sorted(set(cfg.train_classes) - set(np.unique(labels).tolist()))
            if missing:
                raise DataError(f"data.train_classes names classes {missing} that {cfg.name} does not have (labels "
                                f"0..{int(labels.max())}); fix data.train_classes")
            official = official[np.isin(labels, cfg.train_classes)]
            test_idx = test_idx[~np.isin(test_labels, cfg.train_classes)]
        if cfg.val_classes is not None:
            from .metric import split_classes

            tr, va = split_classes(labels[official], cfg.val_classes, cfg.split_seed)
            train_idx, val_idx = official[tr], official[va]
        else:
            tr, va = split_train_val(len(official), cfg.val_size, cfg.split_seed)
            train_idx, val_idx = official[tr], official[va]
        pool = train_idx
        n_unlabeled = raw.count("unlabeled")
        if n_unlabeled:
            pool = np.concatenate([train_idx, raw.count("train") + np.arange(n_unlabeled)])
        bundle = cls(cfg=cfg, raw=raw, train_idx=_subset(pool, cfg.train_subset, cfg.split_seed + 1),
                     eval_train_idx=_subset(train_idx, cfg.eval_train_subset, cfg.split_seed + 2), val_idx=val_idx,
                     test_idx=_subset(test_idx, cfg.test_subset, cfg.split_seed), method=method)
        if cfg.label_fraction is not None:
            from .labels import split_labelled

            positions = np.flatnonzero(bundle.train_idx < raw.count("train"))  # labelled pool images
            lab, unl = split_labelled(_pool_labels(raw, bundle.train_idx[positions]), cfg.label_fraction,
                                      cfg.split_seed + 3)
            bundle.labelled_idx = bundle.train_idx[positions[lab]]
            bundle.unlabelled_idx = np.setdiff1d(bundle.train_idx, bundle.labelled_idx)
        return bundle

    @property
    def found_via(self) -> str:
        """Where the dataset was found: data.root, $SSL_TRANSFER_DATA or the default location."""
        return found_via(self.raw.location, self.cfg.root)

    @property
    def num_classes(self) -> int:
        return len(self.raw.classes)

    @property
    def channels(self) -> int:
        return self.raw.channels

    @property
    def image_size(self) -> int:
        """Side of the images the models see: ``data.input_size`` or the dataset's default."""
        return self.cfg.input_size or self.raw.default_input_size

    @property
    def array_backed(self) -> bool:
        return self.raw.array_backed

    def sizes(self) -> dict[str, int]:
        out = {
            "train": len(self.train_idx), "eval_train": len(self.eval_train_idx),
            "val": len(self.val_idx), "test": len(self.test_idx),
        }
        n_unlabeled = int((self.train_idx >= self.raw.count("train")).sum())
        if n_unlabeled:
            out["train_unlabeled"] = n_unlabeled  # included in "train"
        return out

    # ---- transforms ------------------------------------------------------------------

    def _resized(self) -> bool:
        return not self.array_backed or self.image_size != self.raw.image_size

    def eval_transform(self) -> Callable:
        """PIL image -> normalised, un-augmented (C, image_size, image_size) tensor."""
        size = self.image_size
        if not self.array_backed:
            resize = [T.Resize(round(size / 0.875)), T.CenterCrop(size)]
        elif size != self.raw.image_size:
            resize = [T.Resize((size, size))]
        else:
            resize = []
        return T.Compose([*resize, T.ToTensor(), T.Normalize(self.raw.mean, self.raw.std)])

    def view_transform(self, method: str | None = None) -> Callable:
        c = self.cfg
        return multi_view_transform(
            views=c.views, input_size=self.image_size, mean=self.raw.mean, std=self.raw.std,
            min_scale=c.min_scale, cj_prob=c.cj_prob, cj_strength=c.cj_strength, hf_prob=c.hf_prob,
            random_gray_scale=c.random_gray_scale, gaussian_blur=c.gaussian_blur,
            method=method or self.method, dataset=self.raw.name,
        )

    # ---- training --------------------------------------------------------------------

    def view_dataset(self, clean: bool = False, method: str | None = None) -> ViewDataset:
        """Training images with ``data.views`` augmented views each (and the clean image)."""
        return ViewDataset(self.raw, self.train_idx, self.view_transform(method),
                           self.eval_transform() if clean else None)

    def train_loader(self, seed: int, clean: bool = False, method: str | None = None) -> DataLoader:
        """Shuffled batches of augmented views (views of ``method``, default ``self.method``).

        ``data.batch_size`` is the global batch: under DDP each of k processes loads its
        ``batch_size / k`` share of every step (:class:`EpochBatchSampler`; use
        ``trainer.use_distributed_sampler=False`` with it).
        """
        if len(self.train_idx) < self.cfg.batch_size:
            raise DataError(
                f"data.batch_size = {self.cfg.batch_size} exceeds the {len(self.train_idx)} training "
                "images; lower data.batch_size or use more data (data.train_subset)"
            )
        # batches are a pure function of (seed, epoch, position): independent of the number of
        # workers and of DDP ranks' scheduling, and resumable mid-epoch (ssl_transfer.sampling)
        dataset = SeededDataset(self.view_dataset(clean, method), seed)
        return DataLoader(
            dataset,
            batch_sampler=self.batch_sampler(seed),
            num_workers=self.cfg.num_workers,
            persistent_workers=self.cfg.num_workers > 0,
        )

    def batch_sampler(self, seed: int) -> EpochBatchSampler:
        """Batches of training-pool items: shuffled (:class:`EpochBatchSampler`), or with
        ``data.images_per_class`` class-balanced (``batch_size / m`` classes x m images,
        :class:`~ssl_transfer.data.balanced.ClassBalancedBatchSampler`). Both resumable, DDP-aware."""
        if self.cfg.images_per_class is None:
            return EpochBatchSampler(len(self.train_idx), seed, self.cfg.batch_size)
        from .balanced import ClassBalancedBatchSampler

        return ClassBalancedBatchSampler(_pool_labels(self.raw, self.train_idx), self.cfg.images_per_class,
                                         self.cfg.batch_size, seed)

    # ---- evaluation ------------------------------------------------------------------

    def _split(self, split: str) -> tuple[str, np.ndarray]:
        """(source split, indices) of a bundle split; train indices address the training pool."""
        if split == "test":
            return "test", self.test_idx
        idx = {"train": self.train_idx, "eval_train": self.eval_train_idx, "val": self.val_idx}.get(split)
        if idx is None:
            raise ValueError(f"split must be train, eval_train, val or test, got {split!r}")
        return "train", idx

    def _gather(self, source_split: str, idx: np.ndarray) -> np.ndarray:
        """uint8 images (len(idx), H, W[, C]) of an array-backed source (pool indices for train)."""
        if source_split == "test":
            return np.asarray(self.raw.test_images[idx])
        n_train = self.raw.count("train")
        labelled = idx < n_train
        if labelled.all():
            return np.asarray(self.raw.train_images[idx])
        out = np.empty((len(idx), *self.raw.train_images.shape[1:]), dtype=np.uint8)
        out[labelled] = self.raw.train_images[idx[labelled]]
        out[~labelled] = self.raw.unlabeled_images[idx[~labelled] - n_train]
        return out

    def _labels(self, source_split: str, idx: np.ndarray) -> np.ndarray:
        return self.raw.labels("test")[idx] if source_split == "test" else _pool_labels(self.raw, idx)

    def eval_loader(self, split: str) -> DataLoader:
        """``(x, y)`` batches of a split in order, un-augmented (``eval_transform``), streamed."""
        source_split, idx = self._split(split)
        if self.array_backed and not self._resized():
            ds = ArrayBatchDataset(lambda pos: self._gather(source_split, idx[pos]),
                                   self._labels(source_split, idx), self.raw.mean, self.raw.std)
            sampler = BatchSampler(SequentialSampler(ds), self.cfg.eval_batch_size, drop_last=False)
            return DataLoader(ds, sampler=sampler, batch_size=None)
        return DataLoader(EvalDataset(self.raw, source_split, idx, self.eval_transform()),
                          batch_size=self.cfg.eval_batch_size, shuffle=False,
                          num_workers=self.cfg.num_workers)

    def labelled_loader(self, split: str, transform: Callable, seed: int, shuffle: bool = True) -> DataLoader:
        """``(x, y)`` batches of ``data.batch_size`` images of a split through ``transform`` (e.g. the
        standard probe's RandomResizedCrop + flip), shuffled by a generator seeded with ``seed``."""
        source_split, idx = self._split(split)
        return DataLoader(EvalDataset(self.raw, source_split, idx, transform), batch_size=self.cfg.batch_size,
                          shuffle=shuffle, generator=torch.Generator().manual_seed(seed) if shuffle else None,
                          num_workers=self.cfg.num_workers, persistent_workers=self.cfg.num_workers > 0)
