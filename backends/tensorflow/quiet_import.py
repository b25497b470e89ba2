"""Import TensorFlow and Keras once, without the C++ start-up notes that ignore TF_CPP_MIN_LOG_LEVEL.

Every module of this backend imports `tf` and `keras` from here, so users never see CUDA-probing and oneDNN
banners on a CPU machine (real errors still raise as usual). The first device query prints again: wrap it in
`native_stderr_silenced` too. It also keeps Keras from loading its optional integrations (`keras_optional_hidden`),
a third of TensorFlow's start-up CPU in every rank.
"""

from __future__ import annotations

import contextlib
import importlib.abc
import os
import sys
from collections.abc import Iterator


@contextlib.contextmanager
def native_stderr_silenced() -> Iterator[None]:
    """Send file descriptor 2 to /dev/null for the duration (C++ code writes there directly)."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    sys.stderr.flush()
    saved = os.dup(2)
    try:
        with open(os.devnull, "w") as devnull:
            os.dup2(devnull.fileno(), 2)
            yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)


#: Keras's optional integrations: it imports each, where installed, when TensorFlow loads it (a scikit-learn
#: wrapper, pandas inputs, an image gallery), and anytimectl uses none of them.
_KERAS_OPTIONAL = ("sklearn", "pandas", "matplotlib")


class _OptionalHidden(importlib.abc.MetaPathFinder):
    """While TensorFlow and Keras load, their optional packages look absent, as on an install without them (which
    Keras supports: it imports each in a `try` and goes on without it). They took 1.8 s of the 5.4 s of CPU that
    importing TensorFlow cost a rank on our 2-core machine. Only the import during TensorFlow's is affected: a
    package already loaded stays as it is, and any import after this module's is the usual one."""

    def find_spec(self, name: str, path: object = None, target: object = None) -> None:
        if name.partition(".")[0] in _KERAS_OPTIONAL:
            raise ModuleNotFoundError(f"No module named {name!r}", name=name)
        return None


@contextlib.contextmanager
def keras_optional_hidden() -> Iterator[None]:
    finder = _OptionalHidden()
    sys.meta_path.insert(0, finder)
    try:
        yield
    finally:
        sys.meta_path.remove(finder)


with native_stderr_silenced(), keras_optional_hidden():
    import keras
    import tensorflow as tf

__all__ = ["keras", "native_stderr_silenced", "tf"]
