"""Ranks on one host: step traffic through shared memory, and waits that sleep in the kernel until woken.

Why. On a laptop the ranks outnumber the cores. Every MPI collective is a meeting point where each rank must be
scheduled in turn, and a rank that waits either spins (stealing the core from the rank it waits for) or sleeps in
short polls (paying up to the poll interval each time it is woken). A synchronous step of ours had five such
points; with 3-5 ranks on 2 cores that cost more than the transfer itself (README, "Communication layer").

What. When every rank of the job shares one host (MPI tells us: `COMM_TYPE_SHARED`), the step's buffers live in
an MPI-3 shared-memory window (`MPI_Win_allocate_shared`): a worker copies its contribution into its own slot and
flips a counter; the master adds the slots into its result in rank order (so the sum is the same bits whatever the
order of arrival); the master writes the parameters once and every worker copies them out. No message moves, no
rank spins, and nobody waits for a rank it does not need: a worker hands over its contribution without waiting
for the others, and the master adds each slot as soon as it is there.

Waiting. A rank that must wait announces what for (`sleeping[rank] = event`) and blocks in the kernel on its own
*doorbell*, a named FIFO opened at start-up (and unlinked at once, so nothing is left on disk); whoever produces
that event writes one byte to the FIFO of each rank that sleeps on it. The announcement and the producer's write
are ordered by memory barriers (`MPI_Win_sync`), so a wake-up cannot be lost; a timeout on every sleep is only a
safety net. A waiting rank uses no CPU, and it runs the moment the rank it waits for arrives.

Ranks on several hosts do not use this module: `anytimectl.comm.mpi` falls back to non-blocking MPI with sleep-polled
waits there. `ANYTIMECTL_SHARED_MEMORY=0` turns the shared-memory path off everywhere (for comparisons, and in
the tests that check the MPI path).
"""

from __future__ import annotations

import os
import selectors
import shutil
import tempfile
import time
from collections.abc import Callable, Iterable
from typing import Any

import numpy as np

#: Environment switch: "0" keeps every rank on the MPI path.
SWITCH = "ANYTIMECTL_SHARED_MEMORY"
#: Longest sleep before a waiting rank re-checks by itself; wake-ups normally come long before.
SAFETY_TIMEOUT = 0.05
_ALIGN = 64

# What a sleeping rank waits for (the value of its `sleeping` word); 0 = awake.
AWAKE = 0
EV_ARRIVE = 1  # the master waits for a worker's contribution
EV_TAKEN = 2  # a worker waits until the master took its previous contribution
EV_PARAMS = 3  # a worker waits for the master's parameters
EV_READ = 4  # the master waits until every worker copied out the previous parameters
EV_MAILBOX = 5  # async: the master waits for any contribution
EV_SLOT_FREE = 6  # async: a worker waits for a free slot in its mailbox
EV_MODEL = 7  # async: a worker waits for a newer model (only when told to)


def enabled() -> bool:
    return os.environ.get(SWITCH, "1") not in ("0", "false", "no", "off")


def _padded(nbytes: int) -> int:
    return (nbytes + _ALIGN - 1) // _ALIGN * _ALIGN


def sleep_polled_barrier(mpi: Any) -> None:
    from anytimectl.comm.waiting import Pending

    Pending().add(mpi.Ibarrier()).wait()


class Window:
    """One MPI shared-memory window: each rank allocates `nbytes` (0 allowed) and reaches every rank's part.

    Collective. The ranks meet first on a sleep-polled barrier, so that the allocation itself (a blocking MPI
    collective) does not spin while others are still busy."""

    def __init__(self, mpi: Any, nbytes: int):
        from mpi4py import MPI

        sleep_polled_barrier(mpi)
        self.win = MPI.Win.Allocate_shared(max(_padded(nbytes), _ALIGN), 1, comm=mpi)
        self.win.Lock_all(MPI.MODE_NOCHECK)
        self._parts: dict[int, np.ndarray] = {}

    def part(self, rank: int) -> np.ndarray:
        """Rank `rank`'s bytes (uint8), writable by everyone."""
        if rank not in self._parts:
            buffer, _ = self.win.Shared_query(rank)
            self._parts[rank] = np.frombuffer(buffer, dtype=np.uint8)
        return self._parts[rank]

    def sync(self) -> None:
        """A full memory barrier for this window's memory (MPI_Win_sync in the unified model)."""
        self.win.Sync()

    def free(self) -> None:
        self.win.Unlock_all()
        self.win.Free()


class Carver:
    """Cuts typed, aligned arrays out of a part of a window."""

    def __init__(self, raw: np.ndarray):
        self.raw = raw
        self.offset = 0

    def take(self, dtype: Any, count: int) -> np.ndarray:
        dtype = np.dtype(dtype)
        view = self.raw[self.offset:self.offset + dtype.itemsize * count].view(dtype)
        self.offset += _padded(dtype.itemsize * count)
        return view

    @staticmethod
    def size(*fields: tuple[Any, int]) -> int:
        return sum(_padded(np.dtype(dtype).itemsize * count) for dtype, count in fields)


class Doorbells:
    """Per-rank wake-ups for ranks on one host: `wait(condition, event)` sleeps in the kernel until another rank
    `ring`s this one for that event (or SAFETY_TIMEOUT passes), then re-checks.

    Collective to build. `targets` are the ranks this one may ring (the master rings every worker, a worker only
    the master); their FIFOs are opened now, so the files can be unlinked before the run starts.
    """

    def __init__(self, mpi: Any, targets: Iterable[int]):
        self.mpi = mpi
        self.rank = mpi.Get_rank()
        self.size = mpi.Get_size()
        self.window = Window(mpi, 8 * self.size if self.rank == 0 else 0)
        self.sleeping = self.window.part(0)[: 8 * self.size].view(np.int64)
        if self.rank == 0:
            self.sleeping[:] = AWAKE
        self.wakeups = 0  # how often this rank was woken (for the benchmarks)
        self.rings = 0
        folder = self._shared_folder()
        own = os.path.join(folder, str(self.rank))
        os.mkfifo(own, 0o600)
        self._read = os.open(own, os.O_RDONLY | os.O_NONBLOCK)
        self._keepalive = os.open(own, os.O_WRONLY | os.O_NONBLOCK)  # without a writer the FIFO reads EOF forever
        sleep_polled_barrier(mpi)
        self._write = {target: os.open(os.path.join(folder, str(target)), os.O_WRONLY | os.O_NONBLOCK)
                       for target in set(targets) if target != self.rank}
        sleep_polled_barrier(mpi)
        os.unlink(own)
        sleep_polled_barrier(mpi)
        if self.rank == 0:
            shutil.rmtree(folder, ignore_errors=True)
        self._selector = selectors.DefaultSelector()
        self._selector.register(self._read, selectors.EVENT_READ)
        self.window.sync()
        sleep_polled_barrier(mpi)

    def _shared_folder(self) -> str:
        from anytimectl.comm.waiting import Pending

        raw = np.zeros(4096, dtype=np.uint8)
        if self.rank == 0:
            encoded = tempfile.mkdtemp(prefix="anytimectl-doorbells-").encode()
            raw[:len(encoded)] = np.frombuffer(encoded, dtype=np.uint8)
        Pending().add(self.mpi.Ibcast(raw, root=0)).wait()
        return bytes(raw).rstrip(b"\0").decode()

    def sync(self) -> None:
        self.window.sync()

    def wait(self, condition: Callable[[], bool], event: int, timeout: float | None = None) -> bool:
        """Return as soon as `condition()` holds, sleeping in the kernel meanwhile; False if `timeout` passed."""
        if condition():
            return True
        deadline = None if timeout is None else time.monotonic() + timeout
        sleeping = self.sleeping
        me = self.rank
        try:
            while True:
                sleeping[me] = event
                self.window.sync()  # the announcement is visible before we look at the condition again
                if condition():
                    return True
                pause = SAFETY_TIMEOUT
                if deadline is not None:
                    pause = min(pause, deadline - time.monotonic())
                    if pause <= 0:
                        return False
                if self._selector.select(pause):
                    self.wakeups += 1
                    self._drain()
                self.window.sync()
                if condition():
                    return True
        finally:
            sleeping[me] = AWAKE

    def _drain(self) -> None:
        try:
            while os.read(self._read, 4096):
                pass
        except BlockingIOError:
            pass

    def ring(self, target: int, event: int) -> None:
        """Wake `target` if it sleeps on `event`. Call after making the event true (and a `sync`)."""
        if self.sleeping[target] == event:
            self._ring(target)

    def ring_all(self, event: int) -> None:
        """Wake every rank that sleeps on `event`."""
        for target in np.flatnonzero(self.sleeping == event):
            if target != self.rank:
                self._ring(int(target))

    def _ring(self, target: int) -> None:
        self.rings += 1
        try:
            os.write(self._write[target], b"\0")
        except BlockingIOError:  # its FIFO is full of unread wake-ups already: it will wake
            pass

    def close(self) -> None:
        for fd in (self._read, self._keepalive, *self._write.values()):
            try:
                os.close(fd)
            except OSError:
                pass
        self._selector.close()


class SharedStep:
    """`collect` and `distribute` of a synchronous step through shared memory (see the module notes).

    The windows are allocated at the first call with the buffers' sizes (a collective call, as MPI's Reduce is:
    every rank passes the same shapes); `collect` keeps one window and replaces it when the shapes change,
    `distribute` keeps one per shape (a protocol may send parameters at one point and summed contributions at
    another).
    """

    def __init__(self, mpi: Any):
        self.mpi = mpi
        self.rank = mpi.Get_rank()
        self.size = mpi.Get_size()
        self.bells = Doorbells(mpi, range(self.size) if self.rank == 0 else [0])
        self._up: _Up | None = None
        self._downs: dict[tuple, _Down] = {}
        self._last_down: _Down | None = None
        self._unacknowledged: list[_Down] = []

    # --- upward: contributions summed at rank 0, stats gathered ------------------------------------------------
    def collect(self, contribution: np.ndarray | None, reduced: np.ndarray | None, stats: np.ndarray,
                all_stats: np.ndarray | None) -> float:
        """Returns time.time() at which every contribution was in (workers: when theirs was handed over).
        Rank 0 may pass contribution None: it adds nothing of its own (and `reduced` gives the shape)."""
        shape_of = contribution if contribution is not None else reduced
        up = self._up
        if up is None or not up.fits(shape_of, stats):
            if up is not None:
                up.free()
            up = self._up = _Up(self.mpi, shape_of, stats)
        up.count += 1
        n = up.count
        bells, window = self.bells, up.window
        if self.rank != 0:
            bells.wait(lambda: up.done[0] >= n - 1, EV_TAKEN)
            handed = time.time()
            np.copyto(up.stats[self.rank], stats)
            np.copyto(up.data[self.rank], contribution.reshape(-1))
            window.sync()
            up.arrive[self.rank] = n
            bells.sync()
            bells.ring(0, EV_ARRIVE)
            return handed
        assert reduced is not None and all_stats is not None
        flat = reduced.reshape(-1)
        started = contribution is not None
        if started:
            np.copyto(flat, contribution.reshape(-1))
        all_stats[0] = stats
        arrive = up.arrive
        for worker in range(1, self.size):
            bells.wait(lambda w=worker: arrive[w] >= n, EV_ARRIVE)
            window.sync()
            if started:
                np.add(flat, up.data[worker], out=flat)
            else:
                np.copyto(flat, up.data[worker])
                started = True
            all_stats[worker] = up.stats[worker]
        if not started:
            flat[:] = 0
        ready = time.time()
        window.sync()
        up.done[0] = n
        bells.sync()
        bells.ring_all(EV_TAKEN)
        return ready

    # --- downward: rank 0's header and parameters to every rank --------------------------------------------------
    def _down_for(self, header: np.ndarray, params: np.ndarray) -> _Down:
        key = (header.dtype.str, header.size, params.dtype.str, params.size)
        down = self._downs.get(key)
        if down is None:
            down = self._downs[key] = _Down(self.mpi, header, params)
        return down

    def outgoing(self, header: np.ndarray, params: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Rank 0: the window buffers the next `distribute` of these shapes sends, to be filled in place (so that
        nothing is copied); it waits until every rank has read the previous one. Before the first distribute of
        these shapes (or elsewhere) it returns the arguments."""
        key = (header.dtype.str, header.size, params.dtype.str, params.size)
        down = self._downs.get(key)
        if self.rank != 0 or down is None:
            return header, params
        read, m = down.read, down.count + 1
        self.bells.wait(lambda: bool(np.all(read[1:] >= m - 1)), EV_READ)
        down.window.sync()
        return down.header.reshape(header.shape), down.data.reshape(params.shape)

    def distribute(self, header: np.ndarray, params: np.ndarray, acknowledge: bool = True,
                   view: bool = False) -> tuple[np.ndarray, np.ndarray]:
        """acknowledge=False (not rank 0): tell rank 0 only at `acknowledge()` that this rank is done with them.
        view=True (not rank 0, with acknowledge=False): return views of the window instead of copying into
        header/params; they stay valid until `acknowledge()` and must not be written to."""
        down = self._last_down = self._down_for(header, params)
        down.count += 1
        m = down.count
        bells, window = self.bells, down.window
        if self.rank == 0:
            read = down.read
            bells.wait(lambda: bool(np.all(read[1:] >= m - 1)), EV_READ)
            window.sync()
            if not np.shares_memory(header, down.header):
                np.copyto(down.header, header.reshape(-1))
            if not np.shares_memory(params, down.data):
                np.copyto(down.data, params.reshape(-1))
            window.sync()
            down.seq[0] = m
            bells.sync()
            bells.ring_all(EV_PARAMS)
            return header, params
        bells.wait(lambda: down.seq[0] >= m, EV_PARAMS)
        window.sync()
        if view and not acknowledge:
            self._unacknowledged.append(down)
            return down.header.reshape(header.shape), down.data.reshape(params.shape)
        np.copyto(header.reshape(-1), down.header)
        np.copyto(params.reshape(-1), down.data)
        if acknowledge:
            self._acknowledge(down)
        else:
            self._unacknowledged.append(down)
        return header, params

    def acknowledge(self) -> None:
        """Not rank 0: done with the distributes received with acknowledge=False (rank 0 may overwrite them, and
        its wait_acknowledged ends)."""
        pending, self._unacknowledged = self._unacknowledged, []
        for down in pending:
            self._acknowledge(down)

    def _acknowledge(self, down: _Down) -> None:
        down.window.sync()
        down.read[self.rank] = down.count
        self.bells.sync()
        self.bells.ring(0, EV_READ)

    def wait_acknowledged(self, timeout: float | None = None) -> bool:
        """Rank 0: wait (asleep) until every rank acknowledged the last distribute; False if `timeout` passed."""
        down = self._last_down
        if self.rank != 0 or down is None:
            return True
        read, m = down.read, down.count
        return self.bells.wait(lambda: bool(np.all(read[1:] >= m)), EV_READ, timeout)

    def close(self) -> None:
        if self._up is not None:
            self._up.free()
        for down in self._downs.values():
            down.free()
        self._up, self._downs = None, {}
        self.bells.close()


class _Up:
    """Rank 0: arrival counters and the 'taken' counter; rank r: its stats row and its contribution."""

    def __init__(self, mpi: Any, contribution: np.ndarray, stats: np.ndarray):
        rank, size = mpi.Get_rank(), mpi.Get_size()
        self.dtype, self.length = contribution.dtype, contribution.size
        self.stats_length = stats.size
        control = Carver.size((np.int64, size), (np.int64, 1))
        slot = Carver.size((np.float64, self.stats_length), (self.dtype, self.length))
        self.window = Window(mpi, control if rank == 0 else slot)
        carver = Carver(self.window.part(0))
        self.arrive = carver.take(np.int64, size)
        self.done = carver.take(np.int64, 1)
        if rank == 0:
            self.arrive[:] = 0
            self.done[:] = 0
        self.stats: dict[int, np.ndarray] = {}
        self.data: dict[int, np.ndarray] = {}
        for r in ([rank] if rank != 0 else range(1, size)):
            carver = Carver(self.window.part(r))
            self.stats[r] = carver.take(np.float64, self.stats_length)
            self.data[r] = carver.take(self.dtype, self.length)
        self.count = 0
        self.window.sync()
        sleep_polled_barrier(mpi)

    def fits(self, contribution: np.ndarray, stats: np.ndarray) -> bool:
        return (contribution.dtype, contribution.size, stats.size) == (self.dtype, self.length, self.stats_length)

    def free(self) -> None:
        self.window.free()


class _Down:
    """Rank 0: read counters, the sequence number, the header and the parameters."""

    def __init__(self, mpi: Any, header: np.ndarray, params: np.ndarray):
        rank, size = mpi.Get_rank(), mpi.Get_size()
        self.header_dtype, self.header_length = header.dtype, header.size
        self.dtype, self.length = params.dtype, params.size
        nbytes = Carver.size((np.int64, size), (np.int64, 1), (self.header_dtype, self.header_length),
                              (self.dtype, self.length))
        self.window = Window(mpi, nbytes if rank == 0 else 0)
        carver = Carver(self.window.part(0))
        self.read = carver.take(np.int64, size)
        self.seq = carver.take(np.int64, 1)
        self.header = carver.take(self.header_dtype, self.header_length)
        self.data = carver.take(self.dtype, self.length)
        if rank == 0:
            self.read[:] = 0
            self.seq[:] = 0
        self.count = 0
        self.window.sync()
        sleep_polled_barrier(mpi)

    def fits(self, header: np.ndarray, params: np.ndarray) -> bool:
        return ((header.dtype, header.size, params.dtype, params.size)
                == (self.header_dtype, self.header_length, self.dtype, self.length))

    def free(self) -> None:
        self.window.free()


def all_on_one_host(mpi: Any) -> bool:
    """Collective: whether every rank of `mpi` shares this host's memory."""
    from mpi4py import MPI

    sleep_polled_barrier(mpi)
    local = mpi.Split_type(MPI.COMM_TYPE_SHARED)
    together = local.Get_size() == mpi.Get_size()
    local.Free()
    return together
