"""Data, framework-free: every backend trains on the same numpy arrays in the same order.

- `datasets`: the datasets as plain numpy arrays (the small ones from scikit-learn, MNIST-format and CIFAR-10 from
  files the user has), `load_dataset` and `describe_dataset` (shapes and sizes without loading);
- `sharding`: each worker's disjoint shard, the fixed test subset, the pre-launch example checks and `BatchStream`;
- `input_transform`: per-batch image transforms in numpy (resize, channels, normalisation, augmentation).

The package's names below are what the rest of anytimectl uses (`from anytimectl.data import load_dataset`).
They are imported from their module when first used, so that `--help` (which reads `DATASETS`, defined here)
imports no numpy.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

DATASETS = ("digits", "iris", "toy", "mnist", "fashion-mnist", "cifar10")

_MODULE_OF = {"Dataset": "datasets", "DatasetInfo": "datasets", "describe_dataset": "datasets",
              "load_dataset": "datasets", "BatchStream": "sharding", "check_enough_examples": "sharding",
              "check_whole_batches": "sharding", "shard_indices": "sharding", "test_size_used": "sharding",
              "test_subset": "sharding"}

if TYPE_CHECKING:
    from anytimectl.data.datasets import Dataset, DatasetInfo, describe_dataset, load_dataset
    from anytimectl.data.sharding import (
        BatchStream,
        check_enough_examples,
        check_whole_batches,
        shard_indices,
        test_size_used,
        test_subset,
    )


def __getattr__(name: str) -> Any:
    if name not in _MODULE_OF:
        raise AttributeError(f"module 'anytimectl.data' has no attribute {name!r}")
    value = getattr(importlib.import_module(f"anytimectl.data.{_MODULE_OF[name]}"), name)
    globals()[name] = value
    return value


__all__ = ["DATASETS", "BatchStream", "Dataset", "DatasetInfo", "check_enough_examples", "check_whole_batches",
           "describe_dataset", "load_dataset", "shard_indices", "test_size_used", "test_subset"]
