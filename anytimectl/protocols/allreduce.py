"""Synchronous data-parallel SGD without a master: every rank computes its batch, the example-weighted gradient
sums are all-reduced, and every rank applies the same update.

Each rank sends the SUM of its per-example gradients with its example count (the engine's contribution buffer,
as in master-worker), so ranks with unequal batches are weighted per example, exactly as AMB's master weighs its
workers. A subclass changes what a step trains on through three hooks, and nothing else: `batch_for` (this rank's
batch), `examples_for` (which examples) and `stepped` (after the update, e.g. a batch policy's decision).
Dynamic batching (`protocols/dynamic.py`) is this protocol with those hooks filled in.

The gradient traffic goes through `self.transport`: the shared MPI layer (`anytimectl.comm.Comm`) by default, or,
with `--transport torch`, torch.distributed (NCCL on GPUs, gloo on CPUs) started from the MPI job. The run shell's
own traffic (the start, the step reports) stays on MPI either way.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from anytimectl.errors import UsageError
from anytimectl.protocols.peer import PeerProtocol, PeerStep
from anytimectl.records import Columns, LiveColumn

TRANSPORTS = ("mpi", "torch")


def open_transport(context: Any, comm: Any) -> Any:
    """The transport `--transport` names for a peer protocol's own traffic (None in a single process).

    `torch` starts a torch.distributed process group over the MPI job's ranks; its byte counts go to the MPI
    layer's counter, so the tables count every byte the method moves whichever transport moved it."""
    name = context.config.get("transport") or "mpi"
    if name not in TRANSPORTS:
        raise UsageError(f"--transport {name!r}: choose one of {', '.join(TRANSPORTS)}")
    if comm is None or name == "mpi":
        return comm
    if context.request.backend != "torch":
        raise UsageError("--transport torch needs --backend torch (TensorFlow and torch never share a process)")
    from anytimectl.backends.torch.transport import TorchTransport

    return TorchTransport.start(comm, context.device, counter=comm.bytes)


class AllReduceProtocol(PeerProtocol):
    row_fields = ("batch_size",)
    columns = Columns(worker=("batch_size",))
    live_columns = (LiveColumn("batch", "batch_size"),)

    def prepare(self) -> None:
        self.transport = open_transport(self.context, self.comm)

    def finish(self) -> dict[str, Any]:
        """Every rank, after the last step: a torch.distributed transport leaves its process group."""
        if self.transport is not None and self.transport is not self.comm:
            self.transport.close()
        return {}

    # --- the hooks ---------------------------------------------------------------------------------------------
    def batch_for(self, step: int) -> int:
        """This rank's batch in `step`."""
        return int(self.context.config["batch_size"])

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
        self.clock.computed(examples)
        self.clock.row[self.layout["batch_size"]] = batch
        if self.transport is not None:
            self.transport.allreduce_sum(buffer)
            self.clock.sent(self.transport.ready_at)
        else:
            self.clock.sent()
        self.clock.received()
        loss = self.engine.apply(buffer, learning_rate)
        result = PeerStep(loss=loss, examples=float(buffer[-2]))
        self.stepped(step, learning_rate, result)
        return result


PROTOCOL = AllReduceProtocol
