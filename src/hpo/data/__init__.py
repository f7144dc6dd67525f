"""Datasets: loaders by name (declared in ``hpo.config.study.DATASET_FORMATS``), seeded stratified splits,
and batched on-device augmentation.

Images are held as uint8 arrays (N, C, H, W) and shared with every trial through Ray's object store;
conversion to float, augmentation and normalisation happen per batch where the model runs.
"""

from hpo.data._private import get_loader, list_datasets, load_data
from hpo.data.images import FileImages, ImageData, SourceData, split_record
from hpo.data.splits import stratified_sample

__all__ = [
    "FileImages",
    "ImageData",
    "SourceData",
    "get_loader",
    "list_datasets",
    "load_data",
    "split_record",
    "stratified_sample",
]
