"""The MPI transport: flat numpy buffers over mpi4py, waited on without burning a core (`comm.waiting`).

Every wait that may last (for a straggler, for the master's update) is on a non-blocking operation polled with
short sleeps. Only once every rank is known to be ready do `collect` and `distribute` move the large buffers with
MPI's blocking calls, whose algorithms are the fastest and which then spin only for the transfer itself.

When every rank of the job is on one host, a step's `collect` and `distribute` go through shared memory instead,
and their waits sleep in the kernel on per-rank doorbells (`anytimectl.comm.shm`): no rank spins, and a waiting
rank wakes the moment the rank it waits for arrives.

Buffers are contiguous numpy arrays (float32 for models) and travel as raw memory, never pickled.
Byte counts are the payload this rank hands over or obtains, per operation, whatever algorithm MPI
uses underneath, so they compare across world sizes.
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np

from anytimectl.comm.waiting import ALLREDUCE_LATENCY_SHARE, ByteCounter, Pending

_SUM16_OPS: dict[str, Any] = {}


def _sum16_op(kind: str) -> Any:
    """The MPI operation that adds 16-bit floats of `kind` (created once per process)."""
    if kind not in _SUM16_OPS:
        from mpi4py import MPI

        from anytimectl.comm.half_floats import add_words

        def add(incoming: Any, inout: Any, datatype: Any) -> None:
            target = np.frombuffer(inout, dtype=np.uint16)
            target[:] = add_words(np.frombuffer(incoming, dtype=np.uint16), target, kind)

        _SUM16_OPS[kind] = MPI.Op.Create(add, commute=True)
    return _SUM16_OPS[kind]


def mpi_byte() -> Any:
    from mpi4py import MPI

    return MPI.BYTE


class Comm:
    """Non-blocking reduce / broadcast / gather / point-to-point on flat buffers, with byte accounting."""

    def __init__(self, mpi_comm: Any, shared_memory: bool = True):
        """shared_memory=False keeps this communicator's traffic on MPI messages even on one host."""
        self.mpi = mpi_comm
        self.rank: int = mpi_comm.Get_rank()
        self.size: int = mpi_comm.Get_size()
        self.bytes = ByteCounter()
        #: time.time() at which the last collective found every rank ready (its transfer began)
        self.ready_at = 0.0
        self._shared: Any = False if shared_memory else None  # False: not decided yet; else SharedStep or None
        #: across hosts, the step's reduce and broadcast pass along a chain of hosts (`comm.host_chain`)
        self._chain: Any = None

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

    def shared_memory(self) -> Any:
        """The shared-memory step (`anytimectl.comm.shm.SharedStep`) when every rank is on this host, else None.
        Collective on first use (every rank decides together)."""
        if self._shared is False:
            from anytimectl.comm import shm

            self._shared = None
            if shm.enabled() and shm.all_on_one_host(self.mpi):
                self._shared = shm.SharedStep(self.mpi)
            else:
                from anytimectl.comm.host_chain import HostChain

                self._chain = HostChain.across(self.mpi)
        return self._shared

    @property
    def spans_hosts(self) -> bool:
        """Whether the step's large buffers travel along a chain of hosts (known after the first collect or
        distribute)."""
        return self._chain is not None

    @property
    def uses_shared_memory(self) -> bool | None:
        """Whether step traffic goes through shared memory; None until the first collect or distribute."""
        return None if self._shared is False else self._shared is not None

    def collect(self, contribution: np.ndarray | None, reduced: np.ndarray | None, stats: np.ndarray,
                all_stats: np.ndarray | None) -> float:
        """One step's upward traffic: every rank's `contribution` summed into `reduced` at rank 0, and the
        ranks' small `stats` gathered into `all_stats` beside it. Returns the seconds this rank spent.
        Collective: every rank passes buffers of the same shapes; rank 0 may pass contribution None (it adds
        nothing of its own, as a master).

        Ranks on one host go through shared memory (`anytimectl.comm.shm`): a worker hands its contribution over
        without waiting for anyone, rank 0 adds each as it arrives (in rank order, so the sum does not depend on
        who came first), and waits sleep in the kernel until the awaited rank arrives.

        Across hosts, waiting for the slowest rank happens on small non-blocking messages, with sleeps: rank 0
        until every rank's stats are in, the others until rank 0 says go. Only then does everyone enter MPI's
        blocking reduce, whose algorithms are faster than the non-blocking ones for large buffers and which now
        spins only for the transfer itself: within each host to its leader, then along the chain of hosts
        (`comm.host_chain`), so that each host's link carries the buffer once.
        """
        start = time.perf_counter()
        shared = self.shared_memory()
        if shared is not None:
            self._count_collect(contribution, reduced, stats)
            self.ready_at = shared.collect(contribution, reduced, stats, all_stats)
            return time.perf_counter() - start
        return self._collect_mpi(contribution, reduced, stats, all_stats, start)

    def _count_collect(self, contribution: np.ndarray | None, reduced: np.ndarray | None, stats: np.ndarray) -> None:
        if self.rank == 0:
            self.bytes.received += (reduced.nbytes + stats.nbytes) * (self.size - 1)
        else:
            self.bytes.sent += contribution.nbytes + stats.nbytes

    def _collect_mpi(self, contribution: np.ndarray | None, reduced: np.ndarray | None, stats: np.ndarray,
                     all_stats: np.ndarray | None, start: float) -> float:
        from mpi4py import MPI

        gathered = self.gather(stats, all_stats)
        go = np.zeros(1, dtype=np.int8)
        if self.rank == 0:
            gathered.wait()
            self.broadcast(go).wait(spin=True)
        else:
            Pending(gathered.requests).add(self.broadcast(go).requests[0]).wait()
        self.ready_at = time.time()
        if self.rank == 0:
            self.bytes.received += reduced.nbytes * (self.size - 1)
        else:
            self.bytes.sent += contribution.nbytes
        if self._chain is not None:
            self._chain.reduce_sum(contribution, reduced, self.bytes)
        elif contribution is None:  # rank 0 adds nothing of its own
            reduced[...] = 0
            self.mpi.Reduce(MPI.IN_PLACE, reduced, op=MPI.SUM, root=0)
        else:
            self.mpi.Reduce(contribution, reduced, op=MPI.SUM, root=0)
        return time.perf_counter() - start

    def distribute(self, header: np.ndarray, params: np.ndarray, acknowledge: bool = True) -> float:
        """One step's downward traffic: a small `header` and the `params` from rank 0 to every rank.

        On one host, through shared memory: rank 0 writes them once (not at all if they are the buffers
        `outgoing` gave it) and every rank copies them out; `acknowledge=False` delays telling rank 0 until
        `acknowledge()`, for rank 0's `wait_acknowledged`. Across hosts the others sleep until the header arrives
        (rank 0 may be busy for a while), then everyone takes part in MPI's blocking broadcast of the parameters,
        which is already under way (and the acknowledgements are no-ops).
        """
        start = time.perf_counter()
        shared = self.shared_memory()
        if shared is not None:
            if self.rank == 0:
                self.bytes.sent += (header.nbytes + params.nbytes) * (self.size - 1)
            else:
                self.bytes.received += header.nbytes + params.nbytes
            shared.distribute(header, params, acknowledge)
            return time.perf_counter() - start
        header_sent = self.broadcast(header)
        if self.rank == 0:
            header_sent.wait(spin=True)
            self.bytes.sent += params.nbytes * (self.size - 1)
        else:
            header_sent.wait()
            self.bytes.received += params.nbytes
        if self._chain is not None:
            self._chain.broadcast(params, self.bytes)
        else:
            self.mpi.Bcast(params, root=0)
        return time.perf_counter() - start

    def receive_view(self, header: np.ndarray, params: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Not rank 0: `distribute(header, params, acknowledge=False)`, but on one host return views of what
        arrived instead of copying it (valid until `acknowledge()`, not to be written to); elsewhere the filled
        arguments."""
        shared = self.shared_memory()
        if shared is None:
            self.distribute(header, params, acknowledge=False)
            return header, params
        self.bytes.received += header.nbytes + params.nbytes
        return shared.distribute(header, params, acknowledge=False, view=True)

    def outgoing(self, header: np.ndarray, params: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Rank 0, one host: the buffers the next `distribute` of these shapes sends, to fill in place (e.g. as
        `collect`'s `reduced`), saving a copy. Elsewhere, and before the first such distribute: the arguments."""
        shared = self._shared if self._shared is not False else None
        return shared.outgoing(header, params) if shared is not None else (header, params)

    def acknowledge(self) -> None:
        """After `distribute(..., acknowledge=False)`: this rank is done with what it received."""
        shared = self._shared if self._shared is not False else None
        if shared is not None:
            shared.acknowledge()

    def wait_acknowledged(self, timeout: float | None = None) -> bool:
        """Rank 0: wait (asleep) until every rank acknowledged the last distribute (at once across hosts)."""
        shared = self._shared if self._shared is not False else None
        return shared.wait_acknowledged(timeout) if shared is not None else True

    def barrier(self, latency_share: float | None = None) -> float:
        return Pending().add(self.mpi.Ibarrier()).wait(latency_share=latency_share)

    # --- peer methods (no master): all-reduce, all-gather of byte payloads, partner exchange -------------------
    def allreduce_sum(self, buffer: np.ndarray, out: np.ndarray | None = None) -> float:
        """Every rank's `buffer` summed into `out` (default: in place) on every rank; returns seconds spent.

        As in `collect`, the wait for the slowest rank is a sleep-polled non-blocking barrier, and only then does
        everyone enter MPI's blocking all-reduce, which spins only for the transfer itself. Counted as handing
        over the buffer once and obtaining the result once, whatever algorithm MPI uses.
        """
        from mpi4py import MPI

        start = time.perf_counter()
        self.barrier(latency_share=ALLREDUCE_LATENCY_SHARE)
        self.ready_at = time.time()
        self.bytes.sent += buffer.nbytes
        self.bytes.received += buffer.nbytes
        if out is None:
            self.mpi.Allreduce(MPI.IN_PLACE, buffer, op=MPI.SUM)
        else:
            self.mpi.Allreduce(buffer, out, op=MPI.SUM)
        return time.perf_counter() - start

    def allreduce_sum16(self, words: np.ndarray, kind: str) -> float:
        """Every rank's 16-bit floats (`kind` float16 or bfloat16, as their uint16 bits) summed in place in that
        type, every addition rounded to it (`comm.half_floats`); returns seconds spent. MPI has no bfloat16 and no
        float16 sum everywhere, so the addition is a user-defined operation; counted as `allreduce_sum`."""
        start = time.perf_counter()
        self.barrier(latency_share=ALLREDUCE_LATENCY_SHARE)
        self.ready_at = time.time()
        self.bytes.sent += words.nbytes
        self.bytes.received += words.nbytes
        from mpi4py import MPI

        self.mpi.Allreduce(MPI.IN_PLACE, words, op=_sum16_op(kind))
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
        self.mpi.Allgatherv(payload, [gathered, sizes, offsets, mpi_byte()])
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
