"""The asynchronous master-worker protocol's channel: workers hand in contributions without waiting for each
other, and the master publishes models without waiting for anyone.

Two implementations with the same calls, chosen by `open_async_channel`: shared memory with doorbells when every
rank is on one host (`AsyncShared`), MPI point-to-point otherwise (`AsyncMpi`). Both never make the master wait for
a worker, and hand a worker the newest model, never a queue of stale ones. They live beside the protocol that uses
them (`async_master_worker.py`); the generic pieces (sleep-polled waits, shared-memory windows, doorbells) are the
communication layer's (`anytimectl.comm`).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import numpy as np

from anytimectl.comm import shm
from anytimectl.comm.mpi import Comm
from anytimectl.comm.shm import EV_MAILBOX, EV_MODEL, EV_SLOT_FREE, Carver, Doorbells, Window, sleep_polled_barrier
from anytimectl.comm.waiting import FIRST_SLEEP, MAX_SLEEP, Pending


def open_async_channel(comm: Comm, contribution_length: int, stats_length: int, header_length: int,
                       params_length: int, dtype: Any = np.float32) -> AsyncShared | AsyncMpi:
    """The channel for this job (collective): shared memory when every rank is on this host and the shared-memory
    path is on, else MPI point-to-point."""
    if shm.enabled() and shm.all_on_one_host(comm.mpi):
        return AsyncShared(comm.mpi, contribution_length, stats_length, header_length, params_length, dtype,
                           counter=comm.bytes)
    return AsyncMpi(comm, contribution_length, stats_length, header_length, params_length, dtype)


class AsyncMpi:
    """The asynchronous protocol's traffic over MPI point-to-point (ranks on several hosts), with the same calls
    as `AsyncShared`.

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


class AsyncShared:
    """The asynchronous protocol's traffic through shared memory (ranks on one host).

    Upward: every worker has a mailbox of SLOTS slots (contribution + stats). A worker fills a free slot and
    goes on computing; it waits only when every slot is still full (the master has not taken them yet). The master
    takes whatever is there, in the order the workers sent it.

    Downward: one board holds the newest model (header + parameters) under a version number; publishing never
    waits for anyone. A worker copies the board whenever it looks and a newer version is there, so it always gets
    the newest model, never a queue of stale ones. The version is odd while the master writes and even after
    (a sequence lock), and a worker whose copy overlapped a write takes it again.
    """

    SLOTS = 2

    def __init__(self, mpi: Any, data_length: int, stats_length: int, header_length: int, params_length: int,
                 dtype: Any = np.float32, counter: Any = None):
        self.mpi = mpi
        self.counter = counter  # anytimectl.comm.ByteCounter, or None
        self.rank = rank = mpi.Get_rank()
        self.size = size = mpi.Get_size()
        self.dtype = np.dtype(dtype)
        self.data_length, self.stats_length, self.header_length = data_length, stats_length, header_length
        self.bells = Doorbells(mpi, range(size) if rank == 0 else [0])
        control = Carver.size((np.int64, size * self.SLOTS), (np.float64, size * self.SLOTS), (np.int64, size),
                               (np.int64, 2), (np.float64, header_length), (self.dtype, params_length))
        slots = Carver.size((np.float64, stats_length), (self.dtype, data_length)) * self.SLOTS
        self.window = Window(mpi, control if rank == 0 else slots)
        carver = Carver(self.window.part(0))
        #: per worker and slot: 0 = free, else the worker's send number; and when it was filled
        self.state = carver.take(np.int64, size * self.SLOTS).reshape(size, self.SLOTS)
        self.filled_at = carver.take(np.float64, size * self.SLOTS).reshape(size, self.SLOTS)
        self.left = carver.take(np.int64, size)  # 1 once a worker has left after the stop
        self.version = carver.take(np.int64, 2)  # [version, stop]
        self.board_header = carver.take(np.float64, header_length)
        self.board_params = carver.take(self.dtype, params_length)
        if rank == 0:
            self.state[:] = 0
            self.left[:] = 0
            self.version[:] = 0
        self._up_bytes = 8 * stats_length + self.dtype.itemsize * data_length
        self._down_bytes = 8 * header_length + self.dtype.itemsize * params_length
        self.slot_stats: dict[tuple[int, int], np.ndarray] = {}
        self.slot_data: dict[tuple[int, int], np.ndarray] = {}
        for r in ([rank] if rank != 0 else range(1, size)):
            carver = Carver(self.window.part(r))
            for k in range(self.SLOTS):
                self.slot_stats[r, k] = carver.take(np.float64, stats_length)
                self.slot_data[r, k] = carver.take(self.dtype, data_length)
        self.sent = 0
        self.taken_version = 0
        self.window.sync()
        sleep_polled_barrier(mpi)

    # --- master ----------------------------------------------------------------------------------------------
    def publish(self, header: np.ndarray, params: np.ndarray, stop: bool = False) -> int:
        """Put a new model on the board (never waits); returns its version."""
        version = self.version
        new = int(version[0]) + 2
        version[0] = new - 1  # odd: being written
        self.window.sync()
        np.copyto(self.board_header, header.reshape(-1))
        np.copyto(self.board_params, params.reshape(-1))
        self.window.sync()
        if stop:
            version[1] = 1
        version[0] = new
        self.window.sync()
        self.bells.sync()
        self.bells.ring_all(EV_MODEL)
        if stop:
            self.bells.ring_all(EV_SLOT_FREE)
        if self.counter is not None:
            self.counter.sent += self._down_bytes * (self.size - 1)
        return new // 2

    def poll(self, consume: Callable[[int, np.ndarray, np.ndarray], None]) -> int:
        """Hand every contribution waiting in a mailbox to consume(rank, data, stats), oldest first, and free
        its slot. Returns how many there were."""
        full = np.argwhere(self.state > 0)
        if not len(full):
            return 0
        self.window.sync()
        order = np.argsort(self.filled_at[full[:, 0], full[:, 1]], kind="stable")
        for rank, slot in full[order]:
            rank, slot = int(rank), int(slot)
            consume(rank, self.slot_data[rank, slot], self.slot_stats[rank, slot])
            if self.counter is not None:
                self.counter.received += self._up_bytes
            self.window.sync()
            self.state[rank, slot] = 0
            self.bells.sync()
            self.bells.ring(rank, EV_SLOT_FREE)
        return len(full)

    def wait_for_contributions(self, timeout: float) -> None:
        self.bells.wait(lambda: bool(np.any(self.state > 0)), EV_MAILBOX, timeout)

    def finish(self, consume: Callable[[int, np.ndarray, np.ndarray], None]) -> None:
        """After publishing the stop: wait until every worker has left, then take what is still in the mailboxes,
        so that every contribution a worker handed over reaches `consume`."""
        left = self.left
        self.bells.wait(lambda: bool(np.all(left[1:] == 1)), EV_MAILBOX)
        self.window.sync()
        self.poll(consume)

    # --- worker ----------------------------------------------------------------------------------------------
    @property
    def stopped(self) -> bool:
        return bool(self.version[1])

    def send(self, data: np.ndarray, stats: np.ndarray) -> bool:
        """Put a contribution in a free slot, waiting (asleep) while none is free. False: the run has stopped."""
        state = self.state[self.rank]
        if not self.bells.wait(lambda: bool(np.any(state == 0)) or self.stopped, EV_SLOT_FREE) or self.stopped:
            return False
        slot = int(np.flatnonzero(state == 0)[0])
        np.copyto(self.slot_stats[self.rank, slot], stats)
        np.copyto(self.slot_data[self.rank, slot], data.reshape(-1))
        self.sent += 1
        if self.counter is not None:
            self.counter.sent += self._up_bytes
        self.filled_at[self.rank, slot] = time.time()
        self.window.sync()
        state[slot] = self.sent
        self.bells.sync()
        self.bells.ring(0, EV_MAILBOX)
        return True

    def newest(self, header: np.ndarray, params: np.ndarray) -> int:
        """Copy the board if it holds a newer model than the last one taken: returns its version, or 0."""
        for _ in range(8):
            version = int(self.version[0])
            if version % 2 or version // 2 <= self.taken_version:
                return 0
            self.window.sync()
            np.copyto(header.reshape(-1), self.board_header)
            np.copyto(params.reshape(-1), self.board_params)
            self.window.sync()
            if int(self.version[0]) == version:
                self.taken_version = version // 2
                if self.counter is not None:
                    self.counter.received += self._down_bytes
                return self.taken_version
        return 0

    def wait_model(self, header: np.ndarray, params: np.ndarray) -> int:
        """Block (asleep) until a model newer than the last one taken is on the board; returns its version."""
        got = [0]

        def ready() -> bool:
            got[0] = self.newest(header, params)
            return got[0] > 0

        self.bells.wait(ready, EV_MODEL)
        return got[0]

    def leave(self) -> None:
        """After the stop: tell the master this worker hands over nothing more."""
        self.window.sync()
        self.left[self.rank] = 1
        self.bells.sync()
        self.bells.ring(0, EV_MAILBOX)

    def close(self) -> None:
        self.window.free()
        self.bells.close()
