"""Data, framework-free: every backend trains on the same numpy arrays in the same order.

- `datasets`: the datasets as plain numpy arrays (the small ones from scikit-learn, MNIST-format and CIFAR-10 from
  files the user has), `load_dataset` and `describe_dataset` (shapes and sizes without loading);
- `sharding`: each worker's disjoint shard, the fixed test subset, the pre-launch example checks and `BatchStream`;
- `input_transform`: per-batch image transforms in numpy (resize, channels, normalisation, augmentation).

The package's names below are what the rest of anytimectl uses (`from anytimectl.data import load_dataset`).
"""

from anytimectl.data.datasets import DATASETS, Dataset, DatasetInfo, describe_dataset, load_dataset
from anytimectl.data.sharding import (
    BatchStream,
    check_enough_examples,
    check_whole_batches,
    shard_indices,
    test_size_used,
    test_subset,
)

__all__ = ["DATASETS", "BatchStream", "Dataset", "DatasetInfo", "check_enough_examples", "check_whole_batches",
           "describe_dataset", "load_dataset", "shard_indices", "test_size_used", "test_subset"]
