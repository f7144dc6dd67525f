from __future__ import annotations

import importlib
import os
from collections.abc import Callable
from pathlib import Path

import numpy as np

from hpo.config.study import DATASET_FORMATS, DatasetConfig
from hpo.data.images import FileImages, ImageData, SourceData
from hpo.data.splits import strata, stratified_sample

STATS_SAMPLE = 2000  # streamed images: how many the normalisation statistics are taken from

Loader = Callable[[DatasetConfig, Path | None], SourceData]  # (the study's dataset, its data folder)


def list_datasets() -> list[str]:
    return sorted(DATASET_FORMATS)


def get_loader(name: str) -> Loader:
    """The function that reads dataset ``name``, as its declaration (``hpo.config.study.DATASET_FORMATS``)
    names it; its module is imported only now, so a worker imports only the loaders it uses."""
    if name not in DATASET_FORMATS:
        raise KeyError(f"unknown dataset {name!r}; known: {', '.join(list_datasets())}")
    module, _, function = DATASET_FORMATS[name].loader.partition(":")
    loader: Loader = getattr(importlib.import_module(module), function)
    return loader


def load_data(config: DatasetConfig, seed: int) -> ImageData:
    """Load the dataset named in the study, then take its seeded, stratified subset and split."""
    loader = get_loader(config.name)
    data_dir = config.data_dir or os.environ.get("HPO_DATA_DIR")
    source = loader(config, Path(data_dir).expanduser() if data_dir else None)

    rng = np.random.default_rng(seed)
    strata_train, strata_test = strata(source.y_train), strata(source.y_test)
    train_pool = np.arange(len(source.y_train))
    test_index = np.arange(len(source.y_test))
    if config.subset and config.subset.train:
        train_pool = stratified_sample(strata_train, config.subset.train, rng)
    if config.subset and config.subset.test:
        test_index = stratified_sample(strata_test, config.subset.test, rng)
    n_val = min(
        len(train_pool) - 1,
        max(len(np.unique(strata_train[train_pool])), round(len(train_pool) * config.validation_split)),
    )
    val_local = stratified_sample(strata_train[train_pool], n_val, rng)
    val_index = train_pool[val_local]
    train_index = np.setdiff1d(train_pool, val_index)  # sorted; the trainer shuffles every epoch

    x_train = source.x_train[train_index]
    # normalisation statistics; streamed images: from a seeded sample of them (reading all is the point
    # streaming avoids)
    sample = x_train
    if isinstance(x_train, FileImages) and len(x_train) > STATS_SAMPLE:
        sample = x_train[np.sort(rng.choice(len(x_train), STATS_SAMPLE, replace=False))]
    pixels = np.asarray(sample).astype(np.float32) / 255.0
    mean = tuple(float(m) for m in pixels.mean(axis=(0, 2, 3)))
    std = tuple(float(s) for s in pixels.std(axis=(0, 2, 3)))
    return ImageData(
        x_train=x_train,
        y_train=source.y_train[train_index],
        x_val=source.x_train[val_index],
        y_val=source.y_train[val_index],
        x_test=source.x_test[test_index],
        y_test=source.y_test[test_index],
        classes=source.classes,
        mean=mean,
        std=std,
        train_index=train_index,
        val_index=val_index,
        test_index=test_index,
        origin=source.origin,
    )
