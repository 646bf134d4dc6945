"""Torch datasets over raw arrays, the train/val split, and the data bundle used by stages.

Conventions: a training batch is a dict with ``views`` (a list of ``data.views`` tensors of
shape (b, C, H, W)), ``label`` (b,), ``index`` (b,) (position in the training split) and,
when asked for, ``clean`` (b, C, H, W), the un-augmented image. Stages stack the views as
``torch.cat(views)`` = [view0 of all images; view1 of all images; ...]. Evaluation uses the
un-augmented, normalised images, precomputed once as a tensor.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset, TensorDataset
from torchvision import transforms as T

from ..config import DataConfig
from ..errors import DataError
from .sources import RawDataset, load_raw
from .views import multi_view_transform


class ArrayDataset(Dataset):
    """uint8 images (n, H, W[, C]) + labels as dicts ``{views, label, index[, clean]}``.

    ``transform`` maps a PIL image to a list of view tensors; ``clean`` (optional) maps it to
    the un-augmented tensor.
    """

    def __init__(self, images: np.ndarray, labels: np.ndarray, transform: Callable,
                 clean: Callable | None = None):
        self.images = images
        self.labels = labels
        self.transform = transform
        self.clean = clean
        self.mode = "L" if images.ndim == 3 else "RGB"

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int) -> dict:
        img = Image.fromarray(self.images[i], mode=self.mode)
        item = {"views": self.transform(img), "label": int(self.labels[i]), "index": i}
        if self.clean is not None:
            item["clean"] = self.clean(img)
        return item


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

    ``train``: images for SSL training and transfer (official train minus val, optionally
    subset). ``eval_train``: images whose frozen features fit the linear probe and form the
    kNN bank. ``val``: held-out part of the official training split, for every selection.
    ``test``: the official test split, evaluated once at the end.
    """

    cfg: DataConfig
    raw: RawDataset
    train_idx: np.ndarray
    eval_train_idx: np.ndarray
    val_idx: np.ndarray
    test_idx: np.ndarray

    @classmethod
    def from_config(cls, cfg: DataConfig, seed: int) -> DataBundle:
        raw = load_raw(cfg.name, cfg.root, cfg.download)
        if len(np.unique(raw.train_labels)) < 2:
            raise DataError(f"dataset '{cfg.name}' has fewer than 2 classes; evaluation needs at least 2")
        train_idx, val_idx = split_train_val(len(raw.train_images), cfg.val_size, cfg.split_seed)
        test_idx = _subset(np.arange(len(raw.test_images)), cfg.test_subset, cfg.split_seed)
        return cls(
            cfg=cfg,
            raw=raw,
            train_idx=_subset(train_idx, cfg.train_subset, cfg.split_seed + 1),
            eval_train_idx=_subset(train_idx, cfg.eval_train_subset, cfg.split_seed + 2),
            val_idx=val_idx,
            test_idx=test_idx,
        )

    @property
    def num_classes(self) -> int:
        return len(self.raw.classes)

    @property
    def channels(self) -> int:
        return self.raw.channels

    @property
    def image_size(self) -> int:
        return self.raw.image_size

    def sizes(self) -> dict[str, int]:
        return {
            "train": len(self.train_idx), "eval_train": len(self.eval_train_idx),
            "val": len(self.val_idx), "test": len(self.test_idx),
        }

    def view_dataset(self, clean: bool = False) -> ArrayDataset:
        """Training images with ``data.views`` augmented views each (and the clean image)."""
        c = self.cfg
        transform = multi_view_transform(
            views=c.views, input_size=self.image_size, mean=self.raw.mean, std=self.raw.std,
            min_scale=c.min_scale, cj_prob=c.cj_prob, cj_strength=c.cj_strength,
            hf_prob=c.hf_prob, random_gray_scale=c.random_gray_scale, gaussian_blur=c.gaussian_blur,
        )
        clean_tf = T.Compose([T.ToTensor(), T.Normalize(self.raw.mean, self.raw.std)]) if clean else None
        return ArrayDataset(self.raw.train_images[self.train_idx], self.raw.train_labels[self.train_idx],
                            transform, clean_tf)

    def train_loader(self, seed: int, clean: bool = False) -> DataLoader:
        if len(self.train_idx) < self.cfg.batch_size:
            raise DataError(
                f"data.batch_size = {self.cfg.batch_size} exceeds the {len(self.train_idx)} training "
                "images; lower data.batch_size or use more data (data.train_subset)"
            )
        return DataLoader(
            self.view_dataset(clean),
            batch_size=self.cfg.batch_size,
            shuffle=True,
            drop_last=True,
            num_workers=self.cfg.num_workers,
            persistent_workers=self.cfg.num_workers > 0,
            generator=torch.Generator().manual_seed(seed),
        )

    def clean_tensor(self, split: str) -> tuple[torch.Tensor, torch.Tensor]:
        """Normalised, un-augmented images and labels of a split (train/eval_train/val/test)."""
        if split == "test":
            images, labels, idx = self.raw.test_images, self.raw.test_labels, self.test_idx
        else:
            idx = {"train": self.train_idx, "eval_train": self.eval_train_idx, "val": self.val_idx}[split]
            images, labels = self.raw.train_images, self.raw.train_labels
        x = normalise(images[idx], self.raw.mean, self.raw.std)
        return x, torch.from_numpy(labels[idx])

    def eval_loader(self, split: str) -> DataLoader:
        x, y = self.clean_tensor(split)
        return DataLoader(TensorDataset(x, y), batch_size=self.cfg.eval_batch_size, shuffle=False)
