"""Per-batch image transforms in numpy, so every backend gets the same inputs: the dynamic-batching original's
recipe (MNIST resized to 224 x 224, grayscale replicated to 3 channels, ImageNet normalisation, for a torchvision
ResNet18) without materialising a 224 x 224 x 3 copy of the training set (MNIST would be 36 GB).

Resizing is bilinear with half-pixel centres (what torchvision's `Resize` does without antialiasing), as two small
matrix products per batch. A transformed engine (`TransformedEngine`) applies the transform to every batch it
computes or evaluates, and tells the model builder the transformed input shape.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from anytimectl.runtime.errors import UsageError

#: torchvision's ImageNet statistics (the original normalised its 3-channel grayscale MNIST with them)
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
#: ITU-R 601 luma, what torchvision's Grayscale uses to turn RGB into one channel
LUMA = (0.299, 0.587, 0.114)
EVAL_CHUNK = 256


def _interpolation(source: int, target: int) -> np.ndarray:
    """(target, source) matrix of bilinear weights with half-pixel centres."""
    matrix = np.zeros((target, source), dtype=np.float32)
    scale = source / target
    for i in range(target):
        position = min(max((i + 0.5) * scale - 0.5, 0.0), source - 1.0)
        low = int(np.floor(position))
        high = min(low + 1, source - 1)
        weight = position - low
        matrix[i, low] += 1.0 - weight
        matrix[i, high] += weight
    return matrix


@dataclass(frozen=True)
class InputTransform:
    """resize: side in pixels (None: keep); channels: 1 or 3 (None: keep); normalize: none or imagenet."""

    resize: int | None = None
    channels: int | None = None
    normalize: str = "none"

    @property
    def identity(self) -> bool:
        return self.resize is None and self.channels is None and self.normalize == "none"

    def check(self, input_shape: tuple[int, ...]) -> None:
        if self.identity:
            return
        if len(input_shape) != 3:
            raise UsageError(f"--resize, --channels and --normalize need image data (height x width x channels); "
                             f"this dataset's examples have shape {input_shape}")
        if self.channels not in (None, 1, 3):
            raise UsageError(f"--channels {self.channels}: give 1 or 3")
        if input_shape[2] not in (1, 3):
            raise UsageError(f"--channels: the images have {input_shape[2]} channels; only 1 or 3 convert")
        if self.normalize not in ("none", "imagenet"):
            raise UsageError(f"--normalize {self.normalize!r}: give none or imagenet")
        if self.normalize == "imagenet" and self.output_shape(input_shape)[2] != 3:
            raise UsageError("--normalize imagenet needs 3-channel images: add --channels 3")

    def output_shape(self, input_shape: tuple[int, ...]) -> tuple[int, ...]:
        if self.identity:
            return tuple(input_shape)
        height, width, channels = input_shape
        side_h, side_w = (self.resize, self.resize) if self.resize else (height, width)
        return (side_h, side_w, self.channels or channels)

    def __call__(self, x: np.ndarray) -> np.ndarray:
        """NHWC float32 in [0, 1] -> the transformed NHWC float32 batch."""
        if self.identity:
            return x
        x = np.asarray(x, dtype=np.float32)
        _, height, width, channels = x.shape
        if self.resize and (height, width) != (self.resize, self.resize):
            rows = _cached(height, self.resize)
            cols = _cached(width, self.resize)
            x = np.einsum("ih,nhwc,jw->nijc", rows, x, cols, optimize=True)
        if self.channels == 3 and channels == 1:
            x = np.repeat(x, 3, axis=3)
        elif self.channels == 1 and channels == 3:
            x = (x @ np.asarray(LUMA, dtype=np.float32))[..., None]
        if self.normalize == "imagenet":
            x = (x - np.asarray(IMAGENET_MEAN, np.float32)) / np.asarray(IMAGENET_STD, np.float32)
        return np.ascontiguousarray(x, dtype=np.float32)

    def describe(self) -> str:
        parts = []
        if self.resize:
            parts.append(f"resize {self.resize}x{self.resize}")
        if self.channels:
            parts.append(f"{self.channels} channel(s)")
        if self.normalize != "none":
            parts.append(f"{self.normalize} normalisation")
        return ", ".join(parts) or "none"


_MATRICES: dict[tuple[int, int], np.ndarray] = {}


def _cached(source: int, target: int) -> np.ndarray:
    key = (source, target)
    if key not in _MATRICES:
        _MATRICES[key] = _interpolation(source, target)
    return _MATRICES[key]


class TransformedEngine:
    """An engine whose inputs go through `transform` first; every other call goes to the engine itself."""

    def __init__(self, engine: Any, transform: InputTransform):
        self._engine = engine
        self._transform = transform

    def compute(self, x: np.ndarray, y: np.ndarray, micro_batches: int, deadline: float, **options: Any) -> Any:
        return self._engine.compute(self._transform(x), y, micro_batches, deadline, **options)

    def evaluate(self, x: np.ndarray, y: np.ndarray) -> tuple[float, float]:
        """In chunks, so that the transformed test set never exists whole."""
        loss_sum = correct = 0.0
        for start in range(0, len(x), EVAL_CHUNK):
            chunk = slice(start, start + EVAL_CHUNK)
            loss, accuracy = self._engine.evaluate(self._transform(x[chunk]), y[chunk])
            count = len(y[chunk])
            loss_sum += loss * count
            correct += accuracy * count
        return loss_sum / len(x), correct / len(x)

    def state(self) -> dict[str, Any]:
        """The engine's own (the transform is fixed by the run's options and holds no state)."""
        return self._engine.state()

    def load_state(self, state: dict[str, Any]) -> None:
        self._engine.load_state(state)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._engine, name)


@dataclass(frozen=True)
class Augmentation:
    """cifar10-fast's training augmentation (the compression study's recipe), in numpy on NHWC batches: reflect-pad
    by `pad`, a random crop back to the image's size, a horizontal flip with probability 1/2, and one `cutout` x
    `cutout` square of zeros placed wholly inside the image. Each example draws its own offsets, flip and square.

    Unlike `InputTransform` it is random and for training batches only (the test set is never augmented): the
    caller passes the generator, e.g. seeded by (seed, rank, step), so that ranks draw differently and a run
    repeats exactly (the original's numpy choices were unseeded and differed per worker)."""

    pad: int = 4
    flip: bool = True
    cutout: int = 8

    def check(self, input_shape: tuple[int, ...]) -> None:
        if len(input_shape) != 3:
            raise UsageError(f"augmentation needs image data (height x width x channels); this dataset's examples "
                             f"have shape {input_shape}")
        height, width, _ = input_shape
        if self.cutout and (self.cutout >= height or self.cutout >= width):
            raise UsageError(f"the {self.cutout}x{self.cutout} cutout would cover the whole {height}x{width} image; "
                             "augment only larger images (cifar10's are 32x32)")
        if self.pad >= min(height, width):
            raise UsageError(f"reflect padding of {self.pad} needs images larger than {self.pad} pixels a side")

    def __call__(self, x: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """A new augmented float32 batch (`x` is not modified)."""
        x = np.asarray(x, dtype=np.float32)
        count, height, width, _ = x.shape
        p = self.pad
        padded = np.pad(x, ((0, 0), (p, p), (p, p), (0, 0)), mode="reflect") if p else x
        rows = rng.integers(0, 2 * p + 1, count)[:, None] + np.arange(height)
        cols = rng.integers(0, 2 * p + 1, count)[:, None] + np.arange(width)
        if self.flip:
            flipped = rng.random(count) < 0.5
            cols[flipped] = cols[flipped, ::-1]
        out = padded[np.arange(count)[:, None, None], rows[:, :, None], cols[:, None, :]]  # crop (+ flip): one gather
        if self.cutout:
            c = self.cutout
            top = rng.integers(0, height - c + 1, count)[:, None]
            left = rng.integers(0, width - c + 1, count)[:, None]
            inside_rows = (np.arange(height) >= top) & (np.arange(height) < top + c)
            inside_cols = (np.arange(width) >= left) & (np.arange(width) < left + c)
            out[inside_rows[:, :, None] & inside_cols[:, None, :]] = 0.0
        return np.ascontiguousarray(out)

    def describe(self) -> str:
        parts = [f"reflect-pad {self.pad}, random crop"] if self.pad else []
        if self.flip:
            parts.append("horizontal flip")
        if self.cutout:
            parts.append(f"{self.cutout}x{self.cutout} cutout")
        return ", ".join(parts) or "none"
