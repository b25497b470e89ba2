"""Synchronous data-parallel SGD without a master: every rank computes its batch, the example-weighted gradient
sums are all-reduced, and every rank applies the same update.

Each rank sends the SUM of its per-example gradients with its example count (the engine's contribution buffer,
as in master-worker), so ranks with unequal batches are weighted per example, exactly as AMB's master weighs its
workers. A subclass changes what a step trains on through three hooks, and nothing else: `batch_for` (this rank's
batch), `examples_for` (which examples) and `stepped` (after the update, e.g. a batch policy's decision).
Dynamic batching (`protocols/dynamic.py`) is this protocol with those hooks filled in.

The step's collective is the run's gradient exchange (`anytimectl.exchange`, chosen by the shared compressor
options): `none` (the default) is the one float32 all-reduce of the whole contribution; any other exchange (a cast,
a compressor) takes its place, and the protocol then declares the exchange's columns (payload, bound, dense and
remainder bytes, values, encode and decode seconds per rank per step; every rank's payload and the compression
ratio per step) beside its own. The run shell, the recorder and the live view take the columns from the protocol,
so they need no change for it.

The gradient traffic goes through `self.transport`: the shared MPI layer (`anytimectl.comm.Comm`) by default, or,
with `--transport torch`, torch.distributed (NCCL on GPUs, gloo on CPUs) started from the MPI job. The run shell's
own traffic (the start, the step reports) stays on MPI either way.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np

from anytimectl.comm.transport import check_transport
from anytimectl.exchange import MASTER_FIELDS, ROW_FIELDS, ExchangeSpec, make_exchange
from anytimectl.exchange.options import ExchangeOptions
from anytimectl.protocols.peer import P, PeerProtocol, PeerStep
from anytimectl.runtime.records import Columns, LiveColumn, RowLayout

if TYPE_CHECKING:
    from anytimectl.runtime.shell import RunContext


def open_transport(context: RunContext[Any], comm: Any, name: str = "mpi") -> Any:
    """The transport `--transport` names for a peer protocol's own traffic (None in a single process).

    `torch` starts a torch.distributed process group over the MPI job's ranks; its byte counts go to the MPI
    layer's counter, so the tables count every byte the method moves whichever transport moved it (`name`: the
    method's --transport; train dynamic's, mpi for the methods without the option)."""
    check_transport(name, context.request.backend)
    if comm is None or name == "mpi":
        return comm
    from anytimectl.backends.torch.transport import TorchTransport

    return TorchTransport.start(comm, context.device, counter=comm.bytes)


class _ClockMarks:
    """The exchange's phase marks on this rank's round clock."""

    def __init__(self, clock: Any, examples: int):
        self.clock, self.examples = clock, examples

    def encoded(self) -> None:
        self.clock.computed(self.examples)

    def sent(self, ready_at: float | None) -> None:
        self.clock.sent(ready_at)

    def received(self) -> None:
        self.clock.received()


class AllReduceProtocol(PeerProtocol[P]):
    row_fields = ("batch_size",)
    columns = Columns(worker=("batch_size",))
    live_columns = (LiveColumn("batch", "batch_size"),)
    #: Whether the exchange's columns are written even for the dense exchange (`compress train` always has them,
    #: and declares them in its class); otherwise they are this run's when its exchange is not the dense one.
    always_exchange_columns: ClassVar[bool] = False

    def transport_name(self) -> str:
        """The transport of the method's own traffic (train dynamic has --transport)."""
        return "mpi"

    def __init__(self, context: RunContext[P]):
        super().__init__(context)
        self.exchange_options: ExchangeOptions = context.config.exchange_options()
        self.exchange_columns = self.always_exchange_columns or self.exchanges_compressed()
        if self.exchange_columns and ROW_FIELDS[0] not in self.row_fields:  # the method's fields, then the exchange's
            cls = type(self)
            self.row_fields = (*cls.row_fields, *ROW_FIELDS)
            self.layout = RowLayout(self.row_fields)
            self.columns = Columns(worker=(*cls.columns.worker, *ROW_FIELDS),
                                   master=(*cls.columns.master, *MASTER_FIELDS), collect=cls.columns.collect)
            self.live_columns = (*cls.live_columns, LiveColumn("payload", "payload_bytes", "{:,.0f} B"))

    def exchanges_compressed(self) -> bool:
        """Whether this run's gradients go through an exchange other than the dense all-reduce."""
        return self.exchange_options.compressor != "none"

    def prepare(self) -> None:
        self.transport = open_transport(self.context, self.comm, self.transport_name())
        self.spec = ExchangeSpec.of(self.engine, self.rank, self.size, self.seed)
        self.exchange = make_exchange(self.exchange_options, self.spec, self.transport)
        self.exchange_totals = np.zeros(5)  # payload, dense, extra bytes, encode, decode seconds (this rank)

    def warm_up(self) -> None:
        super().warm_up()
        self.exchange.warm_up()

    def metadata(self) -> dict[str, Any]:
        if not self.exchange_columns:
            return {}
        s = self.spec
        return {"compression": {**self.exchange.describe(), "trainable_parameters": s.trainable,
                                "dense_bytes_per_step": 4 * s.trainable, "remainder_floats": s.remainder,
                                "tensor_sizes": [n for _, n in s.layout],
                                "exchange": "all-reduce of the dense contribution"
                                if self.exchange_options.compressor == "none" else
                                "all-reduce" if self.exchange.linear else
                                "all-gather of variable-size payloads (codec payload + float32 remainder)"}}

    def finish(self) -> dict[str, Any]:
        """Every rank, after the last step: the exchange's byte totals (compressed runs), then a torch.distributed
        transport leaves its process group."""
        summary = self.exchange_summary()
        if self.transport is not None and self.transport is not self.comm:
            self.transport.close()
        return {"compression": summary} if summary else {}

    def exchange_summary(self) -> dict[str, Any]:
        """Every rank (collective): the run's exchange totals over all ranks, for metadata.json's summary; {} when
        the run has no exchange columns."""
        if not self.exchange_columns:
            return {}
        mine = np.concatenate([self.exchange_totals, [self.comm.bytes.sent, self.comm.bytes.received]
                               if self.comm is not None else [0.0, 0.0]])
        if self.comm is not None:
            payloads = self.comm.allgather_bytes(mine.astype(np.float64).view(np.uint8))
            everyone = np.stack([np.frombuffer(p.tobytes(), dtype=np.float64) for p in payloads])
        else:
            everyone = mine[None, :]
        payload, dense, extra = (float(v) for v in everyone[:, :3].sum(axis=0))
        steps = max(1, self.clock.row[self.layout["step"]] - self.start_step)
        described = self.exchange.describe()
        return {"compressor": described["compressor"], "mode": described.get("mode", "dense"),
                "error_feedback": bool(described.get("error_feedback", False)),
                "payload_bytes": int(payload), "dense_bytes": int(dense), "extra_bytes": int(extra),
                "compression_ratio": dense / payload if payload else None,
                "wire_compression_ratio": (dense + extra) / (payload + extra) if payload + extra else None,
                "bytes_sent_total": int(everyone[:, 5].sum()), "bytes_received_total": int(everyone[:, 6].sum()),
                "mean_encode_s": float(everyone[:, 3].mean() / steps),
                "mean_decode_s": float(everyone[:, 4].mean() / steps)}

    # --- checkpoints: the exchange's state (error-feedback memory, ...) and its totals -------------------------
    def checkpoint_state(self) -> dict[str, Any]:
        state = super().checkpoint_state()
        state["exchange"] = self.exchange.state()
        state["exchange_totals"] = self.exchange_totals.copy()
        return state

    def load_checkpoint_state(self, state: dict[str, Any]) -> None:
        super().load_checkpoint_state(state)
        self.exchange.load(state.get("exchange"))
        self.exchange_totals = np.asarray(state.get("exchange_totals", self.exchange_totals), dtype=np.float64).copy()

    # --- the hooks ---------------------------------------------------------------------------------------------
    def batch_for(self, step: int) -> int:
        """This rank's batch in `step`."""
        return int(self.context.config.batch_size)

    def examples_for(self, step: int, batch: int) -> tuple[np.ndarray, np.ndarray]:
        """The examples this rank trains on in `step` (consumed once the step computed them)."""
        x, y = self.training_batch(step, batch)
        self.stream.advance(batch)
        return x, y

    def stepped(self, step: int, learning_rate: float, result: PeerStep) -> None:
        """After the update, on every rank alike."""

    # --- the step ----------------------------------------------------------------------------------------------
    def step(self, step: int, learning_rate: float) -> PeerStep:
        batch = self.batch_for(step)
        x, y = self.examples_for(step, batch)
        buffer, examples, _ = self.engine.compute(x, y, 1, math.inf)
        self.clock.row[self.layout["batch_size"]] = batch
        reduced = self.exchange.exchange(buffer, step, _ClockMarks(self.clock, examples))
        master = self._record_exchange() if self.exchange_columns else None
        loss = self.engine.apply(reduced, learning_rate)
        result = PeerStep(loss=loss, examples=float(reduced[-2]), master=master)
        self.stepped(step, learning_rate, result)
        return result

    def _record_exchange(self) -> dict[str, Any]:
        stats, row, f = self.exchange.stats, self.clock.row, self.layout
        for name, value in zip(ROW_FIELDS, stats.row(), strict=True):
            row[f[name]] = value
        self.exchange_totals += (stats.payload_bytes, stats.dense_bytes, stats.extra_bytes, stats.encode_time,
                                 stats.decode_time)
        ranks = self.size if self.comm is not None else 1
        return {"payload_bytes_total": stats.payload_total,
                "compression_ratio": stats.dense_bytes * ranks / stats.payload_total if stats.payload_total else None}


PROTOCOL = AllReduceProtocol
