"""Shared pytest fixtures (keep minimal: several modules' tests rely on this file)."""

from __future__ import annotations

import pytest

from bench.data.datasets import DataNotFoundError, ImageSet, load_dataset, stratified_subset


@pytest.fixture(scope="session")
def cifar10_small() -> tuple[ImageSet, ImageSet]:
    """(train, test) CIFAR-10 subsets: 100 and 20 images per class, seed 0.

    Reads $SSLBENCH_DATA_DIR through the uint8 cache (first run decodes once, ~8 s); skips
    the requesting test when CIFAR-10 is not available.
    """
    try:
        train, test = load_dataset("cifar10", "train"), load_dataset("cifar10", "test")
    except DataNotFoundError as exc:
        pytest.skip(f"CIFAR-10 not available: {str(exc).splitlines()[0]}")
    return stratified_subset(train, 100, seed=0), stratified_subset(test, 20, seed=0)
