"""Data sets (uint8 images + labels) and batched, per-sample augmentation on the training device."""

from bench.data.datasets import (  # noqa: F401
    DataNotFoundError,
    ImageSet,
    dataset_stats,
    list_datasets,
    load_dataset,
    split_train_val,
    stratified_subset,
)
