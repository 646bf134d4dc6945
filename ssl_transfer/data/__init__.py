"""Datasets: raw sources, splits, augmented views and loaders."""

from .datasets import ArrayDataset, DataBundle, normalise, split_train_val
from .idx import read_idx
from .sources import RawDataset, load_raw
from .views import multi_view_transform

__all__ = [
    "ArrayDataset", "DataBundle", "RawDataset", "load_raw", "multi_view_transform",
    "normalise", "read_idx", "split_train_val",
]
