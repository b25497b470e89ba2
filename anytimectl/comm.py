"""Message passing for every backend: flat numpy buffers over mpi4py, waited on without burning a core.

A rank blocked in an MPI call spins at 100% of a core (environment.md), which on an oversubscribed laptop
steals the CPU from the ranks doing real work and makes every straggler look slower than it is. So every wait
that may last (for a straggler, for the master's update) is on a non-blocking operation that `wait` polls with
short sleeps: a waiting rank uses a few percent of a core. Only once every rank is known to be ready do
`collect` and `distribute` move the large buffers with MPI's blocking calls, whose algorithms are the fastest
and which then spin only for the transfer itself.

When every rank of the job is on one host, a step's `collect` and `distribute` and the asynchronous protocol's
channel go through shared memory instead, and their waits sleep in the kernel on per-rank doorbells
(`anytimectl.shm`): no rank spins, and a waiting rank wakes the moment the rank it waits for arrives.

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
#: The all-reduce's wait for the slowest rank sleeps at most this share of the time waited so far (Pending.wait):
#: every step of the peer methods meets there, so its wake-up latency is paid on every step.
ALLREDUCE_LATENCY_SHARE = 0.05


_SUM16_OPS: dict[str, Any] = {}


def _sum16_op(kind: str) -> Any:
    """The MPI operation that adds 16-bit floats of `kind` (created once per process)."""
    if kind not in _SUM16_OPS:
        from mpi4py import MPI

        from anytimectl.exchange.casts import add_words

        def add(incoming: Any, inout: Any, datatype: Any) -> None:
            target = np.frombuffer(inout, dtype=np.uint16)
            target[:] = add_words(np.frombuffer(incoming, dtype=np.uint16), target, kind)

        _SUM16_OPS[kind] = MPI.Op.Create(add, commute=True)
    return _SUM16_OPS[kind]


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

    def wait(self, spin: bool = False, spin_seconds: float = SPIN_SECONDS,
             latency_share: float | None = None) -> float:
        """Poll until every request completes; return the seconds spent waiting.

        spin=True never sleeps: for transfers already under way, where a sleeping poller would add up to
        MAX_SLEEP of latency to every one of MPI's internal handshakes. `spin_seconds` is how long to spin
        before the first sleep: longer for a large transfer that MPI progresses only while we call Test().
        `latency_share` caps each sleep at that share of the time waited so far (and at MAX_SLEEP), instead of
        doubling it: a short wait then adds at most that share of itself, where the doubling could add as much as
        the wait (a rank that waited 1.2 ms for an all-reduce partner slept 0.8 ms more); a long one costs the
        same few wake-ups per millisecond.
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
            if latency_share is None:
                pause = min(MAX_SLEEP, pause * 2)
            else:
                pause = min(MAX_SLEEP, max(FIRST_SLEEP, latency_share * (time.perf_counter() - start)))
        return time.perf_counter() - start


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
        """The shared-memory step (`anytimectl.shm.SharedStep`) when every rank is on this host, else None.
        Collective on first use (every rank decides together)."""
        if self._shared is False:
            from anytimectl import shm

            self._shared = None
            if shm.enabled() and shm.all_on_one_host(self.mpi):
                self._shared = shm.SharedStep(self.mpi)
        return self._shared

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

        Ranks on one host go through shared memory (`anytimectl.shm`): a worker hands its contribution over
        without waiting for anyone, rank 0 adds each as it arrives (in rank order, so the sum does not depend on
        who came first), and waits sleep in the kernel until the awaited rank arrives.

        Across hosts, waiting for the slowest rank happens on small non-blocking messages, with sleeps: rank 0
        until every rank's stats are in, the others until rank 0 says go. Only then does everyone enter MPI's
        blocking reduce, whose algorithms are faster than the non-blocking ones for large buffers and which now
        spins only for the transfer itself.
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
        if contribution is None:  # rank 0 adds nothing of its own
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
        type, every addition rounded to it (anytimectl.exchange.casts); returns seconds spent. MPI has no bfloat16
        and no float16 sum everywhere, so the addition is a user-defined operation; counted as `allreduce_sum`."""
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

    def async_channel(self, contribution_length: int, stats_length: int, header_length: int, params_length: int,
                      dtype: Any = np.float32) -> Any:
        """The asynchronous master-worker protocol's traffic (collective): through shared memory when every rank
        is on this host (`anytimectl.shm.AsyncShared`), else MPI point-to-point (`AsyncMpi`). Both never make the
        master wait for a worker, and hand a worker the newest model, never a queue of stale ones."""
        from anytimectl import shm

        if shm.enabled() and shm.all_on_one_host(self.mpi):
            return shm.AsyncShared(self.mpi, contribution_length, stats_length, header_length, params_length, dtype,
                                   counter=self.bytes)
        return AsyncMpi(self, contribution_length, stats_length, header_length, params_length, dtype)

    def dup(self) -> Comm:
        """A separate communicator over the same ranks (collective): for traffic that must not mix with the
        protocol's, such as the run shell's step reports. It counts its bytes apart."""
        return Comm(self.mpi.Dup())

    def abort(self, code: int) -> None:
        self.mpi.Abort(code)



class AsyncMpi:
    """The asynchronous protocol's traffic over MPI point-to-point (ranks on several hosts), with the same calls
    as `anytimectl.shm.AsyncShared`.

    Upward: each worker has at most one contribution in flight (the original's rule): one message of
    [stats (float64) | contribution]; `send` first waits (sleep-polled) for the previous one. The master keeps one
    receive posted per worker and re-posts it as it takes each message.

    Downward: every publication is one snapshot [version, stop, header | parameters] that the master sends to each
    worker whose previous model message has completed; a worker still receiving an older one gets the newest as
    soon as that completes, never a queue of stale ones. Each worker keeps one receive posted.

    Ending: after the master publishes the stop, each worker waits for its last contribution to be taken, then
    says goodbye (a stats-only message with the goodbye flag); the master keeps taking messages until every worker
    has said goodbye and every stop message has arrived, so that nothing is left in flight at MPI_Finalize.
    """

    _UP, _DOWN = 71, 72

    def __init__(self, comm: Comm, data_length: int, stats_length: int, header_length: int, params_length: int,
                 dtype: Any = np.float32):
        self.comm = comm
        self.mpi = comm.mpi
        self.rank, self.size = comm.rank, comm.size
        self.dtype = np.dtype(dtype)
        self.stats_length = stats_length
        self.header_length = header_length
        self._up_bytes = 8 * (stats_length + 1) + self.dtype.itemsize * data_length
        self._down_bytes = 8 * (header_length + 2) + self.dtype.itemsize * params_length
        self.data_length, self.params_length = data_length, params_length
        self.taken_version = 0
        self.version = 0
        self.stop_seen = False
        if self.rank == 0:
            self._up = {w: np.zeros(self._up_bytes, dtype=np.uint8) for w in range(1, self.size)}
            self._up_requests = {w: self.mpi.Irecv(self._up[w], source=w, tag=self._UP) for w in range(1, self.size)}
            self._goodbyes: set[int] = set()
            self._snapshots: dict[int, np.ndarray] = {}
            self._in_flight: dict[int, tuple[Any, int]] = {}  # worker -> (request, version)
            self._sent_version = dict.fromkeys(range(1, self.size), 0)
        else:
            self._out = np.zeros(self._up_bytes, dtype=np.uint8)
            self._out_request: Any = None
            self._down = np.zeros(self._down_bytes, dtype=np.uint8)
            self._spare = np.zeros(self._down_bytes, dtype=np.uint8)
            self._down_request = self.mpi.Irecv(self._down, source=0, tag=self._DOWN)
            self._ready: np.ndarray | None = None  # a received model not yet handed out

    # --- packing ---------------------------------------------------------------------------------------------
    def _up_views(self, raw: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        flag = raw[:8].view(np.float64)
        stats = raw[8:8 * (self.stats_length + 1)].view(np.float64)
        data = raw[8 * (self.stats_length + 1):].view(self.dtype)
        return flag, stats, data

    def _down_views(self, raw: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        meta = raw[:16].view(np.float64)
        header = raw[16:8 * (self.header_length + 2)].view(np.float64)
        params = raw[8 * (self.header_length + 2):].view(self.dtype)
        return meta, header, params

    # --- master ----------------------------------------------------------------------------------------------
    def publish(self, header: np.ndarray, params: np.ndarray, stop: bool = False) -> int:
        self.version += 1
        snapshot = np.empty(self._down_bytes, dtype=np.uint8)
        meta, head, values = self._down_views(snapshot)
        meta[:] = (self.version, 1.0 if stop else 0.0)
        np.copyto(head, header.reshape(-1))
        np.copyto(values, params.reshape(-1))
        self._snapshots[self.version] = snapshot
        self._progress_sends()
        return self.version

    def _progress_sends(self) -> None:
        """Send the newest snapshot to every worker whose previous model message has completed."""
        from mpi4py import MPI

        for worker in range(1, self.size):
            flight = self._in_flight.get(worker)
            if flight is not None:
                if not flight[0].Test():
                    continue
                del self._in_flight[worker]
            if self._sent_version[worker] < self.version:
                request = self.mpi.Isend([self._snapshots[self.version], MPI.BYTE], dest=worker, tag=self._DOWN)
                self.comm.bytes.sent += self._down_bytes
                self._in_flight[worker] = (request, self.version)
                self._sent_version[worker] = self.version
        alive = {version for _, version in self._in_flight.values()} | {self.version}
        for version in [v for v in self._snapshots if v not in alive]:
            del self._snapshots[version]

    def poll(self, consume: Any) -> int:
        from mpi4py import MPI

        self._progress_sends()
        taken = 0
        status = MPI.Status()
        for worker, request in list(self._up_requests.items()):
            if not request.Test(status):
                continue
            flag, stats, data = self._up_views(self._up[worker])
            count = status.Get_count(MPI.BYTE)
            self.comm.bytes.received += count
            if flag[0]:
                self._goodbyes.add(worker)
                del self._up_requests[worker]
                continue
            consume(worker, data, stats)
            taken += 1
            self._up_requests[worker] = self.mpi.Irecv(self._up[worker], source=worker, tag=self._UP)
        return taken

    def wait_for_contributions(self, timeout: float) -> None:
        """Sleep-poll until a message arrived or `timeout` passed (the caller polls)."""
        requests = list(self._up_requests.values())
        deadline = time.perf_counter() + timeout
        pause = FIRST_SLEEP
        while time.perf_counter() < deadline:
            if any(request.Get_status() for request in requests):  # Get_status leaves the request to poll()
                return
            self._progress_sends()
            time.sleep(min(pause, max(0.0, deadline - time.perf_counter())))
            pause = min(MAX_SLEEP, pause * 2)

    def finish(self, consume: Any) -> None:
        """After the stop was published: take messages until every worker said goodbye and got the stop, so that
        every contribution a worker handed over reaches `consume`."""
        pause = FIRST_SLEEP
        while len(self._goodbyes) < self.size - 1 or self._in_flight:
            if not self.poll(consume):
                time.sleep(pause)
                pause = min(MAX_SLEEP, pause * 2)

    # --- worker ----------------------------------------------------------------------------------------------
    @property
    def stopped(self) -> bool:
        self._receive()
        return self.stop_seen

    def _receive(self) -> None:
        """Take a model message that has arrived (keeping the newest) and post the next receive."""
        if self._down_request is None or not self._down_request.Test():
            return
        self.comm.bytes.received += self._down_bytes
        self._ready = self._down
        meta, _, _ = self._down_views(self._ready)
        if meta[1]:
            self.stop_seen = True
            self._down_request = None
        else:  # the other buffer receives next; an older model still waiting in it is dropped for this newer one
            self._down, self._spare = self._spare, self._down
            self._down_request = self.mpi.Irecv(self._down, source=0, tag=self._DOWN)

    def send(self, data: np.ndarray, stats: np.ndarray) -> bool:
        from mpi4py import MPI

        pause = FIRST_SLEEP
        while self._out_request is not None and not self._out_request.Test():
            if self.stopped:
                return False
            time.sleep(pause)
            pause = min(MAX_SLEEP, pause * 2)
        self._out_request = None
        if self.stopped:
            return False
        flag, out_stats, out_data = self._up_views(self._out)
        flag[0] = 0.0
        np.copyto(out_stats, stats)
        np.copyto(out_data, data.reshape(-1))
        self._out_request = self.mpi.Isend([self._out, MPI.BYTE], dest=0, tag=self._UP)
        self.comm.bytes.sent += self._up_bytes
        return True

    def newest(self, header: np.ndarray, params: np.ndarray) -> int:
        self._receive()
        if self._ready is None:
            return 0
        meta, head, values = self._down_views(self._ready)
        self._ready = None
        version = int(meta[0])
        if version <= self.taken_version:
            return 0
        np.copyto(header.reshape(-1), head)
        np.copyto(params.reshape(-1), values)
        self.taken_version = version
        return version

    def wait_model(self, header: np.ndarray, params: np.ndarray) -> int:
        pause = FIRST_SLEEP
        while True:
            version = self.newest(header, params)
            if version:
                return version
            time.sleep(pause)
            pause = min(MAX_SLEEP, pause * 2)

    def leave(self) -> None:
        """After the stop: wait for the last contribution to be taken, then say goodbye."""
        from mpi4py import MPI

        if self._out_request is not None:
            Pending([self._out_request]).wait()
        goodbye = np.zeros(8 * (self.stats_length + 1), dtype=np.uint8)
        goodbye[:8].view(np.float64)[0] = 1.0
        Pending([self.mpi.Isend([goodbye, MPI.BYTE], dest=0, tag=self._UP)]).wait()
        if self._down_request is not None:  # the stop message is the last the master sends: none can be left
            self._down_request.Cancel()
            Pending([self._down_request]).wait()

    def close(self) -> None:
        """Nothing to free."""
