"""Datasets: sources (array- or file-backed), splits, augmented views and loaders."""

from .base import FileDataset, RawDataset, Source, channel_stats
from .datasets import DataBundle, normalise, split_train_val
from .idx import read_idx
from .sources import SOURCES, load_raw, load_source
from .views import multi_view_transform, view_params

__all__ = [
    "SOURCES", "DataBundle", "FileDataset", "RawDataset", "Source", "channel_stats",
    "load_raw", "load_source", "multi_view_transform", "normalise", "read_idx", "split_train_val",
    "view_params",
]
