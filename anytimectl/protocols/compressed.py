"""`compress train`: synchronous data-parallel SGD whose gradients really travel compressed (the AAAI'20 layer-wise
compression study, sands-lab/layer-wise-aaai20, done for real).

One step on every rank, top to bottom:

1. this rank's next `batch_size` examples of its own shard (disjoint shards; every rank starts from rank 0's
   parameters), augmented with a generator seeded by (seed, rank, step) when the recipe augments (cifar10);
2. the engine's contribution: the SUM of the per-example gradients (the original summed its loss) followed by a
   small dense remainder (batch-norm statistics times n, n, the loss sum);
3. the run's gradient exchange (`anytimectl.exchange`, the same step `train dynamic` and gossip's all-reduce mode
   take; for the study's six methods the codec of `backends/torch/compression`: error-feedback memory, the
   method's compressor, bit packing) turns the trainable part into this rank's payload; the dense remainder
   (float32) is appended to it;
4. one all-gather of the variable-size payloads (`Comm.allgather_bytes`): every rank receives every rank's bytes;
5. every rank decodes every payload and adds them in rank order (`Codec.decode_sum`), adds the remainders in rank
   order, and applies that one sum: the engine divides by the total examples, adds weight decay once, and steps.
   (Linear exchanges, fp16 and bf16, all-reduce instead: see `anytimectl/exchange/casts.py`.)
   Every rank computes the same sum from the same bytes in the same order, so the parameters stay identical
   bit for bit without any broadcast; the update is the per-example average of the ranks' DECOMPRESSED
   gradients (with equal batches: the mean of the ranks' decoded gradient sums divided by the batch).

`--compressor none` is the uncompressed baseline the original ran: one all-reduce of the whole dense contribution.

Why the remainder rides in the payload instead of a second all-reduce: one collective per step means one wait for
the slowest rank and one latency, and the sum is formed locally in rank order (identical everywhere by
construction). It costs each rank (W - 1) remainders received instead of one reduced, which is small (ResNet9's
batch-norm statistics, n and the loss are 4,482 floats, 17.9 KB, beside a 439 KB top-1% payload) and counted apart
(`extra_bytes`).

Row fields (worker_stats columns, per rank per step): `batch_size`; `payload_bytes` (the compressed gradient as
sent, its 6-byte header included); `bound_bytes` (the method's packing bound for the same message);
`dense_bytes` (the float32 gradient it stands for, 4 x trainable parameters); `extra_bytes` (the dense remainder
beside it); `values_sent` (values or symbols the message carries); `encode_time` (memory + compression + packing,
inside compute) and `decode_time` (decoding and summing every rank's payload, in the exit phase). The comm
counters `bytes_sent` / `bytes_recv` are cumulative (initial broadcast included). master_stats gets
`payload_bytes_total` (every rank's payload in the step) and `compression_ratio` (dense over payload, that step).

The recipe (cifar10-fast, as the original ran it): SGD, Nesterov momentum when --momentum > 0, weight decay 5e-4 x
512 and a piecewise-linear rate 0 -> 0.4 at epoch 5 -> 0 at the end, divided by 512 because the loss is summed.
The engine works on per-example means instead: it divides the summed gradient by the examples n and adds weight
decay to that mean. PyTorch's SGD is linear in the gradient it is given (momentum buffer and Nesterov included),
so scaling the gradient by 1/n and the rate by n leaves every step unchanged: with per-worker batch B, the
original's step (lr / B) x (sum of B gradients + 5e-4 B w) equals the engine's step lr x (mean gradient + 5e-4 w).
So the engine gets the schedule's rate as is (peak 0.4) and weight decay 5e-4 (see `recipe_mapping`).
"""

from __future__ import annotations

from typing import Any

from anytimectl.exchange import MASTER_FIELDS
from anytimectl.exchange import ROW_FIELDS as EXCHANGE_FIELDS
from anytimectl.protocols.allreduce import AllReduceProtocol
from anytimectl.runtime.errors import UsageError
from anytimectl.runtime.records import Columns, LiveColumn
from anytimectl.runtime.run_config import CompressedConfig
from anytimectl.runtime.schedules import Schedule

ROW_FIELDS = ("batch_size", *EXCHANGE_FIELDS)
#: The recipe's warm-up: the rate peaks after 5 of cifar10-fast's 24 epochs (scaled to other lengths).
PEAK_FRACTION = 5 / 24


def recipe_mapping(peak: float, weight_decay: float, batch_size: int) -> dict[str, Any]:
    """The original's summed-loss hyperparameters for the engine's per-example-mean ones, for metadata."""
    return {"engine": {"optimizer": "sgd", "peak_learning_rate": peak, "weight_decay": weight_decay,
                       "gradient": "mean over the step's examples of all workers"},
            "original": {"peak_learning_rate": f"{peak} / {batch_size}", "weight_decay": weight_decay * batch_size,
                         "gradient": f"sum over each worker's {batch_size} examples, averaged over workers"},
            "why_equal": "SGD (momentum, Nesterov) is linear in its gradient: lr/B x (B g + wd B w) = lr x (g + wd w)"}


def schedule_knots(peak: float, end_epoch: float, peak_epoch: float | None) -> tuple[tuple[float, float], ...]:
    """(epoch, rate) knots of the recipe's triangle: 0 at epoch 0, `peak` at `peak_epoch` (default 5/24 of the
    run), 0 at `end_epoch`."""
    if end_epoch <= 0:
        raise UsageError(f"the learning-rate schedule needs a positive length; the run ends at epoch {end_epoch:g}")
    top = end_epoch * PEAK_FRACTION if peak_epoch is None else float(peak_epoch)
    if not 0 <= top < end_epoch:
        raise UsageError(f"--lr-peak-epoch {top:g}: the rate must peak before the run ends (epoch {end_epoch:g})")
    return ((0.0, 0.0), (top, float(peak)), (float(end_epoch), 0.0))


class CompressedProtocol(AllReduceProtocol[CompressedConfig]):
    """All-reduce SGD (protocols/allreduce.py) with the recipe above and the exchange's columns always written."""

    always_exchange_columns = True
    row_fields = ROW_FIELDS
    columns = Columns(worker=ROW_FIELDS, master=MASTER_FIELDS)
    live_columns = (LiveColumn("payload", "payload_bytes", "{:,.0f} B"),)

    # --- set-up --------------------------------------------------------------------------------------------------
    def prepare(self) -> None:
        c = self.context.config
        self.batch = int(c.batch_size)
        if self.batch * self.size > len(self.dataset.x_train):
            raise UsageError(f"--batch-size {self.batch} x {self.size} workers is more than the "
                             f"{len(self.dataset.x_train)} training examples; lower --batch-size")
        super().prepare()
        end = self._end_epoch()
        self.knots = schedule_knots(float(c.learning_rate), end, c.lr_peak_epoch)
        self.schedule = Schedule("piecewise", base=float(c.learning_rate), knots=self.knots)
        # resolved here (the job's size is known to the ranks only), recorded in metadata.json's config: the
        # typed config is replaced by the resolved one before the run directory records it
        log_every = c.log_every or max(1, round(len(self.dataset.x_train) / (self.batch * self.size)))  # an epoch
        self.context.request.config = c.replace(lr_knots=[list(k) for k in self.knots], log_every=log_every)

    def augment_name(self) -> str | None:
        return self.context.config.augment

    def _end_epoch(self) -> float:
        """Where the schedule reaches 0: the run's --epochs, or where its --steps end."""
        c = self.context.config
        ends = []
        if c.epochs is not None:
            ends.append(float(c.epochs))
        if c.steps is not None:
            ends.append(int(c.steps) * self.batch * self.size / len(self.dataset.x_train))
        if not ends:
            raise UsageError("compress train needs --epochs or --steps: its learning rate falls to 0 at the end")
        return min(ends)

    def metadata(self) -> dict[str, Any]:
        c = self.context.config
        return {**super().metadata(),
                "recipe": {"schedule": "piecewise", "knots": [list(k) for k in self.knots],
                           "augmentation": self.augment.describe() if self.augment else "none",
                           "momentum": c.momentum, "nesterov": c.nesterov,
                           **recipe_mapping(float(c.learning_rate), float(c.weight_decay), self.batch)}}

    def batch_for(self, step: int) -> int:
        return self.batch

    def finish(self) -> dict[str, Any]:
        """Every rank: the run's byte totals over all ranks, for metadata.json's summary (rank 0 keeps them)."""
        return super().finish().get("compression", {})


PROTOCOL = CompressedProtocol
