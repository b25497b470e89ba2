"""Decentralised training without a master (the thesis code's methods): local, nocomm, allreduce, elastic, gossip.

Every rank trains on its own disjoint shard with SGD (momentum, Nesterov, weight decay, the MultiStepLR schedule),
from rank 0's initial parameters, on batch = --batch-size / workers. What differs is how the models meet:

- local: one process, no communication (the original forced it for one worker).
- nocomm: no exchange at all while training; the final model is the average of the workers' models.
- allreduce (gradAllReduce): the example-weighted gradient sums are all-reduced every step and every rank applies
  the same averaged gradient; the arithmetic is `AllReduceProtocol`'s, lock-step (lag 1).
- elastic (elasticGossip): on gossip rounds, with P_i = {the peer i chose} U {the workers that chose i},
  s_i = alpha * sum over j in P_i of (x_i - x_j), from the parameters before the optimizer step, subtracted after
  it: x_i <- step(x_i) - s_i. Symmetric: both ends of every pair move towards each other.
- gossip (gossipingSgd, pull): the initiator i receives its peer's parameters and, after its step,
  x_i <- step(x_i) - (x_i - x_peer) / 2; the peer only sends and does not change.

Who talks to whom comes from `GossipSchedule`: every rank derives every rank's choice for the round from a
generator seeded by (--seed, update), so nobody asks. Partners exchange point to point: an 8-byte header (the
update number, checked) sleep-polled, which is where a rank waits for a late partner (idle time), then the
trainable parameters (float32, never the batch-norm statistics, as in the original) with a spinning wait, since
both ends are known to be ready. The step reports that carry the rows to rank 0 are non-blocking and lagged
(`lag` = 16): a rank may run up to 16 updates ahead of the slowest, so a straggler holds back only the workers that
gossip with it, and a stop (Ctrl-C, a target accuracy) lands within 16 updates, on the same update on every rank.

Evaluation, as in the original: every --log-every updates each worker evaluates its model on the validation split
held out from the training data (val_loss / val_accuracy in worker_stats), rank 0's model is tested on the test
split in the background (master_stats); at the end every worker's model is tested, then the models are averaged
(an all-reduce) and the average is tested (AggTestAcc): metadata.json's summary and events.jsonl hold them.
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Sequence
from typing import Any

import numpy as np

from anytimectl.protocols.allreduce import AllReduceProtocol
from anytimectl.protocols.gossip_schedule import (
    MASK_RANKS,
    NO_PEER,
    GossipSchedule,
    mask_partners,
    partner_mask,
    partners_of,
)
from anytimectl.protocols.peer import PeerStep
from anytimectl.runtime.errors import UsageError
from anytimectl.runtime.records import Columns, LiveColumn
from anytimectl.runtime.run_config import GossipConfig

#: How many updates a rank may run ahead of the slowest; also how late (in updates) an agreed stop lands.
GOSSIP_LAG = 16
#: The validation split is the same in every run (independent of --seed), like the test split.
_HOLDOUT_SEED = 0x5EED_0A1
HEADER_TAG, PARAMS_TAG = 0x60, 0x61
#: Spin this long on a partner's header before sleeping between polls: a partner that is nearly ready costs no
#: sleep latency, and one that is late costs a few percent of a core while we wait.
EXCHANGE_SPIN = 0.003


# --- the update rules, on flat float32 buffers ---------------------------------------------------------------------
def elastic_correction(own: np.ndarray, partners: Sequence[np.ndarray], alpha: float) -> np.ndarray:
    """s_i = alpha * sum_j (x_i - x_j) over the partners' pre-step parameters (subtracted after the step)."""
    correction = np.zeros_like(own)
    for other in partners:
        correction += own - other
    correction *= np.float32(alpha)
    return correction


def pull_correction(own: np.ndarray, peer: np.ndarray) -> np.ndarray:
    """Pull gossip: s_i = (x_i - x_peer) / 2, so that x_i <- step(x_i) - s_i."""
    return (own - peer) * np.float32(0.5)


def holdout(n: int, size: int) -> tuple[np.ndarray, np.ndarray]:
    """(training indices, validation indices): `size` examples of a fixed permutation held out for validation."""
    if not 0 <= size < n:
        raise UsageError(f"--val-size {size}: must be between 0 and {n - 1} (the training split has {n} examples)")
    order = np.random.default_rng(_HOLDOUT_SEED).permutation(n)
    return np.sort(order[size:]), np.sort(order[:size])


class GossipProtocol(AllReduceProtocol[GossipConfig]):
    row_fields = ("batch_size", "peer", "partners", "partner_count", "val_loss", "val_accuracy", "val_accuracy_last")
    columns = Columns(worker=("batch_size", "peer", "partners", "partner_count", "val_loss", "val_accuracy"))
    live_columns = (LiveColumn("batch", "batch_size"), LiveColumn("partners", "partner_count"),
                    LiveColumn("val acc", "val_accuracy_last", "{:.3f}"))
    lag = GOSSIP_LAG

    def augment_name(self) -> str | None:
        return self.context.config.augment

    # --- set-up --------------------------------------------------------------------------------------------------
    def make_stream(self) -> Any:
        """Hold the validation split out of the training data first, then shard what is left."""
        c = self.context.config
        d = self.dataset
        train, val = holdout(len(d.x_train), int(c.val_size or 0))
        self.x_val, self.y_val = d.x_train[val], d.y_train[val]
        self.dataset = dataclasses.replace(d, x_train=d.x_train[train], y_train=d.y_train[train])
        if len(self.dataset.x_train) < self.size:
            raise UsageError(f"--val-size {len(val)} leaves {len(train)} training examples for {self.size} workers; "
                             "lower --val-size")
        return super().make_stream()

    def prepare(self) -> None:
        from anytimectl.backends import configure
        from anytimectl.data import test_subset

        super().prepare()  # AllReduceProtocol's transport and gradient exchange, for the allreduce method
        c = self.context.config
        if self.exchange_options.compressor != "none" and c.rule != "allreduce":
            raise UsageError(f"--compressor {self.exchange_options.compressor} compresses gradients, which only "
                             f"--method allreduce exchanges; drop --compressor or use --method allreduce")
        requested = c.rule
        if requested == "local" and self.size > 1:
            raise UsageError(f"--method local runs one process, not {self.size}; drop --workers (or use 1)")
        #: one worker is local training whatever was asked, as in the original
        self.rule = requested if self.size > 1 else "local"
        # Every rank's own stream of randomness (dropout, augmentation): seed + rank, like the original. The
        # initial parameters are rank 0's (broadcast by PeerProtocol), so they do not depend on it.
        configure(self.context.request.backend, self.context.rank.threads, self.seed + self.rank)
        # batch_size: per worker; under the user's own mpiexec only --global-batch-size may be known, split here
        self.per_worker = int(c.batch_size or int(c.global_batch_size) // self.size)
        if self.per_worker < 1:
            raise UsageError(f"--global-batch-size {c.global_batch_size} is split over the workers: it must be at "
                             f"least the number of workers ({self.size})")
        self.lag = 1 if self.rule in ("allreduce", "local") else GOSSIP_LAG
        self.gossip = GossipSchedule.create(self.size, self.seed, prob=float(c.agg_prob),
                                            period=int(c.agg_period), weighted=bool(c.weighted),
                                            penalty=float(c.penalty))
        self.alpha = float(c.elastic_alpha)
        self.trainable = int(getattr(self.engine, "trainable_count", self.engine.param_count))
        self.log_every = int(c.log_every or 1)
        if self.rank == 0:
            self.x_final, self.y_final = self.x_test, self.y_test
        else:
            self.x_final, self.y_final = test_subset(self.dataset, c.test_size, self.seed)
        self._header_out = np.zeros(1, dtype=np.int64)
        self._last_step = 0
        self._bytes_at_start: tuple[int, int] | None = None  # set by the first step
        self._everyone = partner_mask([r for r in range(self.size) if r != self.rank]) \
            if self.size <= MASK_RANKS else math.nan

    @property
    def bytes_at_start(self) -> tuple[int, int]:
        """The comm byte counters when training began (after the start-up broadcast, or as a resumed run's
        checkpoint left them): the summary counts the training's traffic only."""
        return self._bytes_at_start or (0, 0)

    def batch_for(self, step: int) -> int:
        return self.per_worker

    def metadata(self) -> dict[str, Any]:
        return {**super().metadata(),
                "gossip": {"rule": self.rule, "lag": self.lag, "per_worker_batch": self.per_worker,
                           "validation_examples": len(self.x_val), "training_examples": len(self.dataset.x_train),
                           "trainable_parameters": self.trainable}}

    def formatters(self) -> dict[str, Any]:
        def partners(value: float, worker: int, step: int) -> str:
            if math.isfinite(value):
                ranks = mask_partners(value)
            elif self.rule == "allreduce":
                ranks = [r for r in range(self.size) if r != worker - 1]
            elif self.rule in ("elastic", "gossip"):  # worlds beyond MASK_RANKS: the same derivation the rank used
                ranks = list(partners_of(self.gossip.choices(step), worker - 1))
            else:
                ranks = []
            return " ".join(str(r + 1) for r in ranks)

        def evaluated(value: float, worker: int, step: int) -> float | None:
            return float(value) if math.isfinite(value) else None  # an empty cell where nothing was evaluated

        return {"partners": partners, "val_loss": evaluated, "val_accuracy": evaluated}

    # --- one update ------------------------------------------------------------------------------------------
    def step(self, step: int, learning_rate: float) -> PeerStep:
        row, f = self.clock.row, self.layout
        self._last_step = step
        if self._bytes_at_start is None:
            self._bytes_at_start = (self.comm.bytes.sent, self.comm.bytes.received) if self.comm is not None else (0, 0)
        if self.rule == "allreduce":
            result = super().step(step, learning_rate)
            self._mark(NO_PEER, self._everyone, self.size - 1)
            self._validate(step)
            return PeerStep(loss=result.loss, examples=result.examples, master=result.master)
        x, y = self.training_batch(step, self.per_worker)
        buffer, examples, _ = self.engine.compute(x, y, 1, math.inf)
        self.stream.advance(examples)
        self.clock.computed(examples)
        row[f["batch_size"]] = self.per_worker
        choices = self.gossip.choices(step) if self.rule in ("elastic", "gossip") else None
        partners = partners_of(choices, self.rank) if choices is not None else ()
        peer = int(choices[self.rank]) if choices is not None else NO_PEER
        if self.rank == 0 and choices is not None and (choices != NO_PEER).any():
            self.context.log("gossip round", step=step,
                             chose=[[int(i) + 1, int(p) + 1] for i, p in enumerate(choices) if p != NO_PEER])
        if partners:
            own = np.array(self.engine.get_params()[:self.trainable], dtype=np.float32)  # pre-step, kept
            if self.rule == "elastic":
                sends, pulls = list(partners), list(partners)
            else:
                sends = [int(j) for j in np.flatnonzero(choices == self.rank)]
                pulls = [peer] if peer != NO_PEER else []
            received = {p: np.empty(self.trainable, dtype=np.float32) for p in pulls}
            ready = self._exchange(step, partners, own, sends, received)
            self.clock.sent(ready)
            self.clock.received()
            loss = self.engine.apply(buffer, learning_rate)
            if self.rule == "elastic":
                correction = elastic_correction(own, [received[p] for p in partners], self.alpha)
            else:
                correction = pull_correction(own, received[peer]) if pulls else None
            if correction is not None:
                params = np.array(self.engine.get_params(), dtype=np.float32)
                params[:self.trainable] -= correction
                self.engine.set_params(params)
        else:
            self.clock.sent()
            self.clock.received()
            loss = self.engine.apply(buffer, learning_rate)
        self._mark(peer, partner_mask(partners) if self.size <= MASK_RANKS else math.nan, len(partners))
        self._validate(step)
        return PeerStep(loss=loss, examples=float(examples * self.size))

    def _exchange(self, step: int, partners: Sequence[int], own: np.ndarray, sends: Sequence[int],
                  received: dict[int, np.ndarray]) -> float:
        """Headers with every partner (sleep-polled: the wait for a late partner), then the parameters (spun:
        both ends are ready). Returns when the transfer began (every partner was ready)."""
        self._header_out[0] = step
        headers = {p: np.zeros(1, dtype=np.int64) for p in partners}
        self.comm.exchange([(p, self._header_out) for p in partners], list(headers.items()),
                           tag=HEADER_TAG).wait(spin_seconds=EXCHANGE_SPIN)
        ready = time.time()
        wrong = {p + 1: int(h[0]) for p, h in headers.items() if int(h[0]) != step}
        if wrong:
            raise RuntimeError(f"worker {self.worker} at update {step} got headers of other updates from partners "
                               f"{wrong}: the partner derivation disagrees between ranks")
        self.comm.exchange([(p, own) for p in sends], list(received.items()), tag=PARAMS_TAG).wait(spin=True)
        return ready

    def _mark(self, peer: int, mask: float, count: int) -> None:
        row, f = self.clock.row, self.layout
        row[f["peer"]] = peer + 1 if peer != NO_PEER else 0
        row[f["partners"]] = mask
        row[f["partner_count"]] = count

    def _validate(self, step: int) -> None:
        row, f = self.clock.row, self.layout
        row[f["val_loss"]] = row[f["val_accuracy"]] = math.nan
        if len(self.x_val) and step % self.log_every == 0:
            loss, accuracy = self.engine.evaluate(self.x_val, self.y_val)
            row[f["val_loss"]], row[f["val_accuracy"]] = loss, accuracy
            row[f["val_accuracy_last"]] = accuracy

    # --- the end ---------------------------------------------------------------------------------------------
    def finish(self) -> dict[str, Any]:
        """Every worker's model on the test split, then the average of the models (AggTestAcc)."""
        compression = self.exchange_summary()  # collective: every rank, before anything returns
        sent, received = (self.comm.bytes.sent, self.comm.bytes.received) if self.comm is not None else (0, 0)
        sent, received = sent - self.bytes_at_start[0], received - self.bytes_at_start[1]
        own_loss, own_accuracy = self.engine.evaluate(self.x_final, self.y_final)
        mine = np.array([own_loss, own_accuracy, sent, received], dtype=np.float64)
        if self.comm is None:
            everyone = mine[None, :]
            agg_loss, agg_accuracy = own_loss, own_accuracy
        else:
            everyone = np.zeros((self.size, 4)) if self.rank == 0 else None
            self.comm.gather(mine, everyone).wait()
            params = np.array(self.engine.get_params(), dtype=np.float32)
            self.comm.allreduce_sum(params)
            params /= np.float32(self.size)
            self.engine.set_params(params)
            agg_loss, agg_accuracy = self.engine.evaluate(self.x_final, self.y_final) if self.rank == 0 else (0, 0)
        if self.rank != 0:
            return {}
        workers = range(1, self.size + 1)
        updates = max(1, self._last_step - self.start_step)
        summary = {
            "gossip_rule": self.rule,
            "test_accuracy_per_worker": {w: float(everyone[w - 1, 1]) for w in workers},
            "test_loss_per_worker": {w: float(everyone[w - 1, 0]) for w in workers},
            "agg_test_accuracy": float(agg_accuracy),
            "agg_test_loss": float(agg_loss),
            "bytes_sent_per_worker": {w: int(everyone[w - 1, 2]) for w in workers},
            "bytes_recv_per_worker": {w: int(everyone[w - 1, 3]) for w in workers},
            "bytes_sent_per_update": float(np.mean(everyone[:, 2]) / updates),
            "test_examples": len(self.x_final),
            **({"compression": compression} if compression else {}),
        }
        for w in workers:
            self.context.log("final test", worker=w, accuracy=summary["test_accuracy_per_worker"][w],
                             test_loss=summary["test_loss_per_worker"][w])
        self.context.log("averaged model tested", accuracy=summary["agg_test_accuracy"],
                         test_loss=summary["agg_test_loss"], workers=self.size)
        return summary


PROTOCOL = GossipProtocol
