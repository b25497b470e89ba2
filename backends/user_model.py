"""A user's own network, `--model path/to/file.py:build` (or `path/to/file.py`, meaning `:build`), for either
framework.

The file is imported by path (it need not be on sys.path; its own folder is on sys.path while it is imported, so
it can import its neighbours). `build` is called as `build(input_shape, num_classes)` when it takes two
arguments, or as `build()` when it takes none; input_shape is one example's shape as the data layer gives it
(height, width, channels for images; (features,) otherwise). The backend checks that what comes back is its kind
of model (a torch nn.Module, or a Keras model) and that it fits the data. Nothing here imports a framework, so the
CLI can check the spec before launching, and both backends share this loader.
"""

from __future__ import annotations

import hashlib
import importlib.util
import inspect
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from anytimectl.runtime.errors import UsageError

DEFAULT_FUNCTION = "build"


def is_user_model(spec: str) -> bool:
    """Whether --model names a file (`something.py` or `something.py:function`) rather than a built-in model."""
    path, _, _ = spec.partition(":")
    return path.endswith(".py")


def split_spec(spec: str) -> tuple[Path, str]:
    """(file, function name) of `path/to/file.py[:function]`."""
    path_text, _, name = spec.partition(":")
    return Path(path_text).expanduser(), name or DEFAULT_FUNCTION


def load_user_builder(spec: str) -> Callable[[tuple[int, ...], int], Any]:
    """The builder named by `path/to/file.py:function`, as a function of (input_shape, num_classes).

    Every failure (no file, an import error, no such function, a signature it cannot be called with, an error
    inside it) is a one-line UsageError naming the spec."""
    path, name = split_spec(spec)
    if not path.is_file():
        raise UsageError(f"--model {spec}: no such file {path}")
    resolved = path.resolve()
    module_name = "anytimectl_user_model_" + hashlib.sha1(str(resolved).encode()).hexdigest()[:12]
    loader = importlib.util.spec_from_file_location(module_name, resolved)
    if loader is None or loader.loader is None:
        raise UsageError(f"--model {spec}: {path} is not a Python file")
    module = importlib.util.module_from_spec(loader)
    sys.modules[module_name] = module  # classes defined there stay picklable (checkpoints)
    folder = str(resolved.parent)
    sys.path.insert(0, folder)
    try:
        loader.loader.exec_module(module)
    except (Exception, SystemExit, KeyboardInterrupt) as error:  # noqa: BLE001 - the user's code: one line
        # sys.exit() or a KeyboardInterrupt raised by the file itself would end the rank with a traceback (or
        # pass for a stop signal); a real Ctrl-C while importing is reported the same way and ends the start-up
        sys.modules.pop(module_name, None)
        words = f"{type(error).__name__}: {error}".splitlines()[0] if str(error) else type(error).__name__
        raise UsageError(f"--model {spec}: importing {path} failed: {words}") from None
    finally:
        if folder in sys.path:
            sys.path.remove(folder)
    function = getattr(module, name, None)
    if function is None:
        raise UsageError(f"--model {spec}: {path} has no function {name!r}")
    if not callable(function):
        raise UsageError(f"--model {spec}: {name!r} in {path} is a {type(function).__name__}, not a function")
    with_arguments = _takes_shape_and_classes(function, spec, name)

    def build(input_shape: tuple[int, ...], num_classes: int) -> Any:
        try:
            return function(tuple(input_shape), int(num_classes)) if with_arguments else function()
        except UsageError:
            raise
        except (Exception, SystemExit) as error:  # noqa: BLE001 - the user's code
            raise UsageError(f"--model {spec}: {name}() failed: {type(error).__name__}: {error}".splitlines()[0]) \
                from None

    return build


def _takes_shape_and_classes(function: Callable[..., Any], spec: str, name: str) -> bool:
    """True for build(input_shape, num_classes), False for build(); anything else is a usage error."""
    try:
        parameters = list(inspect.signature(function).parameters.values())
    except (TypeError, ValueError):  # a builtin or C callable: assume the documented form
        return True
    positional = [p for p in parameters if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    required = [p for p in positional if p.default is p.empty]
    required += [p for p in parameters if p.kind == p.KEYWORD_ONLY and p.default is p.empty]
    variadic = any(p.kind == p.VAR_POSITIONAL for p in parameters)
    if len(required) > 2 or any(p.kind == p.KEYWORD_ONLY for p in required):
        raise UsageError(f"--model {spec}: {name} must take (input_shape, num_classes) or no arguments, not "
                         f"{name}{inspect.signature(function)}")
    if len(positional) >= 2 or variadic:
        return True
    if not required:
        return False
    raise UsageError(f"--model {spec}: {name} must take (input_shape, num_classes) or no arguments, not "
                     f"{name}{inspect.signature(function)}")
