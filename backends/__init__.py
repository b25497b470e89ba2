"""Training engines, one package per framework, reached through one small registry.

Importing this package imports no framework: a command names its backend, the run shell calls `configure` and
`create_engine` on that one only, so TensorFlow and torch never meet in one process (importing TensorFlow and
then torchvision segfaults, docs/platform-facts.md).
"""

from __future__ import annotations

import importlib
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

BACKENDS = ("tensorflow", "torch", "sim")
#: the backends that load a framework; the other one must not be in the process already
_FRAMEWORKS = {"tensorflow": "torch", "torch": "tensorflow"}


@dataclass(frozen=True)
class EngineSpec:
    """Everything an engine needs to build its model and optimizer."""

    model: str
    input_shape: tuple[int, ...]
    num_classes: int
    optimizer: str
    learning_rate: float
    weight_decay: float
    momentum: float | None = None  # SGD momentum where the method sets it explicitly (gossip, compress)
    nesterov: bool = False
    device: str = "cpu"  # what select_device chose for this rank: "cpu" or "gpu:N"
    options: Mapping[str, Any] = field(default_factory=dict)  # a backend's own settings (sim: params, example_time)


def _module(backend: str) -> Any:
    if backend not in BACKENDS:
        raise ValueError(f"unknown backend {backend!r}")
    other = _FRAMEWORKS.get(backend)
    if other is not None and other in sys.modules:
        raise RuntimeError(f"{other} is already imported in this process; the {backend} backend must run in a "
                           "process of its own (TensorFlow with torchvision segfaults)")
    return importlib.import_module(f"anytimectl.backends.{backend}.engine")


def configure(backend: str, threads: int, seed: int) -> None:
    """Threads and seeds, before the framework runs its first operation."""
    _module(backend).configure(threads, seed)


def create_engine(backend: str, spec: EngineSpec) -> Any:
    return _module(backend).create_engine(spec)


def framework_versions(backend: str) -> dict[str, str]:
    return _module(backend).framework_versions()


def model_names(backend: str) -> tuple[str, ...]:
    return importlib.import_module(f"anytimectl.backends.{backend}").MODELS


def default_model(backend: str, dataset: str) -> str:
    return importlib.import_module(f"anytimectl.backends.{backend}").DEFAULT_MODEL[dataset]
