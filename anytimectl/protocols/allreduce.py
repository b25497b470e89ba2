"""Synchronous data-parallel SGD without a master: every rank computes its batch, the example-weighted gradient
sums are all-reduced, and every rank applies the same update.

Each rank sends the SUM of its per-example gradients with its example count (the engine's contribution buffer,
as in master-worker), so ranks with unequal batches are weighted per example, exactly as AMB's master weighs its
workers. `batch_for` is the hook through which dynamic batching changes a rank's batch; here it is fixed.
"""

from __future__ import annotations

import math

from anytimectl.protocols.peer import PeerProtocol, PeerStep
from anytimectl.records import Columns, LiveColumn


class AllReduceProtocol(PeerProtocol):
    row_fields = ("batch_size",)
    columns = Columns(worker=("batch_size",))
    live_columns = (LiveColumn("batch", "batch_size"),)

    def batch_for(self, step: int) -> int:
        return int(self.context.config["batch_size"])

    def step(self, step: int, learning_rate: float) -> PeerStep:
        batch = self.batch_for(step)
        x, y = self.stream.peek(batch)
        buffer, examples, _ = self.engine.compute(x, y, 1, math.inf)
        self.stream.advance(examples)
        self.clock.computed(examples)
        self.clock.row[self.layout["batch_size"]] = batch
        if self.comm is not None:
            self.comm.allreduce_sum(buffer)
            self.clock.sent(self.comm.ready_at)
        else:
            self.clock.sent()
        self.clock.received()
        loss = self.engine.apply(buffer, learning_rate)
        return PeerStep(loss=loss, examples=float(buffer[-2]))


PROTOCOL = AllReduceProtocol
