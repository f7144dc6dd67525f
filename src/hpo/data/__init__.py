"""Datasets: a registry of loaders, seeded stratified splits, and batched on-device augmentation.

Images are held as uint8 arrays (N, C, H, W) and shared with every trial through Ray's object store;
conversion to float, augmentation and normalisation happen per batch where the model runs.
"""

from hpo.data._private import DATASETS, ImageData, SourceData, list_datasets, load_data, split_record, stratified_sample

__all__ = ["DATASETS", "ImageData", "SourceData", "list_datasets", "load_data", "split_record", "stratified_sample"]
