"""Compressors: the rule of each method (what to keep, how to quantise), one short class each, found by name.

A compressor sees one flat float32 tensor at a time (one layer in layerwise mode, the whole model in entire
mode) and returns the message it means to send (`messages.py`); how that message becomes bytes is its
encoding's job (`encodings.py`), and error feedback is the memory's (`memory.py`). The rules are the original's
(sands-lab/layer-wise-aaai20; README, "Differences from the original"), with its defects fixed. Names are
case-insensitive; the original's names are aliases.

- `none`: every element, in the value dtype (Dense).
- `topk` (Topk): the k = ceil(K n) largest |g| (Sparse). Ties at the k-th magnitude go to the lowest indices,
  so exactly k are sent and k need not travel (the original kept every tie, so its count varied). The k-th
  magnitude comes from a selection, O(n), not a sort: on long tensors among a candidate set that a fixed random
  sample's threshold picks (`_top_indices`), with the same result as over the whole tensor.
- `randomk` (Randomk): k = ceil(K n) coordinates without replacement, from a generator seeded by (seed, step,
  tensor index) that every rank rebuilds, so only values travel (Sparse, indices not sent). Optional rescale by
  n/k (= 1/K when K n is whole); off by default, as in the original (with error feedback it only adds noise).
- `threshold` (Thresholdv): |g| >= V (Sparse). V = 0 keeps every non-zero element; exact zeros are never sent
  (they decode to the same tensor).
- `adaptive-threshold` (AdaptiveThreshold): |g| >= max|g| / 2 (Sparse); an all-zero tensor sends nothing.
- `terngrad` (TernGrad): s = max|g|, sign(g) * s * Bernoulli(|g| / s) (Levels, L = 1). An all-zero tensor sends
  s = 0 and zeros (the original divided 0 by 0).
- `qsgd` (RandomDithering): sign(g) * ||g|| * floor(|g| / ||g|| * s + U) / s, U ~ U[0, 1) (Levels, L = s); the
  level is clamped to s against float rounding (a no-op in exact arithmetic); all-zero safe.

K = 0 or V = 0 meant "no compression" in the original; here K must lie in (0, 1] (method none sends everything)
and V = 0 keeps every non-zero element. ceil(K n) is computed with K as an exact decimal fraction. Random
draws: TernGrad's and QSGD's stochastic rounding uses a torch.Generator seeded by (seed, rank, step), consumed
tensor by tensor, and random-k's index sets a numpy Generator seeded by (seed, step, tensor index), so the same
command gives the same bytes (for one torch and numpy version). Value dtype (float32 or float16) applies to
the values that travel (none, top-k, random-k, thresholds); TernGrad's and QSGD's one scale per tensor is
always float32 (a float16 norm of a summed-loss gradient overflows).
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from dataclasses import dataclass
from fractions import Fraction
from functools import cached_property
from typing import Any, ClassVar

import numpy as np
import torch

from anytimectl.runtime.errors import UsageError

from .encodings import DenseEncoding, Encoding, LevelEncoding, SharedIndexEncoding, SparseEncoding
from .messages import Dense, Levels, Message, Sparse
from .packing import level_dtype

VALUE_DTYPES = {"float32": np.dtype("<f4"), "float16": np.dtype("<f2")}
#: The library's defaults for every option, which are the original's (K 0.5, V 0.001, Q 255, no rescale).
DEFAULTS: dict[str, Any] = {"ratio": 0.5, "threshold": 0.001, "levels": 255, "value_dtype": "float32",
                            "rescale": False}
MAX_LEVELS = 1 << 30
_FLOAT16_MAX = float(np.finfo(np.float16).max)
_ROUNDING, _SHARED = 0x51D, 0x5EED  # keep the two random streams apart
_TORCH_SIGNED = {1: torch.int8, 2: torch.int16, 4: torch.int32, 8: torch.int64}


def _seed_word(*words: int) -> int:
    """One 63-bit seed from several non-negative integers (numpy's SeedSequence hashing)."""
    return int(np.random.SeedSequence(list(words)).generate_state(1, np.uint64)[0] >> np.uint64(1))


@dataclass(frozen=True)
class Draws:
    """The randomness of one step on one rank. `rounding` (stochastic rounding) is this rank's own stream for
    the step; `shared(index)` is the same on every rank (random-k's coordinates)."""

    seed: int
    rank: int
    step: int

    @cached_property
    def rounding(self) -> torch.Generator:
        return torch.Generator().manual_seed(_seed_word(_ROUNDING, self.seed, self.rank, self.step))

    def shared(self, index: int) -> np.random.Generator:
        return shared_generator(self.seed, self.step, index)


def shared_generator(seed: int, step: int, index: int) -> np.random.Generator:
    """The generator every rank builds for tensor `index` at `step`."""
    return np.random.default_rng([_SHARED, int(seed), int(step), int(index)])


def random_indices(size: int, count: int, seed: int, step: int, index: int) -> np.ndarray:
    """Random-k's `count` distinct coordinates of a tensor of `size` for (seed, step, index), ascending int64.
    Floyd's or a partial shuffle inside numpy: O(count) work, not a permutation of the whole tensor."""
    if count >= size:
        return np.arange(size, dtype=np.int64)
    chosen = shared_generator(seed, step, index).choice(size, count, replace=False, shuffle=False)
    return np.sort(chosen.astype(np.int64))


def _numpy(tensor: torch.Tensor) -> np.ndarray:
    return tensor.detach().cpu().numpy()


#: The sample whose threshold picks top-k's candidates on a long tensor (`_top_indices`).
_SAMPLE = 8192
_SAMPLE_INDICES: dict[int, np.ndarray] = {}


def _top_indices(tensor: torch.Tensor, k: int) -> torch.Tensor:
    """Ascending indices of the k largest |values| of a flat tensor (0 < k < its length), ties at the k-th
    magnitude going to the lowest indices.

    Selecting the k-th magnitude over the whole tensor (torch.kthvalue) was most of top-k's cost (the README's
    codec benchmark times both). On a long tensor, a fixed random sample of 8192 of its elements gives a threshold:
    the sample's (2k * 8192 / n + 32)-th largest magnitude, which about twice k elements of the tensor reach. The k-th
    magnitude is then selected among those candidates only: the same value, so the same indices. A sample that
    leaves fewer than k candidates (by a Chernoff bound, a chance below 1e-12 for every k), or NaN in the tensor,
    takes the selection over the whole tensor, as a shorter tensor or a larger fraction (k > n / 16) does."""
    size = tensor.numel()
    if size < 4 * _SAMPLE or 16 * k > size:
        return _top_indices_whole(tensor, k)
    magnitude = np.abs(_numpy(tensor))
    sample = _SAMPLE_INDICES.get(size)
    if sample is None:  # any fixed set serves: the result does not depend on it, only the speed
        sample = _SAMPLE_INDICES[size] = np.random.default_rng(size).integers(0, size, _SAMPLE)
    reach = min(_SAMPLE, 2 * k * _SAMPLE // size + 32)
    threshold = np.partition(magnitude[sample], _SAMPLE - reach)[_SAMPLE - reach]
    candidates = np.flatnonzero(magnitude >= threshold)
    if candidates.size < k or np.isnan(magnitude.sum()):
        return _top_indices_whole(tensor, k)
    among = magnitude[candidates]
    kth = np.partition(among, candidates.size - k)[candidates.size - k]
    chosen = candidates[among >= kth]
    if chosen.size > k:  # ties at the k-th magnitude: the lowest indices among them
        above, tied = candidates[among > kth], candidates[among == kth]
        chosen = np.sort(np.concatenate([above, tied[: k - above.size]]))
    return torch.from_numpy(chosen)


def _top_indices_whole(tensor: torch.Tensor, k: int) -> torch.Tensor:
    """`_top_indices` by a selection over the whole tensor."""
    magnitude = tensor.abs()
    kth = torch.kthvalue(magnitude, tensor.numel() - k + 1).values  # the k-th largest, in O(n)
    chosen = torch.nonzero(magnitude >= kth).view(-1)
    if chosen.numel() > k:  # ties at the k-th magnitude: the lowest indices among them
        above = torch.nonzero(magnitude > kth).view(-1)
        tied = torch.nonzero(magnitude == kth).view(-1)[: k - above.numel()]
        chosen = torch.sort(torch.cat([above, tied])).values
    elif chosen.numel() < k:  # NaN in the tensor: torch.topk ranks it above every number
        chosen = torch.sort(torch.topk(magnitude, k, sorted=False).indices).values
    return chosen


class Compressor(ABC):
    """One method's rule. Subclasses set `name`, `aliases`, `method_id` (the byte in every payload's header)
    and `parameters` (which of make_compressor's options they take), and implement `compress`."""

    name: ClassVar[str]
    aliases: ClassVar[tuple[str, ...]] = ()
    method_id: ClassVar[int]
    parameters: ClassVar[tuple[str, ...]] = ("value_dtype",)

    def __init__(self, value_dtype: str = "float32") -> None:
        if value_dtype not in VALUE_DTYPES:
            raise UsageError(f"value dtype '{value_dtype}' is not one of {', '.join(VALUE_DTYPES)}")
        self.value_dtype = VALUE_DTYPES[value_dtype]

    @abstractmethod
    def compress(self, tensor: torch.Tensor, index: int, draws: Draws) -> Message:
        """The message for `tensor` (1-D float32), the `index`-th tensor of its layout, with this step's draws."""

    @cached_property
    def encoding(self) -> Encoding:
        """How this method's messages become bytes."""
        return self._encoding()

    @abstractmethod
    def _encoding(self) -> Encoding: ...

    def count(self, size: int) -> int | None:
        """How many values a tensor of `size` sends when that follows from its size alone (None: it depends on
        the data, so the payload carries the count)."""
        return None

    def options(self) -> dict[str, Any]:
        """The options this compressor was made with (for run metadata)."""
        out: dict[str, Any] = {}
        for name in self.parameters:
            value = getattr(self, name)
            out[name] = value.name if isinstance(value, np.dtype) else value
        return out

    def _values(self, tensor: torch.Tensor) -> np.ndarray:
        """Values in the value dtype; float16 saturates at +-65504 instead of overflowing to inf (with error
        feedback, what saturation cuts off stays in the residual)."""
        if self.value_dtype == VALUE_DTYPES["float16"]:
            return _numpy(tensor.clamp(-_FLOAT16_MAX, _FLOAT16_MAX).to(torch.float16))
        return _numpy(tensor.to(torch.float32))

    def __repr__(self) -> str:
        return f"{type(self).__name__}({', '.join(f'{k}={v!r}' for k, v in self.options().items())})"


_REGISTRY: dict[str, type[Compressor]] = {}
_LOOKUP: dict[str, str] = {}


def register(cls: type[Compressor]) -> type[Compressor]:
    """Class decorator: make `cls` selectable by its name and aliases (case-insensitive)."""
    for key in {k.lower() for k in (cls.name, *cls.aliases)}:
        if key in _LOOKUP:
            raise ValueError(f"compressor name '{key}' registered twice")
        _LOOKUP[key] = cls.name
    if any(other.method_id == cls.method_id for other in _REGISTRY.values()):
        raise ValueError(f"method id {cls.method_id} registered twice")
    _REGISTRY[cls.name] = cls
    return cls


def method_names() -> tuple[str, ...]:
    """The canonical method names, in registration order (for --method choices)."""
    return tuple(_REGISTRY)


def canonical_method(name: str) -> str:
    """The canonical name for `name` or one of the original's names, case-insensitive."""
    key = str(name).strip().lower()
    if key not in _LOOKUP:
        originals = ", ".join(alias for cls in _REGISTRY.values() for alias in cls.aliases)
        raise UsageError(f"compression method '{name}' is not one of {', '.join(_REGISTRY)} "
                         f"(or the original names {originals})")
    return _LOOKUP[key]


def compressor_class(name: str) -> type[Compressor]:
    return _REGISTRY[canonical_method(name)]


def make_compressor(name: str, **options: Any) -> Compressor:
    """The compressor called `name`, given any of the options ratio, threshold, levels, value_dtype, rescale.
    Options a method does not use are ignored (the CLI passes them all); missing ones take `DEFAULTS`."""
    unknown = set(options) - set(DEFAULTS)
    if unknown:
        raise TypeError(f"unknown compression option(s): {', '.join(sorted(unknown))}")
    cls = compressor_class(name)
    chosen = {**DEFAULTS, **{k: v for k, v in options.items() if v is not None}}
    return cls(**{key: chosen[key] for key in cls.parameters})


def _ratio(ratio: float) -> Fraction:
    """K as an exact fraction (0.07 is 7/100, not the binary 0.0700000000000000067), so ceil(K n) is exact."""
    try:
        value = float(ratio)
    except (TypeError, ValueError):
        raise UsageError(f"ratio '{ratio}' is not a number") from None
    if not (math.isfinite(value) and 0 < value <= 1):
        raise UsageError(f"ratio {ratio} must lie in (0, 1] (use method none for no compression)")
    return Fraction(value).limit_denominator(1 << 32)


class _Fraction(Compressor):
    """Methods that send k = ceil(K n) values of a tensor of n."""

    parameters = ("ratio", "value_dtype")

    def __init__(self, ratio: float = DEFAULTS["ratio"], value_dtype: str = "float32") -> None:
        super().__init__(value_dtype)
        self._fraction = _ratio(ratio)
        self.ratio = float(ratio)

    def count(self, size: int) -> int:
        return -(-int(size) * self._fraction.numerator // self._fraction.denominator)


@register
class NoCompression(Compressor):
    name, method_id = "none", 0

    def compress(self, tensor: torch.Tensor, index: int, draws: Draws) -> Message:
        return Dense(self._values(tensor).copy())

    def count(self, size: int) -> int:
        return int(size)

    def _encoding(self) -> Encoding:
        return DenseEncoding(self.value_dtype)


@register
class TopK(_Fraction):
    name, aliases, method_id = "topk", ("Topk",), 1

    def compress(self, tensor: torch.Tensor, index: int, draws: Draws) -> Message:
        size = tensor.numel()
        k = self.count(size)
        chosen = torch.arange(size) if k >= size else _top_indices(tensor, k)
        return Sparse(_numpy(chosen).astype(np.int64, copy=False), self._values(tensor[chosen]))

    def _encoding(self) -> Encoding:
        return SparseEncoding(self.value_dtype, self.count)


@register
class RandomK(_Fraction):
    name, aliases, method_id = "randomk", ("Randomk",), 2
    parameters = ("ratio", "rescale", "value_dtype")

    def __init__(self, ratio: float = DEFAULTS["ratio"], rescale: bool = False, value_dtype: str = "float32"):
        super().__init__(ratio, value_dtype)
        self.rescale = bool(rescale)

    def compress(self, tensor: torch.Tensor, index: int, draws: Draws) -> Message:
        size = tensor.numel()
        k = self.count(size)
        chosen = random_indices(size, k, draws.seed, draws.step, index)
        values = tensor[torch.from_numpy(chosen)]
        if self.rescale:
            values = values * np.float32(size / k)
        return Sparse(chosen, self._values(values))

    def _encoding(self) -> Encoding:
        return SharedIndexEncoding(self.value_dtype, self.count, random_indices)


@register
class Threshold(Compressor):
    name, aliases, method_id = "threshold", ("Thresholdv",), 3
    parameters = ("threshold", "value_dtype")

    def __init__(self, threshold: float = DEFAULTS["threshold"], value_dtype: str = "float32") -> None:
        super().__init__(value_dtype)
        try:
            self.threshold = float(threshold)
        except (TypeError, ValueError):
            raise UsageError(f"threshold '{threshold}' is not a number") from None
        if not (math.isfinite(self.threshold) and self.threshold >= 0):
            raise UsageError(f"threshold {threshold} must be a finite number >= 0")

    def compress(self, tensor: torch.Tensor, index: int, draws: Draws) -> Message:
        keep = tensor.abs() >= self.threshold if self.threshold > 0 else tensor != 0
        chosen = torch.nonzero(keep).view(-1)
        return Sparse(_numpy(chosen).astype(np.int64, copy=False), self._values(tensor[chosen]))

    def _encoding(self) -> Encoding:
        return SparseEncoding(self.value_dtype, None)


@register
class AdaptiveThreshold(Compressor):
    name, aliases, method_id = "adaptive-threshold", ("AdaptiveThreshold",), 4

    def compress(self, tensor: torch.Tensor, index: int, draws: Draws) -> Message:
        magnitude = tensor.abs()
        half_max = magnitude.max() / 2
        if half_max > 0:
            chosen = torch.nonzero(magnitude >= half_max).view(-1)
        else:
            chosen = torch.zeros(0, dtype=torch.int64)
        return Sparse(_numpy(chosen).astype(np.int64, copy=False), self._values(tensor[chosen]))

    def _encoding(self) -> Encoding:
        return SparseEncoding(self.value_dtype, None)


@register
class TernGrad(Compressor):
    name, aliases, method_id = "terngrad", ("TernGrad",), 5
    parameters = ()

    def __init__(self) -> None:
        super().__init__("float32")  # the scale is always float32; no other values travel

    def compress(self, tensor: torch.Tensor, index: int, draws: Draws) -> Message:
        magnitude = tensor.abs()
        scale = magnitude.max()
        uniform = torch.rand(tensor.numel(), generator=draws.rounding)  # drawn even for zeros: same stream
        if scale > 0:
            symbols = torch.sign(tensor).to(torch.int8) * (uniform < magnitude / scale)
        else:
            symbols = torch.zeros(tensor.numel(), dtype=torch.int8)
        return Levels(np.float32(scale.item()), _numpy(symbols.to(torch.int8)), 1)

    def _encoding(self) -> Encoding:
        return LevelEncoding(1)


@register
class QSGD(Compressor):
    name, aliases, method_id = "qsgd", ("RandomDithering",), 6
    parameters = ("levels",)

    def __init__(self, levels: int = DEFAULTS["levels"]) -> None:
        super().__init__("float32")  # the norm is always float32; no other values travel
        if isinstance(levels, bool) or not isinstance(levels, int | np.integer) or not 1 <= levels <= MAX_LEVELS:
            raise UsageError(f"levels {levels!r} must be an integer in 1..{MAX_LEVELS}")
        self.levels = int(levels)
        self._symbol_dtype = _TORCH_SIGNED[level_dtype(self.levels).itemsize]

    def compress(self, tensor: torch.Tensor, index: int, draws: Draws) -> Message:
        norm = torch.linalg.vector_norm(tensor)
        uniform = torch.rand(tensor.numel(), generator=draws.rounding)
        if norm > 0:
            level = torch.floor(tensor.abs() / norm * self.levels + uniform).clamp_(max=self.levels)
            symbols = (torch.sign(tensor) * level).to(self._symbol_dtype)
        else:
            symbols = torch.zeros(tensor.numel(), dtype=self._symbol_dtype)
        return Levels(np.float32(norm.item()), _numpy(symbols), self.levels)

    def _encoding(self) -> Encoding:
        return LevelEncoding(self.levels)
