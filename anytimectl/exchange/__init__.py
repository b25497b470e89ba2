"""The gradient-exchange contract: how a method that averages gradients hands its flat contribution to the other
ranks and gets back the sum every rank applies, whatever travels on the wire.

In the spirit of PyTorch DDP's communication hooks (one narrow call, `(state, bucket) -> future`, that every
algorithm meets), a protocol that all-reduces gradients (`train dynamic`, `train gossip --method allreduce`,
`compress train`) makes one call per step::

    exchange = make_exchange(options, ExchangeSpec.of(engine, rank, size, seed), transport)
    reduced = exchange.exchange(contribution, step, marks)      # float32 (length,) in, float32 (length,) out

`contribution` is the engine's flat float32 buffer: the example-weighted gradient SUM of the trainable
parameters (`spec.trainable` floats, tensors laid out as `spec.layout`), then its dense remainder (batch-norm
statistics times n, the example count n, the loss sum). The result is what every rank applies: the sum over ranks
of the gradient part as the exchange lets it through (exact for `none`, cast for `fp16`/`bf16`, decoded for a
compressor, a majority vote for `signsgd`), followed by the exact float32 sum of the remainders. Every rank gets
the same numbers bit for bit (same bytes, summed in the same order), so parameters stay identical without a
broadcast. The engine then divides by the total examples and steps.

An exchange
- owns its state (error-feedback memory, random streams, a low-rank method's Q): `state()` / `load(state)` for
  checkpoints, nothing else survives a step;
- counts what it moves (`stats`, an `ExchangeStats` of the step: payload against its packing bound, the dense
  size it stands for, the remainder beside it, encode and decode seconds, the bytes this rank sent and received by
  the collective's pattern), so a protocol's rows come from the exchange's declared `ROW_FIELDS`;
- knows nothing of the method calling it; `marks` (a `Marks`) tells the caller's clock where the local work ends
  and the communication begins and ends, so a row's compute/wait/exit phases stay meaningful;
- is framework-light: numpy at the boundary; codecs may use torch inside `backends/torch/compression`.

Linear exchanges (`linear = True`: a sum of encodings is the encoding of the sum: dense, casts, PowerSGD's
factors) sum by all-reduce; the others all-gather variable-size packed payloads (`GatherExchange`) and every rank
decodes and adds them in rank order. Bytes are counted the same way for both patterns: an all-reduce hands the
buffer over once and obtains the result once (sent = received = its bytes); an all-gather hands over this rank's
payload and obtains every other rank's.

Adding an exchange: subclass `Exchange` (or `GatherExchange` for a packed payload), then `register(ExchangeEntry(
name, "module:Class", linear=..., ...))` here; the name appears in every command's `--compressor` choices (built
from this registry) and works in every method that takes an exchange. The run shell, recorder, live view and run
directory need no change: the protocol declares the exchange's columns.
"""

from __future__ import annotations

import importlib
import time
from abc import ABC, abstractmethod
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar, Protocol

from anytimectl.runtime.errors import UsageError

if TYPE_CHECKING:  # the registry is read by --help: numpy and the transport are imported where an exchange runs
    import numpy as np

    from anytimectl.comm.transport import Transport

#: The per-step worker_stats columns every exchange fills (what `compress train` has always written).
ROW_FIELDS = ("payload_bytes", "bound_bytes", "dense_bytes", "extra_bytes", "values_sent", "encode_time",
              "decode_time")
#: The per-step master_stats columns: every rank's payload in the step, and dense over payload.
MASTER_FIELDS = ("payload_bytes_total", "compression_ratio")


class Marks(Protocol):
    """The caller's clock, told where one exchange's phases begin and end."""

    def encoded(self) -> None:
        """The local work is done (gradient computed and encoded); the communication begins."""

    def sent(self, ready_at: float | None) -> None:
        """The result has been handed over; `ready_at`: when every rank was ready and data began to move."""

    def received(self) -> None:
        """What comes back has arrived; decoding (the exit phase) begins."""


class NoMarks:
    """Marks for a caller that keeps no clock (benchmarks, tests)."""

    def encoded(self) -> None:
        pass

    def sent(self, ready_at: float | None) -> None:
        pass

    def received(self) -> None:
        pass


@dataclass
class ExchangeStats:
    """What one rank's exchange moved in one step (bytes of this rank unless said otherwise)."""

    payload_bytes: int = 0  # the gradient part as handed to the collective (headers included)
    bound_bytes: float = 0.0  # the method's packing bound for the same message
    dense_bytes: int = 0  # the float32 gradient it stands for, 4 x trainable
    extra_bytes: int = 0  # the float32 remainder beside it
    values_sent: int = 0  # values or symbols the message carries
    encode_time: float = 0.0  # seconds: memory + compression + packing (inside the compute phase)
    decode_time: float = 0.0  # seconds: decoding and summing (the exit phase)
    payload_total: int = 0  # every rank's gradient payload in this step
    sent_bytes: int = 0  # by the collective's pattern: all-reduce its buffers, all-gather this rank's payload
    received_bytes: int = 0  # all-reduce its buffers, all-gather every other rank's payload

    def row(self) -> tuple[float, ...]:
        """The values of `ROW_FIELDS`, in order."""
        return (self.payload_bytes, self.bound_bytes, self.dense_bytes, self.extra_bytes, self.values_sent,
                self.encode_time, self.decode_time)


@dataclass(frozen=True)
class ExchangeSpec:
    """What every rank's exchange is built for: identical on every rank except `rank`."""

    layout: tuple[tuple[int, int], ...]  # (offset, size) of each trainable tensor, tiling 0..trainable
    trainable: int  # floats of the gradient part
    length: int  # floats of the whole contribution (gradient + remainder)
    rank: int = 0
    size: int = 1  # ranks in the exchange
    seed: int = 0
    shapes: tuple[tuple[int, ...], ...] = ()  # each layout tensor's shape (PowerSGD's matrices); () if unknown

    @property
    def remainder(self) -> int:
        return self.length - self.trainable

    @classmethod
    def of(cls, engine: Any, rank: int, size: int, seed: int) -> ExchangeSpec:
        """The spec of an engine's contribution: its trainable tensors (`engine.layout` where the engine has one,
        else the whole gradient as one tensor), `param_count + 2` floats in all."""
        trainable = int(getattr(engine, "trainable_count", engine.param_count))
        tensors = [s for s in getattr(engine, "layout", ()) if s.trainable]
        layout = tuple((int(s.offset), int(s.size)) for s in tensors)
        shapes = tuple(tuple(int(d) for d in s.shape) for s in tensors) if all(
            getattr(s, "shape", None) is not None for s in tensors) else ()
        return cls(layout=layout or ((0, trainable),), trainable=trainable, length=int(engine.param_count) + 2,
                   rank=int(rank), size=int(size), seed=int(seed), shapes=shapes)


class Exchange(ABC):
    """One rank's gradient exchange; build it identically on every rank (see the module docstring)."""

    #: Summed by all-reduce (the sum of encodings is the encoding of the sum); else payloads are all-gathered.
    linear: ClassVar[bool] = False

    def __init__(self, spec: ExchangeSpec, options: Any, comm: Transport | None) -> None:
        self.spec = spec
        self.options = options
        self.comm = comm
        self.stats = ExchangeStats(dense_bytes=4 * spec.trainable, extra_bytes=4 * spec.remainder)

    @abstractmethod
    def exchange(self, contribution: np.ndarray, step: int, marks: Marks | None = None) -> np.ndarray:
        """Every rank's `contribution` summed as this exchange lets it through (float32, same length); fills
        `self.stats`. `contribution` may be overwritten."""

    def state(self) -> dict[str, Any] | None:
        """What a checkpoint must keep (None: nothing)."""
        return None

    def load(self, state: dict[str, Any] | None) -> None:  # noqa: B027 - stateless exchanges keep nothing
        """Restore what `state` returned."""

    def warm_up(self) -> None:  # noqa: B027 - nothing to warm by default
        """Run the encoder once on a throwaway copy (no state touched), so the first step's times are real."""

    def describe(self) -> dict[str, Any]:
        """Compressor, options and pattern, for run metadata."""
        return {"compressor": self.options.compressor, "pattern": "all-reduce" if self.linear else "all-gather"}

    @property
    def world(self) -> int:
        return self.comm.size if self.comm is not None else 1


def flat_contribution(contribution: np.ndarray, spec: ExchangeSpec) -> np.ndarray:
    import numpy as np

    flat = np.ascontiguousarray(contribution, dtype=np.float32).reshape(-1)
    if flat.size != spec.length:
        raise ValueError(f"contribution of {flat.size} floats for an exchange of {spec.length}")
    return flat


class DenseExchange(Exchange):
    """`none`: the whole float32 contribution in one all-reduce (exact; what all-reduce SGD always did)."""

    linear = True

    def exchange(self, contribution: np.ndarray, step: int, marks: Marks | None = None) -> np.ndarray:
        marks = marks or NoMarks()
        buffer = flat_contribution(contribution, self.spec)
        marks.encoded()
        if self.comm is not None:
            self.comm.allreduce_sum(buffer)
            marks.sent(self.comm.ready_at)
        else:
            marks.sent(None)
        marks.received()
        s, trainable = self.stats, self.spec.trainable
        s.payload_bytes, s.bound_bytes, s.values_sent = 4 * trainable, 4.0 * trainable, trainable
        s.encode_time = s.decode_time = 0.0
        s.payload_total = 4 * trainable * self.world
        s.sent_bytes = s.received_bytes = buffer.nbytes if self.comm is not None else 0
        return buffer

    def describe(self) -> dict[str, Any]:
        return {"compressor": "none", "mode": "dense", "error_feedback": False, "pattern": "all-reduce",
                "sum": "float32"}


class GatherExchange(Exchange):
    """A compressor whose payloads are all-gathered: subclasses say how one rank's gradient becomes bytes
    (`encode`) and how every rank's bytes become the summed gradient (`decode_sum`); the float32 remainder rides
    at the end of each payload and is summed in rank order, so one collective carries the whole step."""

    @abstractmethod
    def encode(self, gradient: np.ndarray, step: int) -> tuple[np.ndarray, int, float]:
        """(payload as uint8, values or symbols it carries, the packing bound in bits) for this rank's gradient
        part (float32, `spec.trainable`); updates the exchange's memory."""

    @abstractmethod
    def decode_sum(self, payloads: Sequence[np.ndarray], step: int) -> np.ndarray:
        """The summed gradient part (float32, `spec.trainable`) that every rank's payload (rank order) gives."""

    def exchange(self, contribution: np.ndarray, step: int, marks: Marks | None = None) -> np.ndarray:
        import numpy as np

        marks = marks or NoMarks()
        flat = flat_contribution(contribution, self.spec)
        trainable, tail = self.spec.trainable, 4 * self.spec.remainder
        start = time.perf_counter()
        payload, values, bound_bits = self.encode(flat[:trainable], step)
        message = np.concatenate([payload, flat[trainable:].view(np.uint8)])
        encode = time.perf_counter() - start
        marks.encoded()
        if self.comm is not None:
            received = self.comm.allgather_bytes(message)
            marks.sent(self.comm.ready_at)
        else:
            received = [message]
            marks.sent(None)
        marks.received()
        start = time.perf_counter()
        reduced = np.empty(self.spec.length, dtype=np.float32)
        reduced[:trainable] = self.decode_sum([m[:m.size - tail] for m in received], step)
        rest = reduced[trainable:]
        rest[:] = 0.0
        for m in received:  # rank order on every rank: the same sum everywhere
            rest += np.frombuffer(m, dtype=np.float32, count=self.spec.remainder, offset=m.size - tail)
        decode = time.perf_counter() - start
        s = self.stats
        s.payload_bytes, s.bound_bytes, s.values_sent = int(payload.size), bound_bits / 8, int(values)
        s.encode_time, s.decode_time = encode, decode
        s.payload_total = int(sum(m.size - tail for m in received))
        others = sum(m.size for m in received) - message.size
        s.sent_bytes, s.received_bytes = (message.size, others) if self.comm is not None else (0, 0)
        return reduced


# --- the registry ----------------------------------------------------------------------------------------------------
#: --mode: how a compressor cuts the gradient (each tensor on its own, or the model as one), and the original's names
MODES = ("layerwise", "entire")
MODE_ALIASES = {"entiremodel": "entire", "entire-model": "entire", "layer-wise": "layerwise"}

@dataclass(frozen=True)
class ExchangeEntry:
    """A selectable exchange, declared without importing it (choices and `--help` stay framework-free)."""

    name: str
    target: str  # "module:Class", imported when a run builds it
    linear: bool
    summary: str  # one phrase for --help
    aliases: tuple[str, ...] = ()
    needs_torch: bool = False  # its code runs on torch (the run must use --backend torch)
    parameters: tuple[str, ...] = ()  # which ExchangeOptions fields it reads (beyond compressor)
    error_feedback: bool | None = False  # its default; None: it has no error feedback to switch
    modes: tuple[str, ...] = MODES  # the --mode values it honours (() : mode has no meaning)


_ENTRIES: dict[str, ExchangeEntry] = {}
_LOOKUP: dict[str, str] = {}


def register(entry: ExchangeEntry) -> ExchangeEntry:
    """Make `entry` selectable by its name and aliases (case-insensitive)."""
    for key in {k.lower() for k in (entry.name, *entry.aliases)}:
        if key in _LOOKUP and _LOOKUP[key] != entry.name:
            raise ValueError(f"exchange name '{key}' registered twice")
        _LOOKUP[key] = entry.name
    _ENTRIES[entry.name] = entry
    return entry


def names() -> tuple[str, ...]:
    """Every registered exchange, in registration order (the --compressor choices)."""
    return tuple(_ENTRIES)


def aliases() -> dict[str, str]:
    """alias -> name, for the original's spellings."""
    return {alias: e.name for e in _ENTRIES.values() for alias in e.aliases}


def codec_names() -> tuple[str, ...]:
    """`none` and the codecs of the compression library (what `compress bench` measures codec by codec)."""
    return tuple(n for n, e in _ENTRIES.items() if n == "none" or e.target == _CODEC)


def entry(name: str) -> ExchangeEntry:
    key = str(name).strip().lower()
    if key not in _LOOKUP:
        raise UsageError(f"--compressor {name!r} is not one of {', '.join(_ENTRIES)}")
    return _ENTRIES[_LOOKUP[key]]


def exchange_class(name: str) -> type[Exchange]:
    module, _, attribute = entry(name).target.partition(":")
    return getattr(importlib.import_module(module), attribute)


def make_exchange(options: Any, spec: ExchangeSpec, comm: Transport | None) -> Exchange:
    """The exchange `options.compressor` names, for `spec`, over `comm` (None: one process)."""
    return exchange_class(options.compressor)(spec, options, comm)


def help_text(names_: Iterable[str] | None = None) -> str:
    chosen = names_ or names()
    return ", ".join(f"{n} ({_ENTRIES[n].summary})" for n in chosen)


_CODEC = "anytimectl.backends.torch.compression.exchange:CodecExchange"
_COMPRESSION = ("mode", "error_feedback")
for _entry in (
    ExchangeEntry("none", "anytimectl.exchange:DenseExchange", True, "dense float32 all-reduce", modes=(),
                  error_feedback=None),
    ExchangeEntry("topk", _CODEC, False, "K largest |g|", ("Topk",), True, (*_COMPRESSION, "ratio", "value_dtype")),
    ExchangeEntry("randomk", _CODEC, False, "K random", ("Randomk",), True,
                  (*_COMPRESSION, "ratio", "value_dtype", "rescale")),
    ExchangeEntry("threshold", _CODEC, False, "|g| >= V", ("Thresholdv",), True,
                  (*_COMPRESSION, "threshold", "value_dtype")),
    ExchangeEntry("adaptive-threshold", _CODEC, False, "|g| >= max|g|/2", ("AdaptiveThreshold",), True,
                  (*_COMPRESSION, "value_dtype")),
    ExchangeEntry("terngrad", _CODEC, False, "ternary levels", ("TernGrad",), True, _COMPRESSION),
    ExchangeEntry("qsgd", _CODEC, False, "s levels", ("RandomDithering",), True, (*_COMPRESSION, "levels")),
    ExchangeEntry("fp16", "anytimectl.exchange.casts:CastExchange", True, "float16 all-reduce", modes=(),
                  error_feedback=None),
    ExchangeEntry("bf16", "anytimectl.exchange.casts:CastExchange", True, "bfloat16 all-reduce", modes=(),
                  error_feedback=None),
    ExchangeEntry("signsgd", "anytimectl.exchange.sign:MajorityVote", False, "majority vote of signs",
                  parameters=_COMPRESSION),
    ExchangeEntry("ef-signsgd", "anytimectl.exchange.sign:ScaledSign", False, "l1-scaled sign, error feedback",
                  parameters=("mode",), error_feedback=True),
):
    register(_entry)
register(ExchangeEntry(
    "powersgd", "anytimectl.backends.torch.compression.powersgd:PowerSGDExchange", True,
    "rank-r low-rank factors P and Q, all-reduced", needs_torch=True,
    parameters=("error_feedback", "powersgd_rank", "powersgd_start_iter", "min_compression_rate", "warm_start"),
    error_feedback=True, modes=("layerwise",)))

__all__ = ["MASTER_FIELDS", "MODES", "MODE_ALIASES", "ROW_FIELDS", "DenseExchange", "Exchange", "ExchangeEntry",
           "ExchangeSpec", "ExchangeStats", "GatherExchange", "Marks", "NoMarks", "aliases", "codec_names", "entry",
           "exchange_class", "flat_contribution", "help_text", "make_exchange", "names", "register"]
