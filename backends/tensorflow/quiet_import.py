"""Import TensorFlow and Keras once, without the C++ start-up notes that ignore TF_CPP_MIN_LOG_LEVEL.

Every module of this backend imports `tf` and `keras` from here, so users never see CUDA-probing and oneDNN
banners on a CPU machine (real errors still raise as usual). The first device query prints again: wrap it in
`native_stderr_silenced` too.
"""

from __future__ import annotations

import contextlib
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


with native_stderr_silenced():
    import keras
    import tensorflow as tf

__all__ = ["keras", "native_stderr_silenced", "tf"]
