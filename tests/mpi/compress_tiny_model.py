"""A tiny convolutional network with batch norm for the compression tests: small enough for a few MPI steps of every
method on two shared cores, with batch-norm statistics so that the dense remainder beside the compressed gradient
is really exercised (the digits CNN has none). `--model tests/mpi/compress_tiny_model.py:build`."""


def build(shape, classes):
    from torch import nn

    height, width, channels = shape
    return nn.Sequential(
        nn.Conv2d(channels, 6, 3, padding=1, bias=False), nn.BatchNorm2d(6), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(6, 8, 3, padding=1), nn.ReLU(), nn.Flatten(),
        nn.Linear(8 * (height // 2) * (width // 2), classes))
