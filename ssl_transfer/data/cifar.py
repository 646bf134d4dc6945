"""CIFAR-10 and CIFAR-100 in their official "python version" format.

On disk (https://www.cs.toronto.edu/~kriz/cifar.html, ``cifar-10-python.tar.gz`` /
``cifar-100-python.tar.gz``, unpacked)::

    <data.root>/cifar-10-batches-py/data_batch_1 .. data_batch_5, test_batch, batches.meta
    <data.root>/cifar-100-python/train, test, meta

Each batch file is a pickled dict: ``data`` uint8 (N, 3072), one image per row as three
32x32 row-major planes R, G, B (byte ``c*1024 + r*32 + col`` of row k is channel c of image k
at (r, col)); ``labels`` (CIFAR-10) or ``fine_labels`` (CIFAR-100), N ints. ``batches.meta``
(``label_names``) and ``meta`` (``fine_label_names``) name the classes. Keys are byte
strings in the official (Python 2) files and are accepted either way. ``data.root`` may also
point at the ``cifar-*`` folder itself.
"""

from __future__ import annotations

import pickle
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import DataError
from .base import RawDataset, channel_stats, find_dataset_dir, searched

CIFAR_URL = "https://www.cs.toronto.edu/~kriz/cifar.html"

SPECS: dict[str, dict[str, Any]] = {
    "cifar10": {
        "title": "CIFAR-10", "folder": "cifar-10-batches-py", "archive": "cifar-10-python.tar.gz",
        "train": [f"data_batch_{i}" for i in range(1, 6)], "test": ["test_batch"],
        "meta": "batches.meta", "label_key": "labels", "names_key": "label_names",
        "num_classes": 10, "torchvision": "CIFAR10",
    },
    "cifar100": {
        "title": "CIFAR-100", "folder": "cifar-100-python", "archive": "cifar-100-python.tar.gz",
        "train": ["train"], "test": ["test"], "meta": "meta", "label_key": "fine_labels",
        "names_key": "fine_label_names", "num_classes": 100, "torchvision": "CIFAR100",
    },
}


def _how_to_get(spec: dict[str, Any]) -> str:
    return (f"download {spec['archive']} from {CIFAR_URL} and unpack it into data.root, or set "
            "data.download: true (with data.root) to let torchvision download it")


def _str(x: Any) -> str:
    return x.decode("latin1") if isinstance(x, bytes) else str(x)


def unpickle(path: Path, spec: dict[str, Any]) -> dict[str, Any]:
    """The dict stored in a CIFAR pickle, keys as str; malformed files raise DataError."""
    try:
        with open(path, "rb") as f:
            d = pickle.load(f, encoding="latin1")
    except Exception as e:  # truncated or corrupt pickles raise many types
        raise DataError(
            f"cannot read {spec['title']} file '{path}' as a pickle ({type(e).__name__}); it is "
            f"truncated or corrupt, {_how_to_get(spec)}"
        ) from None
    if not isinstance(d, dict):
        raise DataError(f"{spec['title']} file '{path}' holds a {type(d).__name__}, not a dict; {_how_to_get(spec)}")
    return {_str(k): v for k, v in d.items()}


def read_batch(path: Path, spec: dict[str, Any]) -> tuple[np.ndarray, np.ndarray]:
    """One batch file -> images uint8 (N, 32, 32, 3) HWC and labels int64 (N,)."""
    d = unpickle(path, spec)
    key = spec["label_key"]
    for k in ("data", key):
        if k not in d:
            raise DataError(
                f"{spec['title']} file '{path}' lacks the key '{k}' (has {sorted(d)}); it is not a "
                f"{spec['title']} batch, {_how_to_get(spec)}"
            )
    data = d["data"]
    if not isinstance(data, np.ndarray) or data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3072:
        what = f"{data.dtype} array of shape {data.shape}" if isinstance(data, np.ndarray) else type(data).__name__
        raise DataError(
            f"{spec['title']} file '{path}' holds 'data' as a {what}, expected uint8 (N, 3072) "
            f"(32x32 RGB images); {_how_to_get(spec)}"
        )
    try:
        labels = np.asarray(d[key], dtype=np.int64)
    except (TypeError, ValueError):
        labels = np.zeros(0)
    if labels.shape != (len(data),):
        raise DataError(
            f"{spec['title']} file '{path}' has {len(data)} images but '{key}' is not a list of "
            f"{len(data)} integers; {_how_to_get(spec)}"
        )
    k = spec["num_classes"]
    if len(labels) and (labels.min() < 0 or labels.max() >= k):
        raise DataError(
            f"{spec['title']} file '{path}' has labels in [{labels.min()}, {labels.max()}], expected "
            f"0..{k - 1}; {_how_to_get(spec)}"
        )
    return data.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1), labels


def _download(name: str, root: str | None) -> None:
    spec = SPECS[name]
    if not root:
        raise DataError("data.download: true needs data.root, the folder to download into; set data.root")
    try:
        import torchvision

        cls = getattr(torchvision.datasets, spec["torchvision"])
        cls(root, train=True, download=True)
        cls(root, train=False, download=True)
    except Exception as e:  # network errors come in many types
        raise DataError(
            f"downloading {spec['title']} into '{root}' failed ({type(e).__name__}: {e}); check the "
            f"internet connection or download {spec['archive']} by hand from {CIFAR_URL}"
        ) from None


def load_cifar(name: str, root: str | None = None, download: bool = False) -> RawDataset:
    """CIFAR-10 (``name='cifar10'``) or CIFAR-100 (``'cifar100'``) from the official pickles."""
    spec = SPECS[name]
    if download:
        _download(name, root)
    folder = find_dataset_dir(root, spec["folder"], lambda p: (p / spec["meta"]).is_file()
                              or any((p / f).is_file() for f in spec["train"]))
    if folder is None:
        raise DataError(
            f"{spec['title']} not found: expected '{spec['folder']}/' with "
            f"{', '.join(spec['train'] + spec['test'] + [spec['meta']])} under data.root "
            f"({searched(root)}); {_how_to_get(spec)}"
        )
    missing = [f for f in spec["train"] + spec["test"] + [spec["meta"]] if not (folder / f).is_file()]
    if missing:
        raise DataError(f"{spec['title']} in '{folder}' lacks {', '.join(missing)}; {_how_to_get(spec)}")
    meta = unpickle(folder / spec["meta"], spec)
    names = meta.get(spec["names_key"])
    if not isinstance(names, (list, tuple)) or len(names) != spec["num_classes"]:
        raise DataError(
            f"{spec['title']} meta file '{folder / spec['meta']}' lacks a list of {spec['num_classes']} "
            f"'{spec['names_key']}'; {_how_to_get(spec)}"
        )
    splits = {}
    for split in ("train", "test"):
        parts = [read_batch(folder / f, spec) for f in spec[split]]
        images = np.ascontiguousarray(np.concatenate([p[0] for p in parts]))
        splits[split] = (images, np.concatenate([p[1] for p in parts]))
    mean, std = channel_stats(splits["train"][0])
    return RawDataset(
        name=name,
        train_images=splits["train"][0], train_labels=splits["train"][1],
        test_images=splits["test"][0], test_labels=splits["test"][1],
        classes=[_str(n) for n in names], mean=mean, std=std, location=str(folder),
    )
