"""Dataset sources: each returns raw arrays of the official train and test splits.

``fashion_mnist`` reads the four gz IDX files of Fashion-MNIST. It looks, in order, in
``data.root`` from the config, in ``$SSL_TRANSFER_DATA``, and in the folder of the Debian
package ``dataset-fashion-mnist`` (/usr/share/datasets/fashion-mnist). Inside each of these it
accepts the files directly or torchvision's layout (``FashionMNIST/raw/``). Download through
torchvision happens only when ``data.download`` is true.

``digits`` is scikit-learn's bundled 8x8 digits set (1797 images), split 80/20 with a fixed
seed; it needs no install.

``cifar10``/``cifar100`` (cifar.py), ``stl10`` (stl10.py) and ``imagenet``/``imagenet100``/
``image_folder`` (folders.py) read their official on-disk formats; docs/datasets.md lists what
each expects where. :func:`load_source` builds the source a :class:`DataConfig` names.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial
from pathlib import Path

import numpy as np

from ..errors import DataError
from .base import FileDataset, RawDataset, Source, channel_stats, data_roots  # noqa: F401  (re-exported)
from .cifar import load_cifar
from .folders import load_image_folder
from .idx import read_idx
from .metric import METRIC_SOURCES
from .stl10 import load_stl10

DEBIAN_FASHION_MNIST = Path("/usr/share/datasets/fashion-mnist")
FASHION_MNIST_FILES = {
    "train_images": "train-images-idx3-ubyte",
    "train_labels": "train-labels-idx1-ubyte",
    "test_images": "t10k-images-idx3-ubyte",
    "test_labels": "t10k-labels-idx1-ubyte",
}
FASHION_MNIST_CLASSES = [
    "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
    "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
]


def _find_file(folder: Path, stem: str) -> Path | None:
    for sub in ("", "FashionMNIST/raw", "raw"):
        for suffix in (".gz", ""):
            p = folder / sub / (stem + suffix)
            if p.is_file():
                return p
    return None


def fashion_mnist_candidates(root: str | None) -> list[tuple[str, Path]]:
    """Folders searched for Fashion-MNIST, in order, each with where it came from."""
    return [*data_roots(root), ("Debian package dataset-fashion-mnist", DEBIAN_FASHION_MNIST)]


def load_fashion_mnist(root: str | None = None, download: bool = False) -> RawDataset:
    if download:
        if not root:
            raise DataError("data.download: true needs data.root, the folder to download into; set data.root")
        try:
            import torchvision

            torchvision.datasets.FashionMNIST(root, train=True, download=True)
            torchvision.datasets.FashionMNIST(root, train=False, download=True)
        except Exception as e:  # network errors come in many types
            raise DataError(
                f"downloading Fashion-MNIST into '{root}' failed ({type(e).__name__}: {e}); "
                "check the internet connection or install the Debian package dataset-fashion-mnist"
            ) from None
    candidates = fashion_mnist_candidates(root)
    for origin, folder in candidates:
        files = {k: _find_file(folder, stem) for k, stem in FASHION_MNIST_FILES.items()}
        found = [k for k, v in files.items() if v is not None]
        if not found:
            continue
        if len(found) < len(files):
            missing = [FASHION_MNIST_FILES[k] + ".gz" for k in files if files[k] is None]
            raise DataError(
                f"Fashion-MNIST in '{folder}' ({origin}) lacks {', '.join(missing)}; "
                "copy all four IDX files there or re-install dataset-fashion-mnist"
            )
        arrays = {k: read_idx(p) for k, p in files.items()}
        for split in ("train", "test"):
            imgs, labels = arrays[f"{split}_images"], arrays[f"{split}_labels"]
            if imgs.ndim != 3 or labels.ndim != 1 or len(imgs) != len(labels):
                raise DataError(
                    f"Fashion-MNIST {split} files in '{folder}' do not match: images "
                    f"{imgs.shape}, labels {labels.shape}; re-download them"
                )
        mean, std = channel_stats(arrays["train_images"])
        return RawDataset(
            name="fashion_mnist",
            train_images=arrays["train_images"],
            train_labels=arrays["train_labels"].astype(np.int64),
            test_images=arrays["test_images"],
            test_labels=arrays["test_labels"].astype(np.int64),
            classes=list(FASHION_MNIST_CLASSES),
            mean=mean,
            std=std,
            location=str(folder),
        )
    searched = "; ".join(f"{origin}: {folder}" for origin, folder in candidates)
    raise DataError(
        f"Fashion-MNIST not found (searched {searched}); install it with "
        "'sudo apt-get install dataset-fashion-mnist', or set data.root / $SSL_TRANSFER_DATA to a "
        "folder with the four *-ubyte.gz files, or set data.download: true with data.root to "
        "let torchvision download it"
    )


def load_digits_dataset(root: str | None = None, download: bool = False) -> RawDataset:
    from sklearn.datasets import load_digits

    bunch = load_digits()
    # pixel values 0..16 -> 0..255
    images = np.clip(np.round(bunch.images * (255.0 / 16.0)), 0, 255).astype(np.uint8)
    labels = bunch.target.astype(np.int64)
    perm = np.random.default_rng(0).permutation(len(images))
    n_test = len(images) // 5
    test_idx, train_idx = perm[:n_test], perm[n_test:]
    mean, std = channel_stats(images[train_idx])
    return RawDataset(
        name="digits",
        train_images=images[train_idx],
        train_labels=labels[train_idx],
        test_images=images[test_idx],
        test_labels=labels[test_idx],
        classes=[str(i) for i in range(10)],
        mean=mean,
        std=std,
        location="sklearn.datasets.load_digits",
    )


SOURCES: dict[str, Callable[..., Source]] = {
    "fashion_mnist": load_fashion_mnist,
    "digits": load_digits_dataset,
    "cifar10": partial(load_cifar, "cifar10"),
    "cifar100": partial(load_cifar, "cifar100"),
    "stl10": load_stl10,
    "imagenet": partial(load_image_folder, "imagenet"),
    "imagenet100": partial(load_image_folder, "imagenet100"),
    "image_folder": partial(load_image_folder, "image_folder"),
    **METRIC_SOURCES,
}
#: Options each source takes beyond root and download (the matching DataConfig keys).
SOURCE_OPTIONS = {"stl10": ("unlabeled",), "imagenet": ("class_list",), "imagenet100": ("class_list",),
                  "image_folder": ("class_list",), **{name: ("verify_counts",) for name in METRIC_SOURCES}}


def load_raw(name: str, root: str | None = None, download: bool = False, **options) -> Source:
    """The source ``name``; ``options`` not taken by that source (see SOURCE_OPTIONS) are ignored."""
    if name not in SOURCES:
        raise DataError(f"unknown dataset '{name}'; use one of {', '.join(SOURCES)}")
    kwargs = {k: v for k, v in options.items() if k in SOURCE_OPTIONS.get(name, ())}
    return SOURCES[name](root=root, download=download, **kwargs)


def load_source(cfg) -> Source:
    """The source a :class:`~ssl_transfer.config.DataConfig` names."""
    return load_raw(cfg.name, cfg.root, cfg.download, class_list=cfg.class_list, unlabeled=cfg.unlabeled,
                    verify_counts=cfg.verify_counts)

