"""The master-worker step's large buffers across hosts: summed within each host first, then passed along a
pipelined chain of one rank per host, so that each host's link carries one buffer's worth each way per step.

Why. A step sums every worker's contribution at rank 0 and sends the parameters back. MPICH's own `Reduce` and
`Bcast` over the whole communicator (reduce-scatter + gather, scatter + all-gather for large buffers) made the
master's host link carry far more: `train amb` on 4 emulated hosts with 2 ranks each, 2.5 models in and 2.7 out
per step (2 hosts: 1.0 in, 1.7 out), where one each way is enough (README, "Emulating a cluster on one machine";
`tests/bench/cluster_master_link.py`). Here:

- reduce: every host's ranks sum into their host's leader (its lowest rank; rank 0 on the first host) through
  MPI within the host (shared memory, no link); then the leaders form a chain, the last host's leader sends its
  host sum segment by segment to the previous one, which adds its own and passes each segment on, down to rank 0.
  Every link carries the buffer once in and once out, except the ends (the first host: one in; the last: one out),
  and the segments keep every link busy at once, so a step's reduce takes about one buffer's transfer time plus
  (hosts - 1) segments';
- broadcast: the same chain the other way (rank 0 sends each segment to the second host's leader, which passes it
  on as it arrives), then each leader broadcasts within its host.

The sum's order is fixed (each host's sum, then the hosts from the last to the first), so the result does not
depend on timing. The leaders count what they move between hosts (`ByteCounter.across_sent/received`), which is
what their hosts' links carry for the step. `ANYTIMECTL_HOST_CHAIN=0` (the same on every rank) turns the chain
off: MPICH's own collectives then move the step, as before (for comparison, or on a fabric where they do better).
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np

from anytimectl.comm.waiting import ByteCounter

#: Bytes per chain segment: small enough that every link of the chain is busy at once, large enough that the
#: per-message cost stays small (one 256 KiB segment takes 2 ms at 1 Gbit/s, 21 ms at 100 Mbit/s).
SEGMENT_BYTES = 256 * 1024


class HostChain:
    """The ranks of a communicator grouped by host (MPI's COMM_TYPE_SHARED), and the chain of the hosts' leaders."""

    def __init__(self, node: Any, leaders: Any | None, hosts: int):
        self.node = node  # this rank's host
        self.leaders = leaders  # the hosts' lowest ranks, in rank order (None on the other ranks)
        self.hosts = hosts
        self.position = leaders.Get_rank() if leaders is not None else -1
        self._scratch: np.ndarray | None = None

    @classmethod
    def across(cls, mpi: Any) -> HostChain | None:
        """Collective: the chain over `mpi`'s hosts, or None when every rank is on one host."""
        from mpi4py import MPI

        if os.environ.get("ANYTIMECTL_HOST_CHAIN", "1") == "0":  # MPICH's own Reduce and Bcast instead
            return None
        rank = mpi.Get_rank()
        node = mpi.Split_type(MPI.COMM_TYPE_SHARED, key=rank)
        leader = node.Get_rank() == 0
        leaders = mpi.Split(0 if leader else MPI.UNDEFINED, key=rank)
        hosts = int(mpi.allreduce(1 if leader else 0, op=MPI.SUM))
        if hosts < 2:
            node.Free()
            if leaders != MPI.COMM_NULL:
                leaders.Free()
            return None
        return cls(node, leaders if leader else None, hosts)

    def _segments(self, size: int, itemsize: int) -> list[tuple[int, int]]:
        step = max(1, SEGMENT_BYTES // itemsize)
        return [(lo, min(size, lo + step)) for lo in range(0, size, step)]

    def reduce_sum(self, contribution: np.ndarray | None, reduced: np.ndarray | None, counter: ByteCounter) -> None:
        """Every rank's `contribution` summed into `reduced` on rank 0 (which passes contribution None and adds
        nothing); `reduced` is ignored elsewhere."""
        from mpi4py import MPI

        if self.leaders is None:  # not a leader: hand the contribution to this host's leader
            self.node.Reduce(contribution, None, op=MPI.SUM, root=0)
            return
        if self.position == 0:
            assert reduced is not None
            total = reduced
            total[...] = 0
            if self.node.Get_size() > 1:
                self.node.Reduce(MPI.IN_PLACE, total, op=MPI.SUM, root=0)
        else:
            assert contribution is not None
            total = self._scratch_like(contribution, 0)
            self.node.Reduce(contribution, total, op=MPI.SUM, root=0)
        flat = total.reshape(-1)
        segments = self._segments(flat.size, flat.itemsize)
        sends = []
        if self.position < self.hosts - 1:  # sums arrive from the next host along the chain
            incoming = self._scratch_like(flat, 1)
            receives = [self.leaders.Irecv(incoming[lo:hi], source=self.position + 1) for lo, hi in segments]
            counter.across_received += flat.nbytes
            for (lo, hi), request in zip(segments, receives, strict=True):
                request.Wait()
                flat[lo:hi] += incoming[lo:hi]
                if self.position > 0:
                    sends.append(self.leaders.Isend(flat[lo:hi], dest=self.position - 1))
        else:  # the last host starts the chain
            sends = [self.leaders.Isend(flat[lo:hi], dest=self.position - 1) for lo, hi in segments]
        if self.position > 0:
            counter.across_sent += flat.nbytes
            MPI.Request.Waitall(sends)

    def broadcast(self, params: np.ndarray, counter: ByteCounter) -> None:
        """rank 0's `params` into `params` on every rank."""
        from mpi4py import MPI

        if self.leaders is not None:
            flat = params.reshape(-1)
            segments = self._segments(flat.size, flat.itemsize)
            has_next = self.position < self.hosts - 1
            sends = []
            if self.position == 0:
                sends = [self.leaders.Isend(flat[lo:hi], dest=1) for lo, hi in segments]
            else:
                receives = [self.leaders.Irecv(flat[lo:hi], source=self.position - 1) for lo, hi in segments]
                counter.across_received += flat.nbytes
                for (lo, hi), request in zip(segments, receives, strict=True):
                    request.Wait()
                    if has_next:
                        sends.append(self.leaders.Isend(flat[lo:hi], dest=self.position + 1))
            if sends:
                counter.across_sent += flat.nbytes
                MPI.Request.Waitall(sends)
        if self.node.Get_size() > 1:
            self.node.Bcast(params, root=0)

    def _scratch_like(self, like: np.ndarray, index: int) -> np.ndarray:
        """One of two reusable buffers of `like`'s shape and type (0: this host's sum, 1: what arrives)."""
        if self._scratch is None or self._scratch.shape[1:] != (like.size,) or self._scratch.dtype != like.dtype:
            self._scratch = np.empty((2, like.size), dtype=like.dtype)
        return self._scratch[index].reshape(like.shape)
