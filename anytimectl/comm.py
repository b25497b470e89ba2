"""Message passing for every backend: flat numpy buffers over mpi4py, waited on without burning a core.

A rank blocked in an MPI call spins at 100% of a core (environment.md), which on an oversubscribed laptop
steals the CPU from the ranks doing real work and makes every straggler look slower than it is. So every
operation here is non-blocking and `wait` polls it with short sleeps: a waiting rank uses about 2% of a core.

Buffers are contiguous numpy arrays (float32 for models) and travel as raw memory, never pickled.
Byte counts are the payload this rank hands over or obtains, per operation, whatever algorithm MPI
uses underneath, so they compare across world sizes.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

#: Spin on Test() this long before sleeping: short waits then cost no sleep latency.
SPIN_SECONDS = 50e-6
#: Sleep between polls grows from the first value to the second.
FIRST_SLEEP = 50e-6
MAX_SLEEP = 1e-3


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

    def wait_until(self, done: Pending) -> None:
        """Sleep-poll this group (driving its progress) until the requests of `done` have completed."""
        pause = FIRST_SLEEP
        spin_until = time.perf_counter() + SPIN_SECONDS
        while True:
            self.test_some()
            if done.test():
                return
            if time.perf_counter() >= spin_until:
                time.sleep(pause)
                pause = min(MAX_SLEEP, pause * 2)

    def test_some(self) -> None:
        from mpi4py import MPI

        if self.requests:
            MPI.Request.Testsome(self.requests)

    def wait(self, spin: bool = False) -> float:
        """Poll until every request completes; return the seconds spent waiting.

        spin=True never sleeps: for transfers already under way, where a sleeping poller would add up to
        MAX_SLEEP of latency to every one of MPI's internal handshakes.
        """
        start = time.perf_counter()
        if spin:
            while not self.test():
                pass
            return time.perf_counter() - start
        if self.test():
            return time.perf_counter() - start
        spin_until = start + SPIN_SECONDS
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

    def barrier(self) -> float:
        return Pending().add(self.mpi.Ibarrier()).wait()

    def abort(self, code: int) -> None:
        self.mpi.Abort(code)


def wait_all(pendings: Sequence[Pending]) -> float:
    """Wait for several pending groups as one; returns the seconds spent."""
    merged = Pending([r for p in pendings for r in p.requests])
    return merged.wait()


def wait_signal_then_bulk(signal: Pending, bulk: Pending) -> float:
    """Sleep-poll until a small `signal` completes, then spin until the `bulk` transfer completes.

    Waiting for stragglers can take seconds and must not burn a core; moving megabytes takes milliseconds and
    must not wait on a sleeping poller. The signal (a tiny message sent together with the bulk one) tells the
    two apart: once it is in, the bulk data is already on its way.
    """
    start = time.perf_counter()
    both = Pending(signal.requests + bulk.requests)
    both.wait_until(signal)
    bulk.wait(spin=True)
    return time.perf_counter() - start
