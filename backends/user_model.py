"""A user's own network, `--model path/to/file.py:build`, for either framework.

The file is imported by path (it need not be on sys.path) and `build` is called with (input_shape, num_classes)
when it takes two arguments, or with none; the backend checks that what comes back is its kind of model. Nothing
here imports a framework, so the CLI can check the spec before launching.
"""

from __future__ import annotations

import importlib.util
import inspect
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from anytimectl.errors import UsageError


def is_user_model(spec: str) -> bool:
    path, _, function = spec.partition(":")
    return bool(function) and path.endswith(".py")


def load_user_builder(spec: str) -> Callable[[tuple[int, ...], int], Any]:
    """The builder named by `path/to/file.py:function`, as a function of (input_shape, num_classes)."""
    path_text, _, name = spec.partition(":")
    path = Path(path_text).expanduser()
    if not path.is_file():
        raise UsageError(f"--model {spec}: no such file {path}")
    module_name = f"anytimectl_user_model_{abs(hash(str(path.resolve())))}"
    loader = importlib.util.spec_from_file_location(module_name, path)
    if loader is None or loader.loader is None:
        raise UsageError(f"--model {spec}: {path} is not a Python file")
    module = importlib.util.module_from_spec(loader)
    sys.modules[module_name] = module
    try:
        loader.loader.exec_module(module)
    except Exception as error:  # noqa: BLE001 - the user's code: report it in one line
        raise UsageError(f"--model {spec}: importing {path} failed: {type(error).__name__}: {error}") from None
    function = getattr(module, name, None)
    if not callable(function):
        raise UsageError(f"--model {spec}: {path} has no function {name!r}")
    try:
        takes = len(inspect.signature(function).parameters)
    except (TypeError, ValueError):
        takes = 2

    def build(input_shape: tuple[int, ...], num_classes: int) -> Any:
        try:
            return function(input_shape, num_classes) if takes >= 2 else function()
        except Exception as error:  # noqa: BLE001 - the user's code
            raise UsageError(f"--model {spec}: {name}() failed: {type(error).__name__}: {error}") from None

    return build
