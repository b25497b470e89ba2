"""The small CNN of the Fashion-MNIST results (`--model tests/bench/fmnist_cnn.py:build`, torch).

Two strided convolutions and one linear layer, about 0.32 M multiply-adds and 21 k parameters per 28x28 image:
about 90x cheaper per example than the built-in `mnist` model (3.3 M parameters), so that a sweep of some forty
multi-rank runs fits an hour on two shared cores, while it still reaches 85-90% test accuracy on Fashion-MNIST
within a fraction of an epoch. The DDP comparison (tests/bench/ddp_vs_dynamic_static.py) builds the same model.
"""

from __future__ import annotations


def build(input_shape, num_classes):
    import torch.nn as nn

    channels = input_shape[-1] if len(input_shape) == 3 else 1
    return nn.Sequential(
        nn.Conv2d(channels, 16, 5, stride=2, padding=2), nn.ReLU(),
        nn.Conv2d(16, 32, 3, stride=2, padding=1), nn.ReLU(),
        nn.Flatten(), nn.Linear(32 * 7 * 7, num_classes))
