"""STL-10 in its official binary format, memory-mapped.

On disk (https://cs.stanford.edu/~acoates/stl10/, ``stl10_binary.tar.gz``, unpacked)::

    <data.root>/stl10_binary/train_X.bin  train_y.bin  test_X.bin  test_y.bin
                             unlabeled_X.bin  class_names.txt

``*_X.bin``: uint8, 27648 bytes per image, three 96x96 channel planes (R, G, B), each stored
column-major: byte ``k*27648 + c*9216 + col*96 + row`` is channel c of image k at (row, col).
This is torchvision's reading (``reshape(-1, 3, 96, 96)`` then swapping the two spatial axes).
``*_y.bin``: one uint8 label per image, 1..10 (stored 1-based, read 0-based).
``class_names.txt``: the 10 class names, one per line.

The image files are never read whole: :class:`STLImages` memory-maps them and copies out only
the images asked for, so the 2.7 GB of ``unlabeled_X.bin`` cost no RAM up front. Splits:
``train`` (5000 labelled; validation is carved from it), ``test`` (8000), ``unlabeled``
(100000, SSL training and transfer only, when ``data.unlabeled``). Normalisation statistics
come from the labelled ``train`` images.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from ..errors import DataError
from .base import RawDataset, channel_stats, find_dataset_dir, searched

STL10_URL = "https://cs.stanford.edu/~acoates/stl10/"
IMAGE_BYTES = 3 * 96 * 96
STL10_CLASSES = ["airplane", "bird", "car", "cat", "deer", "dog", "horse", "monkey", "ship", "truck"]
HOW_TO_GET = (f"download stl10_binary.tar.gz from {STL10_URL} and unpack it into data.root, or set "
              "data.download: true (with data.root) to let torchvision download it")


class STLImages:
    """Read-only (n, 96, 96, 3) uint8 HWC view of an STL-10 ``*_X.bin`` file (memory-mapped).

    Indexing with an int, slice or index array returns a numpy array. The memory map is opened
    on first use and not pickled, so DataLoader workers open their own.
    """

    ndim = 4
    dtype = np.dtype(np.uint8)

    def __init__(self, path: str | Path, n: int):
        self.path = str(path)
        self.n = int(n)
        self._view: np.ndarray | None = None

    @property
    def shape(self) -> tuple[int, int, int, int]:
        return (self.n, 96, 96, 3)

    def __len__(self) -> int:
        return self.n

    def _array(self) -> np.ndarray:
        if self._view is None:
            mm = np.memmap(self.path, dtype=np.uint8, mode="r", shape=(self.n, 3, 96, 96))
            # (n, c, col, row) on disk -> (n, row, col, c)
            self._view = mm.transpose(0, 3, 2, 1)
        return self._view

    def __getitem__(self, key: Any) -> np.ndarray:
        return np.asarray(self._array()[key])

    def __array__(self, dtype=None, copy=None) -> np.ndarray:
        out = np.asarray(self._array())
        return out if dtype is None else out.astype(dtype)

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_view": None}


def read_images(path: Path) -> STLImages:
    size = path.stat().st_size
    if size == 0 or size % IMAGE_BYTES:
        raise DataError(
            f"STL-10 file '{path}' has {size} bytes, not a positive multiple of {IMAGE_BYTES} "
            f"(3x96x96 uint8 images); it is truncated or corrupt, {HOW_TO_GET}"
        )
    return STLImages(path, size // IMAGE_BYTES)


def read_labels(path: Path, n_images: int) -> np.ndarray:
    labels = np.fromfile(path, dtype=np.uint8).astype(np.int64)
    if len(labels) != n_images:
        raise DataError(
            f"STL-10 label file '{path}' has {len(labels)} labels for {n_images} images; it is "
            f"truncated or does not belong to them, {HOW_TO_GET}"
        )
    if len(labels) and (labels.min() < 1 or labels.max() > 10):
        raise DataError(
            f"STL-10 label file '{path}' has labels in [{labels.min()}, {labels.max()}], expected 1..10; "
            f"{HOW_TO_GET}"
        )
    return labels - 1


def _download(root: str | None) -> None:
    if not root:
        raise DataError("data.download: true needs data.root, the folder to download into; set data.root")
    try:
        import torchvision

        torchvision.datasets.STL10(root, split="train", download=True)
    except Exception as e:  # network errors come in many types
        raise DataError(
            f"downloading STL-10 into '{root}' failed ({type(e).__name__}: {e}); check the internet "
            f"connection or download stl10_binary.tar.gz by hand from {STL10_URL}"
        ) from None


def load_stl10(root: str | None = None, download: bool = False, unlabeled: bool = True) -> RawDataset:
    """STL-10 from the official binaries; ``unlabeled`` also maps ``unlabeled_X.bin``."""
    if download:
        _download(root)
    required = ["train_X.bin", "train_y.bin", "test_X.bin", "test_y.bin"]
    folder = find_dataset_dir(root, "stl10_binary", lambda p: any((p / f).is_file() for f in required))
    if folder is None:
        raise DataError(
            f"STL-10 not found: expected 'stl10_binary/' with {', '.join(required)} and unlabeled_X.bin "
            f"under data.root ({searched(root)}); {HOW_TO_GET}"
        )
    missing = [f for f in required if not (folder / f).is_file()]
    if unlabeled and not (folder / "unlabeled_X.bin").is_file():
        missing.append("unlabeled_X.bin (or set data.unlabeled: false)")
    if missing:
        raise DataError(f"STL-10 in '{folder}' lacks {', '.join(missing)}; {HOW_TO_GET}")
    arrays = {}
    for split in ("train", "test"):
        images = read_images(folder / f"{split}_X.bin")
        arrays[split] = (images, read_labels(folder / f"{split}_y.bin", len(images)))
    classes = list(STL10_CLASSES)
    names_file = folder / "class_names.txt"
    if names_file.is_file():
        classes = [line.strip() for line in names_file.read_text(errors="replace").splitlines() if line.strip()]
        if len(classes) != 10:
            raise DataError(f"STL-10 '{names_file}' names {len(classes)} classes, expected 10 lines; {HOW_TO_GET}")
    mean, std = channel_stats(arrays["train"][0])
    return RawDataset(
        name="stl10",
        train_images=arrays["train"][0], train_labels=arrays["train"][1],
        test_images=arrays["test"][0], test_labels=arrays["test"][1],
        classes=classes, mean=mean, std=std, location=str(folder),
        unlabeled_images=read_images(folder / "unlabeled_X.bin") if unlabeled else None,
    )
