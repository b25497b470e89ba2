"""Message passing for every backend: flat numpy buffers over mpi4py, waited on without burning a core.

A rank blocked in an MPI call spins at 100% of a core (environment.md), which on an oversubscribed laptop
steals the CPU from the ranks doing real work and makes every straggler look slower than it is. So every wait
that may last (for a straggler, for the master's update) is on a non-blocking operation that `wait` polls with
short sleeps: a waiting rank uses a few percent of a core. Only once every rank is known to be ready do
`collect` and `distribute` move the large buffers with MPI's blocking calls, whose algorithms are the fastest
and which then spin only for the transfer itself.

Buffers are contiguous numpy arrays (float32 for models) and travel as raw memory, never pickled.
Byte counts are the payload this rank hands over or obtains, per operation, whatever algorithm MPI
uses underneath, so they compare across world sizes.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np

#: Spin on Test() this long before sleeping: short waits then cost no sleep latency.
SPIN_SECONDS = 50e-6
#: Sleep between polls grows from the first value to the second.
FIRST_SLEEP = 50e-6
MAX_SLEEP = 1e-3


def _MPI_BYTE() -> Any:
    from mpi4py import MPI

    return MPI.BYTE


@dataclass
class ByteCounter:
    sent: int = 0
    received: int = 0


@dataclass
class Pending:
    """A set of outstanding requests that complete together."""

    requests: list[Any] = field(default_factory=list)

    def add(self, request: Any) -> Pending:
        self.requests.append(request)
        return self

    def test(self) -> bool:
        from mpi4py import MPI

        return not self.requests or bool(MPI.Request.Testall(self.requests))

    def wait(self, spin: bool = False, spin_seconds: float = SPIN_SECONDS) -> float:
        """Poll until every request completes; return the seconds spent waiting.

        spin=True never sleeps: for transfers already under way, where a sleeping poller would add up to
        MAX_SLEEP of latency to every one of MPI's internal handshakes. `spin_seconds` is how long to spin
        before the first sleep: longer for a large transfer that MPI progresses only while we call Test().
        """
        start = time.perf_counter()
        if spin:
            while not self.test():
                pass
            return time.perf_counter() - start
        if self.test():
            return time.perf_counter() - start
        spin_until = start + spin_seconds
        while time.perf_counter() < spin_until:
            if self.test():
                return time.perf_counter() - start
        pause = FIRST_SLEEP
        while not self.test():
            time.sleep(pause)
            pause = min(MAX_SLEEP, pause * 2)
        return time.perf_counter() - start


class Comm:
    """Non-blocking reduce / broadcast / gather / point-to-point on flat buffers, with byte accounting."""

    def __init__(self, mpi_comm: Any):
        self.mpi = mpi_comm
        self.rank: int = mpi_comm.Get_rank()
        self.size: int = mpi_comm.Get_size()
        self.bytes = ByteCounter()
        #: time.time() at which the last collective found every rank ready (its transfer began)
        self.ready_at = 0.0

    def reduce_sum(self, send: np.ndarray, recv: np.ndarray | None, root: int = 0) -> Pending:
        """Element-wise sum of every rank's `send` into `recv` on `root` (recv ignored elsewhere)."""
        from mpi4py import MPI

        if self.rank == root:
            assert recv is not None and recv.shape == send.shape and recv.dtype == send.dtype
            self.bytes.received += send.nbytes * (self.size - 1)
            return Pending().add(self.mpi.Ireduce(send, recv, op=MPI.SUM, root=root))
        self.bytes.sent += send.nbytes
        return Pending().add(self.mpi.Ireduce(send, None, op=MPI.SUM, root=root))

    def broadcast(self, buffer: np.ndarray, root: int = 0) -> Pending:
        """Fill `buffer` on every rank with root's contents."""
        if self.rank == root:
            self.bytes.sent += buffer.nbytes * (self.size - 1)
        else:
            self.bytes.received += buffer.nbytes
        return Pending().add(self.mpi.Ibcast(buffer, root=root))

    def gather(self, send: np.ndarray, recv: np.ndarray | None, root: int = 0) -> Pending:
        """Stack every rank's equally sized `send` into `recv` (shape (size, *send.shape)) on root."""
        if self.rank == root:
            assert recv is not None and recv.shape == (self.size, *send.shape)
            self.bytes.received += send.nbytes * (self.size - 1)
            return Pending().add(self.mpi.Igather(send, recv, root=root))
        self.bytes.sent += send.nbytes
        return Pending().add(self.mpi.Igather(send, None, root=root))

    def send(self, buffer: np.ndarray, dest: int, tag: int = 0) -> Pending:
        self.bytes.sent += buffer.nbytes
        return Pending().add(self.mpi.Isend(buffer, dest=dest, tag=tag))

    def recv(self, buffer: np.ndarray, source: int, tag: int = 0) -> Pending:
        self.bytes.received += buffer.nbytes
        return Pending().add(self.mpi.Irecv(buffer, source=source, tag=tag))

    def collect(self, contribution: np.ndarray, reduced: np.ndarray | None, stats: np.ndarray,
                all_stats: np.ndarray | None) -> float:
        """One step's upward traffic: every rank's `contribution` summed into `reduced` at rank 0, and the
        ranks' small `stats` gathered into `all_stats` beside it. Returns the seconds this rank spent.

        Waiting for the slowest rank happens on small non-blocking messages, with sleeps: rank 0 until every
        rank's stats are in, the others until rank 0 says go. Only then does everyone enter MPI's blocking
        reduce, whose algorithms are faster than the non-blocking ones for large buffers and which now spins
        only for the transfer itself.
        """
        from mpi4py import MPI

        start = time.perf_counter()
        gathered = self.gather(stats, all_stats)
        go = np.zeros(1, dtype=np.int8)
        if self.rank == 0:
            gathered.wait()
            self.broadcast(go).wait(spin=True)
        else:
            Pending(gathered.requests).add(self.broadcast(go).requests[0]).wait()
        self.ready_at = time.time()
        if self.rank == 0:
            self.bytes.received += contribution.nbytes * (self.size - 1)
        else:
            self.bytes.sent += contribution.nbytes
        self.mpi.Reduce(contribution, reduced, op=MPI.SUM, root=0)
        return time.perf_counter() - start

    def distribute(self, header: np.ndarray, params: np.ndarray) -> float:
        """One step's downward traffic: a small `header` and the `params` from rank 0 to every rank.

        The others sleep until the header arrives (rank 0 may be busy for a while), then everyone takes
        part in MPI's blocking broadcast of the parameters, which is already under way.
        """
        start = time.perf_counter()
        header_sent = self.broadcast(header)
        if self.rank == 0:
            header_sent.wait(spin=True)
            self.bytes.sent += params.nbytes * (self.size - 1)
        else:
            header_sent.wait()
            self.bytes.received += params.nbytes
        self.mpi.Bcast(params, root=0)
        return time.perf_counter() - start

    def barrier(self) -> float:
        return Pending().add(self.mpi.Ibarrier()).wait()

    # --- peer methods (no master): all-reduce, all-gather of byte payloads, partner exchange -------------------
    def allreduce_sum(self, buffer: np.ndarray, out: np.ndarray | None = None) -> float:
        """Every rank's `buffer` summed into `out` (default: in place) on every rank; returns seconds spent.

        As in `collect`, the wait for the slowest rank is a sleep-polled non-blocking barrier, and only then does
        everyone enter MPI's blocking all-reduce, which spins only for the transfer itself. Counted as handing
        over the buffer once and obtaining the result once, whatever algorithm MPI uses.
        """
        from mpi4py import MPI

        start = time.perf_counter()
        self.barrier()
        self.ready_at = time.time()
        self.bytes.sent += buffer.nbytes
        self.bytes.received += buffer.nbytes
        if out is None:
            self.mpi.Allreduce(MPI.IN_PLACE, buffer, op=MPI.SUM)
        else:
            self.mpi.Allreduce(buffer, out, op=MPI.SUM)
        return time.perf_counter() - start

    def allgather_bytes(self, payload: np.ndarray) -> list[np.ndarray]:
        """Every rank's byte payload (uint8, any length, empty allowed) to every rank, in rank order.

        The sizes travel first on a sleep-polled non-blocking all-gather, which is also where ranks wait for the
        slowest; then one blocking Allgatherv moves the bytes. Counted as handing over this rank's payload once
        and obtaining every other rank's.
        """
        payload = np.ascontiguousarray(payload, dtype=np.uint8)
        sizes = np.zeros(self.size, dtype=np.int64)
        Pending().add(self.mpi.Iallgather(np.array([payload.size], dtype=np.int64), sizes)).wait()
        self.ready_at = time.time()
        offsets = np.zeros(self.size, dtype=np.int64)
        np.cumsum(sizes[:-1], out=offsets[1:])
        gathered = np.empty(int(sizes.sum()), dtype=np.uint8)
        self.mpi.Allgatherv(payload, [gathered, sizes, offsets, _MPI_BYTE()])
        self.bytes.sent += payload.nbytes
        self.bytes.received += int(sizes.sum()) - payload.nbytes
        return [gathered[o:o + n] for o, n in zip(offsets, sizes, strict=True)]

    def exchange(self, sends: list[tuple[int, np.ndarray]], receives: list[tuple[int, np.ndarray]],
                 tag: int = 0) -> Pending:
        """Point-to-point with partners: post every send and receive at once; the caller waits on the result
        (`.wait(spin_seconds=...)`), so that a rank whose partner is late sleeps instead of spinning."""
        pending = Pending()
        for peer, buffer in receives:
            self.bytes.received += buffer.nbytes
            pending.add(self.mpi.Irecv(buffer, source=peer, tag=tag))
        for peer, buffer in sends:
            self.bytes.sent += buffer.nbytes
            pending.add(self.mpi.Isend(buffer, dest=peer, tag=tag))
        return pending

    def dup(self) -> Comm:
        """A separate communicator over the same ranks (collective): for traffic that must not mix with the
        protocol's, such as the run shell's step reports. It counts its bytes apart."""
        return Comm(self.mpi.Dup())

    def abort(self, code: int) -> None:
        self.mpi.Abort(code)

