"""The codec: one rank's gradient -> memory -> compressor -> bytes, and every rank's bytes -> the averaged
gradient. Communication stays outside: `encode` returns a uint8 array for the comm layer's all-gather of
variable-size payloads, and `decode_mean` takes the list it returns.

Payload = 6-byte header + the encoding's body (`encodings.py`). Header, little-endian: method id (uint8),
flags (uint8: bit 0 float16 values, bit 1 entire mode), step (uint32). The decoder checks all three against
its own configuration, so a payload from a differently configured rank is an error, not a silent garbling.

The codec runs on the CPU (gradients on a GPU are copied over first), beside the MPI transport; one call
encodes the whole flat gradient, and the per-tensor work is a loop over the layout's tensors (25 for ResNet9).

Modes: `layerwise` compresses every tensor of the layout on its own (its own k, max, norm); `entire` compresses
the whole flat gradient once (one global top-k, max or norm), as the paper compares.
"""

from __future__ import annotations

import struct
from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np
import torch

from anytimectl.runtime.errors import UsageError

from .compressors import Compressor, Draws, make_compressor
from .memory import Memory, make_memory
from .messages import Message

HEADER = struct.Struct("<BBI")
HEADER_BYTES = HEADER.size
MODES = ("layerwise", "entire")
_MODE_NAMES = {"layerwise": "layerwise", "layer-wise": "layerwise", "entire": "entire", "entiremodel": "entire",
               "entire-model": "entire"}
_FLOAT16, _ENTIRE = 1, 2


def canonical_mode(mode: str) -> str:
    """`layerwise` or `entire` (the original's `entiremodel` accepted)."""
    key = str(mode).strip().lower()
    if key not in _MODE_NAMES:
        raise UsageError(f"compression mode '{mode}' is not one of {', '.join(MODES)}")
    return _MODE_NAMES[key]


def segments(layout: Iterable[Any], size: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(offsets, sizes) of a layout over one flat gradient, in offset order. Entries are objects with `offset`
    and `size` attributes (the torch engine's `TensorSlice`s), mappings with those keys, or (offset, size)
    pairs; a mapping of such entries (name -> entry) is read by its values. Entries whose `trainable` is False
    (the engine's batch-norm statistics, which have no gradient) are left out. The rest must tile 0..size
    without gaps or overlaps (`size` defaults to their total)."""
    if isinstance(layout, dict):
        layout = layout.values()
    pairs = []
    for entry in layout:
        if getattr(entry, "trainable", True) is False:
            continue
        if hasattr(entry, "offset") and hasattr(entry, "size"):
            pairs.append((int(entry.offset), int(entry.size)))
        elif isinstance(entry, dict):
            pairs.append((int(entry["offset"]), int(entry["size"])))
        else:
            offset, length = entry
            pairs.append((int(offset), int(length)))
    if not pairs:
        raise ValueError("the layout has no tensors")
    pairs.sort()
    offsets = np.array([p[0] for p in pairs], dtype=np.int64)
    sizes = np.array([p[1] for p in pairs], dtype=np.int64)
    if np.any(sizes < 1):
        raise ValueError("every tensor of the layout needs at least one element")
    ends = np.concatenate([[0], np.cumsum(sizes)[:-1]])
    if np.any(offsets != ends):
        bad = int(np.flatnonzero(offsets != ends)[0])
        raise ValueError(f"layout tensor {bad} starts at {offsets[bad]}, expected {ends[bad]}: "
                         "tensors must tile the flat gradient in order, without gaps or overlaps")
    if size is not None and int(sizes.sum()) != int(size):
        raise ValueError(f"the layout covers {int(sizes.sum())} elements of a gradient of {size}")
    return offsets, sizes


class Codec:
    """One rank's compression pipeline for a fixed layout. Build it identically on every rank (same method,
    options, layout, mode and seed; `rank` only seeds this rank's stochastic rounding)."""

    def __init__(self, compressor: Compressor, layout: Iterable[Any], *, mode: str = "layerwise",
                 error_feedback: bool = False, seed: int = 0, rank: int = 0, size: int | None = None) -> None:
        if int(seed) < 0 or int(rank) < 0:
            raise UsageError(f"seed {seed} and rank {rank} must be >= 0")
        self.compressor = compressor
        self.layout_offsets, self.layout_sizes = segments(layout, size)
        self.size = int(self.layout_sizes.sum())
        self.mode = canonical_mode(mode)
        if self.mode == "entire":
            self.offsets, self.sizes = np.zeros(1, np.int64), np.array([self.size], np.int64)
        else:
            self.offsets, self.sizes = self.layout_offsets, self.layout_sizes
        self.error_feedback = bool(error_feedback)
        self.memory: Memory = make_memory(self.error_feedback, self.size)
        self.seed, self.rank = int(seed), int(rank)
        self.encoding = compressor.encoding
        self._flags = _FLOAT16 if compressor.value_dtype.itemsize == 2 else 0
        self._flags |= _ENTIRE if self.mode == "entire" else 0

    # ----- sender -----

    def _flat(self, grad: np.ndarray | torch.Tensor) -> torch.Tensor:
        tensor = torch.as_tensor(grad).detach().cpu()  # the codec works on the CPU, beside the MPI transport
        if tensor.dtype != torch.float32:
            tensor = tensor.to(torch.float32)
        tensor = tensor.reshape(-1)
        if tensor.numel() != self.size:
            raise ValueError(f"gradient of {tensor.numel()} elements for a layout of {self.size}")
        return tensor

    def compress(self, grad: np.ndarray | torch.Tensor, step: int) -> list[Message]:
        """The messages for this step's gradient (memory applied and updated), one per tensor of the mode."""
        compensated = self.memory.compensate(self._flat(grad))
        draws = Draws(self.seed, self.rank, int(step))
        messages = [self.compressor.compress(compensated[o:o + n], t, draws)
                    for t, (o, n) in enumerate(zip(self.offsets.tolist(), self.sizes.tolist(), strict=True))]
        if self.memory.needs_sent:
            self.memory.update(compensated, self.decompress(messages))
        return messages

    def pack(self, messages: Sequence[Message], step: int) -> np.ndarray:
        """The payload (uint8) for `messages` at `step`."""
        if not 0 <= int(step) < 1 << 32:
            raise ValueError(f"step {step} does not fit the header's uint32")
        header = np.frombuffer(HEADER.pack(self.compressor.method_id, self._flags, int(step)), dtype=np.uint8)
        return np.concatenate([header, *self.encoding.pack(messages, self.sizes)])

    def encode(self, grad: np.ndarray | torch.Tensor, step: int) -> np.ndarray:
        """What this rank sends at `step`: compress then pack."""
        return self.pack(self.compress(grad, step), step)

    # ----- receiver -----

    def unpack(self, payload: np.ndarray | bytes | bytearray | memoryview) -> tuple[int, list[Message]]:
        """(step, messages) of one payload, exactly as the sender's compressor produced them. Values are views
        into `payload` where the bytes allow it: use them before the buffer is reused."""
        body = np.frombuffer(payload, dtype=np.uint8) if not isinstance(payload, np.ndarray) else payload
        body = body.reshape(-1).view(np.uint8)
        if body.size < HEADER_BYTES:
            raise ValueError(f"payload of {body.size} bytes is shorter than the {HEADER_BYTES}-byte header")
        method_id, flags, step = HEADER.unpack(body[:HEADER_BYTES].tobytes())
        if method_id != self.compressor.method_id or flags != self._flags:
            raise ValueError(f"payload was encoded with method id {method_id}, flags {flags}; this codec uses "
                             f"{self.compressor.method_id}, {self._flags} ({self.compressor.name}, {self.mode})")
        return step, self.encoding.unpack(body[HEADER_BYTES:], self.sizes, step, self.seed)

    def decompress(self, messages: Sequence[Message]) -> np.ndarray:
        """The dense float32 gradient that `messages` stand for."""
        out = np.zeros(self.size, dtype=np.float32)
        self._add(out, messages)
        return out

    def _add(self, out: np.ndarray, messages: Sequence[Message]) -> None:
        for message, o, n in zip(messages, self.offsets.tolist(), self.sizes.tolist(), strict=True):
            message.add_to(out[o:o + n])

    def decode_sum(self, payloads: Sequence[np.ndarray | bytes]) -> np.ndarray:
        """The sum of every payload's decoded gradient (float32, added in the order given). All payloads must
        be of one step."""
        out = np.zeros(self.size, dtype=np.float32)
        steps = set()
        for payload in payloads:
            step, messages = self.unpack(payload)
            steps.add(step)
            self._add(out, messages)
        if len(steps) > 1:
            raise ValueError(f"payloads of different steps {sorted(steps)} in one aggregate")
        return out

    def decode_mean(self, payloads: Sequence[np.ndarray | bytes]) -> np.ndarray:
        """The averaged gradient: decode_sum / number of payloads (the world size)."""
        if not payloads:
            raise ValueError("no payloads to average")
        out = self.decode_sum(payloads)
        out /= np.float32(len(payloads))
        return out

    # ----- accounting -----

    @property
    def dense_nbytes(self) -> int:
        """The dense float32 gradient's bytes, the baseline for the compression ratio."""
        return 4 * self.size

    @staticmethod
    def counts(messages: Sequence[Message]) -> list[int]:
        """Values (or symbols) each message sends."""
        return [m.count for m in messages]

    def nbytes(self, counts: Sequence[int]) -> int:
        """Payload bytes when tensor t sends counts[t] values: header + the encoding's formula."""
        return HEADER_BYTES + self.encoding.nbytes(self.sizes, counts)

    def bound_bits(self, counts: Sequence[int]) -> float:
        """The method's packing bound for the same message, in bits (no header)."""
        return self.encoding.bound_bits(self.sizes, counts)

    def describe(self) -> dict[str, Any]:
        """Compressor, options, mode and error feedback, for run metadata."""
        return {"compressor": self.compressor.name, **self.compressor.options(), "mode": self.mode,
                "error_feedback": self.error_feedback, "tensors": len(self.sizes)}


def make_codec(method: str, layout: Iterable[Any], *, mode: str = "layerwise", error_feedback: bool = False,
               seed: int = 0, rank: int = 0, size: int | None = None, **options: Any) -> Codec:
    """A codec for `method` (any registered name; options as for `make_compressor`)."""
    return Codec(make_compressor(method, **options), layout, mode=mode, error_feedback=error_feedback,
                 seed=seed, rank=rank, size=size)
