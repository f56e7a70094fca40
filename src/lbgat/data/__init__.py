"""Datasets: readers for the standard on-disk layouts, the embedded mnist-5k, and the downloader.

Every reader returns a :class:`Dataset` of uint8 (N, C, H, W) images and int64 labels.
"""

from .base import Dataset, ImageSet
from .download import download_dataset
from .registry import DatasetInfo, get_dataset_info, list_datasets, load_dataset
from .tensors import from_tensors

__all__ = [
    "Dataset",
    "DatasetInfo",
    "ImageSet",
    "download_dataset",
    "from_tensors",
    "get_dataset_info",
    "list_datasets",
    "load_dataset",
]
