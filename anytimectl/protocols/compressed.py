"""`compress train`: synchronous data-parallel SGD whose gradients really travel compressed (the AAAI'20 layer-wise
compression study, sands-lab/layer-wise-aaai20, done for real).

One step on every rank, top to bottom:

1. this rank's next `batch_size` examples of its own shard (disjoint shards; every rank starts from rank 0's
   parameters), augmented with a generator seeded by (seed, rank, step) when the recipe augments (cifar10);
2. the engine's contribution: the SUM of the per-example gradients (the original summed its loss) followed by a
   small dense remainder (batch-norm statistics times n, n, the loss sum);
3. the codec (`backends/torch/compression`: error-feedback memory, the method's compressor, bit packing) turns the
   trainable part into this rank's payload; the dense remainder (float32) is appended to it;
4. one all-gather of the variable-size payloads (`Comm.allgather_bytes`): every rank receives every rank's bytes;
5. every rank decodes every payload and adds them in rank order (`Codec.decode_sum`), adds the remainders in rank
   order, and applies that one sum: the engine divides by the total examples, adds weight decay once, and steps.
   Every rank computes the same sum from the same bytes in the same order, so the parameters stay identical
   bit for bit without any broadcast; the update is the per-example average of the ranks' DECOMPRESSED
   gradients (with equal batches: the mean of the ranks' decoded gradient sums divided by the batch).

`--method none` is the uncompressed baseline the original ran: one all-reduce of the whole dense contribution.

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

import math
import time
from typing import Any

import numpy as np

from anytimectl.errors import UsageError
from anytimectl.protocols.peer import PeerProtocol, PeerStep
from anytimectl.records import Columns, LiveColumn
from anytimectl.schedules import Schedule

ROW_FIELDS = ("batch_size", "payload_bytes", "bound_bytes", "dense_bytes", "extra_bytes", "values_sent",
              "encode_time", "decode_time")
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


class CompressedProtocol(PeerProtocol):
    row_fields = ROW_FIELDS
    columns = Columns(worker=ROW_FIELDS, master=("payload_bytes_total", "compression_ratio"))
    live_columns = (LiveColumn("payload", "payload_bytes", "{:,.0f} B"),)

    # --- set-up --------------------------------------------------------------------------------------------------
    def prepare(self) -> None:
        c = self.context.config
        self.batch = int(c["batch_size"])
        if self.batch * self.size > len(self.dataset.x_train):
            raise UsageError(f"--batch-size {self.batch} x {self.size} workers is more than the "
                             f"{len(self.dataset.x_train)} training examples; lower --batch-size")
        self.trainable = int(self.engine.trainable_count)
        self.contribution = int(self.engine.param_count) + 2
        self.remainder = self.contribution - self.trainable  # floats: BN statistics x n, n, loss sum
        self.method = c["method"]
        self.codec = self._make_codec(self.rank) if self.method != "none" else None
        end = self._end_epoch()
        self.knots = schedule_knots(float(c["learning_rate"]), end, c.get("lr_peak_epoch"))
        self.schedule = Schedule("piecewise", base=float(c["learning_rate"]), knots=self.knots)
        c["lr_knots"] = [list(k) for k in self.knots]
        if not c.get("log_every"):  # the recipe evaluates once an epoch
            c["log_every"] = max(1, round(len(self.dataset.x_train) / (self.batch * self.size)))
        self.totals = np.zeros(5)  # payload, dense, extra, encode seconds, decode seconds (this rank)

    def _make_codec(self, rank: int, error_feedback: bool | None = None) -> Any:
        from anytimectl.backends.torch.compression import make_codec

        c = self.context.config
        return make_codec(self.method, self.engine.layout, mode=c["mode"], seed=self.seed, rank=rank,
                          error_feedback=c["error_feedback"] if error_feedback is None else error_feedback,
                          ratio=c["ratio"], threshold=c["threshold"], levels=c["levels"],
                          value_dtype=c["value_dtype"], rescale=c["rescale"])

    def _end_epoch(self) -> float:
        """Where the schedule reaches 0: the run's --epochs, or where its --steps end."""
        c = self.context.config
        ends = []
        if c.get("epochs") is not None:
            ends.append(float(c["epochs"]))
        if c.get("steps") is not None:
            ends.append(int(c["steps"]) * self.batch * self.size / len(self.dataset.x_train))
        if not ends:
            raise UsageError("compress train needs --epochs or --steps: its learning rate falls to 0 at the end")
        return min(ends)

    def warm_up(self) -> None:
        """The engine's warm-up, then one encode and decode on a throwaway codec (no memory touched), so the
        first step's encode time is a real one."""
        super().warm_up()
        if self.codec is not None:
            codec = self._make_codec(self.rank, error_feedback=False)
            gradient = np.random.default_rng(self.seed).standard_normal(self.trainable).astype(np.float32)
            codec.decode_sum([codec.encode(gradient, 0)])

    def metadata(self) -> dict[str, Any]:
        c = self.context.config
        description = self.codec.describe() if self.codec is not None else {"method": "none", "mode": "dense",
                                                                             "error_feedback": False}
        return {"compression": {**description, "trainable_parameters": self.trainable,
                                "dense_bytes_per_step": 4 * self.trainable, "remainder_floats": self.remainder,
                                "tensor_sizes": [s.size for s in self.engine.layout if s.trainable],
                                "exchange": "all-reduce of the dense contribution" if self.codec is None else
                                "all-gather of variable-size payloads (codec payload + float32 remainder)"},
                "recipe": {"schedule": "piecewise", "knots": [list(k) for k in self.knots],
                           "augmentation": self.augment.describe() if self.augment else "none",
                           "momentum": c["momentum"], "nesterov": c["nesterov"],
                           **recipe_mapping(float(c["learning_rate"]), float(c["weight_decay"]), self.batch)}}

    # --- the step ------------------------------------------------------------------------------------------------
    def step(self, step: int, learning_rate: float) -> PeerStep:
        x, y = self.training_batch(step, self.batch)
        self.stream.advance(self.batch)
        buffer, examples, _ = self.engine.compute(x, y, 1, math.inf)
        row, f = self.clock.row, self.layout
        row[f["batch_size"]] = self.batch
        if self.codec is None:
            reduced, payload_total = self._dense_step(buffer, examples)
        else:
            reduced, payload_total = self._compressed_step(buffer, examples, step)
        loss = self.engine.apply(reduced, learning_rate)
        dense = 4 * self.trainable
        self.totals += (row[f["payload_bytes"]], dense, row[f["extra_bytes"]], row[f["encode_time"]],
                        row[f["decode_time"]])
        ranks = self.size if self.comm is not None else 1
        return PeerStep(loss=loss, examples=float(reduced[self.contribution - 2]),
                        master={"payload_bytes_total": payload_total,
                                "compression_ratio": dense * ranks / payload_total})

    def _dense_step(self, buffer: np.ndarray, examples: int) -> tuple[np.ndarray, int]:
        """--method none: the whole contribution in one all-reduce, as the original's uncompressed run."""
        self.clock.computed(examples)
        if self.comm is not None:
            self.comm.allreduce_sum(buffer)
            self.clock.sent(self.comm.ready_at)
        else:
            self.clock.sent()
        self.clock.received()
        self._record(4 * self.trainable, 4.0 * self.trainable, self.trainable, 0.0, 0.0)
        ranks = self.size if self.comm is not None else 1
        return buffer, 4 * self.trainable * ranks

    def _compressed_step(self, buffer: np.ndarray, examples: int, step: int) -> tuple[np.ndarray, int]:
        codec, trainable = self.codec, self.trainable
        start = time.perf_counter()
        messages = codec.compress(buffer[:trainable], step)
        payload = codec.pack(messages, step)
        counts = codec.counts(messages)
        message = np.concatenate([payload, buffer[trainable:].view(np.uint8)])
        encode = time.perf_counter() - start
        self.clock.computed(examples)
        if self.comm is not None:
            received = self.comm.allgather_bytes(message)
            self.clock.sent(self.comm.ready_at)
        else:
            received = [message]
            self.clock.sent()
        self.clock.received()
        start = time.perf_counter()
        tail = 4 * self.remainder
        reduced = np.empty(self.contribution, dtype=np.float32)
        reduced[:trainable] = codec.decode_sum([m[:m.size - tail] for m in received])
        rest = reduced[trainable:]
        rest[:] = 0.0
        for m in received:  # rank order on every rank: the same sum everywhere
            rest += np.frombuffer(m, dtype=np.float32, count=self.remainder, offset=m.size - tail)
        decode = time.perf_counter() - start
        self._record(payload.size, codec.bound_bits(counts) / 8, int(sum(counts)), encode, decode)
        return reduced, int(sum(m.size - tail for m in received))

    def _record(self, payload: int, bound: float, values: int, encode: float, decode: float) -> None:
        row, f = self.clock.row, self.layout
        row[f["payload_bytes"]] = payload
        row[f["bound_bytes"]] = bound
        row[f["dense_bytes"]] = 4 * self.trainable
        row[f["extra_bytes"]] = 4 * self.remainder
        row[f["values_sent"]] = values
        row[f["encode_time"]] = encode
        row[f["decode_time"]] = decode

    # --- the end and checkpoints ---------------------------------------------------------------------------------
    def finish(self) -> dict[str, Any]:
        """Every rank: the run's byte totals over all ranks, for metadata.json's summary (rank 0 keeps them)."""
        mine = np.concatenate([self.totals, [self.comm.bytes.sent, self.comm.bytes.received] if self.comm is not None
                               else [0.0, 0.0]])
        if self.comm is not None:
            payloads = self.comm.allgather_bytes(mine.astype(np.float64).view(np.uint8))
            everyone = np.stack([np.frombuffer(p.tobytes(), dtype=np.float64) for p in payloads])
        else:
            everyone = mine[None, :]
        payload, dense, extra = (float(v) for v in everyone[:, :3].sum(axis=0))
        steps = max(1, self.clock.row[self.layout["step"]] - self.start_step)
        return {"method": self.method, "mode": self.context.config["mode"] if self.codec is not None else "dense",
                "error_feedback": bool(self.context.config["error_feedback"]) and self.codec is not None,
                "payload_bytes": int(payload), "dense_bytes": int(dense), "extra_bytes": int(extra),
                "compression_ratio": dense / payload if payload else None,
                "wire_compression_ratio": (dense + extra) / (payload + extra) if payload + extra else None,
                "bytes_sent_total": int(everyone[:, 5].sum()), "bytes_received_total": int(everyone[:, 6].sum()),
                "mean_encode_s": float(everyone[:, 3].mean() / steps),
                "mean_decode_s": float(everyone[:, 4].mean() / steps)}

    def checkpoint_state(self) -> dict[str, Any]:
        state = super().checkpoint_state()
        state["residual"] = self.codec.memory.state() if self.codec is not None else None
        state["compress_totals"] = self.totals.copy()
        return state

    def load_checkpoint_state(self, state: dict[str, Any]) -> None:
        super().load_checkpoint_state(state)
        if self.codec is not None:
            self.codec.memory.load(state.get("residual"))
        self.totals = np.asarray(state.get("compress_totals", self.totals), dtype=np.float64).copy()


PROTOCOL = CompressedProtocol
