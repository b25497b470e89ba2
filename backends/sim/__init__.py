"""The simulated backend (`--backend sim`): the protocols at cluster scale on one machine, with no framework.

Its engine (engine.py) meets the same flat-buffer contract as the TensorFlow and torch engines, but computing
an example means sleeping `--sim-example-time` seconds, its parameters are a float32 buffer of `--sim-params`
values that really travel through the communication layer, and its loss and accuracy follow a documented
synthetic curve of the examples the model has been trained on (`curve`). Everything around it (launcher,
stragglers, run directory, live view, plots) is the real code path, so 10, 64 or 256 workers run on a laptop.

A sim rank imports numpy, mpi4py and the runtime, never TensorFlow or torch; its data are example numbers only
(`synthetic_dataset`), 12 bytes per example.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

MODELS = ("sim",)
#: every dataset name maps to the one simulated model
DEFAULT_MODEL = {name: "sim" for name in ("sim", "digits", "iris", "toy", "mnist", "fashion-mnist", "cifar10")}
MODEL_INPUT = {"sim": (1,)}
#: the simulated test split: its size only sets how noisy the measured accuracy is
TEST_EXAMPLES = 10_000
NUM_CLASSES = 10


@dataclass(frozen=True)
class Curve:
    """The synthetic learning curve, a function of e = examples the model has been trained on.

    loss(e)     = loss_end + (loss_start - loss_end) / (1 + e / half)
    accuracy(e) = acc_end - (acc_end - acc_start) / (1 + e / half)
    A step's training loss is loss(e) of the model each worker computed on, per micro-batch of k examples with
    relative noise `noise / sqrt(k)` (a seeded normal draw); the test loss and accuracy are measured on n test
    examples with the same relative noise on the loss and binomial noise on the accuracy. `half` is the examples
    after which loss and accuracy are halfway to their final values (`--sim-half-examples`).
    """

    half: float = 20_000.0
    loss_start: float = math.log(NUM_CLASSES)  # chance level for 10 classes
    loss_end: float = 0.05
    acc_start: float = 1.0 / NUM_CLASSES
    acc_end: float = 0.98
    noise: float = 0.3

    def loss(self, examples: float) -> float:
        return self.loss_end + (self.loss_start - self.loss_end) / (1.0 + examples / self.half)

    def accuracy(self, examples: float) -> float:
        return self.acc_end - (self.acc_end - self.acc_start) / (1.0 + examples / self.half)


def synthetic_dataset(train_examples: int, test_examples: int = TEST_EXAMPLES):
    """A dataset of example numbers: x[i] = [i] (float32), y = 0. The sim engine reads only how many examples
    it is given and their numbers (which seed its noise), so shards, epochs and batches work as for real data."""
    from anytimectl.data import Dataset

    x_train = np.arange(train_examples, dtype=np.float32)[:, None]
    x_test = np.arange(test_examples, dtype=np.float32)[:, None]
    return Dataset("sim", x_train, np.zeros(train_examples, dtype=np.int64), x_test,
                   np.zeros(test_examples, dtype=np.int64), num_classes=NUM_CLASSES)


def make_dataset(config: Any):
    """The run's data for the master-worker protocols: `--sim-examples` training examples."""
    return synthetic_dataset(int(config.backend_options["examples"]))
