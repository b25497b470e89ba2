"""torch.distributed as a transport for the peer methods, behind the interface of `anytimectl.comm.Comm`.

On CPUs MPICH through mpi4py all-reduces 2-66x faster than gloo on one host (environment.md), so the PyTorch
methods use `Comm` by default. On GPU clusters NCCL moves device memory directly; `--transport torch` selects this
class instead, with the same calls the peer protocols make: `allreduce_sum`, `allgather_bytes`, `exchange` (and a
`Pending`-like `wait`), `broadcast`, `barrier`, `dup`, byte counters, `ready_at`, `rank`/`size`.

The process group is started from the MPI job that is already running: rank 0 opens a TCPStore on a free port of
its host (port 0: the system picks it, so no two jobs race for one), broadcasts host:port over MPI, and every rank
joins with `init_process_group` ("nccl" when this rank has a GPU, "gloo" otherwise). Ranks that all share rank
0's host meet on 127.0.0.1; otherwise on rank 0's host name (or $MASTER_ADDR when set).

Waiting for the slowest rank happens on MPI's sleep-polled non-blocking barrier, as in `Comm` (a waiting rank
then costs a few percent of a core), and only then does every rank enter the torch collective, whose own threads
(gloo) or stream (NCCL) move the data while the caller blocks without spinning. Buffers are numpy arrays: on
the CPU they are shared with torch tensors (no copies); on a GPU they are copied to the device and back.
"""

from __future__ import annotations

import os
import socket
import threading
import time
from collections.abc import Callable
from datetime import timedelta
from typing import Any

import numpy as np
import torch
import torch.distributed as dist

from anytimectl.comm import FIRST_SLEEP, MAX_SLEEP, SPIN_SECONDS, ByteCounter, Comm, Pending

#: How long joining the process group may take before every rank gives up with an error.
START_TIMEOUT = timedelta(seconds=120)
#: How long a collective may wait for a peer before gloo/NCCL raise (a killed rank ends the job sooner: MPI).
OPERATION_TIMEOUT = timedelta(minutes=30)
_ADDRESS_BYTES = 512


class TorchPending:
    """Outstanding torch.distributed works that complete together; `after` runs once they have (copies from a
    device into the caller's numpy buffers). Waits sleep-poll like `anytimectl.comm.Pending`.

    gloo's point-to-point works never report completion before `wait()` is called (`is_completed()` stays False),
    so a helper thread waits on them (blocked in C++, without the GIL and without spinning) and the caller polls an
    event with sleeps."""

    def __init__(self) -> None:
        self.works: list[Any] = []
        self.after: list[Callable[[], None]] = []
        self._started = False
        self._done = threading.Event()
        self._error: BaseException | None = None

    def add(self, work: Any) -> TorchPending:
        assert not self._started, "add every work before waiting"
        self.works.append(work)
        return self

    def _start(self) -> None:
        if self._started:
            return
        self._started = True

        def wait_all() -> None:
            try:
                for work in self.works:
                    work.wait()
                for callback in self.after:
                    callback()
            except BaseException as error:  # noqa: BLE001 - re-raised by the caller's wait
                self._error = error
            # a finished work still holds its tensors; one left for interpreter shutdown to free can end the
            # process in std::terminate, so they go now, while the interpreter is whole
            self.works.clear()
            self.after.clear()
            self._done.set()

        threading.Thread(target=wait_all, name="torch-transport-wait", daemon=True).start()

    def test(self) -> bool:
        self._start()
        if not self._done.is_set():
            return False
        if self._error is not None:
            raise self._error
        return True

    def wait(self, spin: bool = False, spin_seconds: float = SPIN_SECONDS) -> float:
        start = time.perf_counter()
        if spin:
            while not self.test():
                pass
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


def _torch_device(device: str) -> torch.device:
    """select_device's answer ("cpu" or "gpu:N") as a torch device."""
    if device.startswith("gpu"):
        index = int(device.split(":", 1)[1]) if ":" in device else 0
        return torch.device("cuda", index)
    return torch.device("cpu")


def _rendezvous_host(comm: Comm) -> str:
    """Where every rank can reach rank 0: loopback when the whole job is on rank 0's host."""
    host = socket.gethostname().encode()[:_ADDRESS_BYTES]
    mine = np.zeros(_ADDRESS_BYTES, dtype=np.uint8)
    mine[:len(host)] = np.frombuffer(host, dtype=np.uint8)
    everyone = np.zeros((comm.size, _ADDRESS_BYTES), dtype=np.uint8)
    Pending().add(comm.mpi.Iallgather(mine, everyone)).wait()
    names = {bytes(row).rstrip(b"\0") for row in everyone}
    if os.environ.get("MASTER_ADDR"):
        return os.environ["MASTER_ADDR"]
    return "127.0.0.1" if len(names) == 1 else socket.gethostname()


class TorchTransport:
    """A torch.distributed process group over the ranks of an MPI job, with `Comm`'s interface."""

    def __init__(self, comm: Comm, group: Any, device: torch.device, counter: ByteCounter | None = None):
        self.comm = comm  # MPI: where ranks wait for each other (sleep-polled), and where they started
        self.group = group
        self.device = device
        self.rank: int = comm.rank
        self.size: int = comm.size
        self.bytes = counter if counter is not None else ByteCounter()
        #: time.time() at which the last collective found every rank ready (its transfer began)
        self.ready_at = 0.0
        self.backend = dist.get_backend(group)

    @classmethod
    def start(cls, comm: Comm, device: str = "cpu", counter: ByteCounter | None = None,
              timeout: timedelta = START_TIMEOUT) -> TorchTransport:
        """Start the default process group from the MPI job (collective over `comm`)."""
        torch_device = _torch_device(device)
        if torch_device.type == "cuda":
            torch.cuda.set_device(torch_device)
        backend = "nccl" if torch_device.type == "cuda" else "gloo"
        host = _rendezvous_host(comm)
        address = np.zeros(_ADDRESS_BYTES, dtype=np.uint8)
        store = None
        if comm.rank == 0:
            store = dist.TCPStore(host, 0, comm.size, is_master=True, timeout=timeout, wait_for_workers=False)
            text = f"{host}:{store.port}".encode()
            address[:len(text)] = np.frombuffer(text, dtype=np.uint8)
        comm.broadcast(address).wait()
        if comm.rank != 0:
            host, port = bytes(address).rstrip(b"\0").decode().rsplit(":", 1)
            store = dist.TCPStore(host, int(port), comm.size, is_master=False, timeout=timeout)
        dist.init_process_group(backend, store=store, rank=comm.rank, world_size=comm.size,
                                timeout=OPERATION_TIMEOUT)
        return cls(comm, dist.group.WORLD, torch_device, counter)

    # --- buffers ---------------------------------------------------------------------------------------------
    def _tensor(self, array: np.ndarray) -> torch.Tensor:
        tensor = torch.from_numpy(array)
        return tensor if self.device.type == "cpu" else tensor.to(self.device)

    def _copy_back(self, tensor: torch.Tensor, array: np.ndarray) -> Callable[[], None]:
        if self.device.type == "cpu":
            return lambda: None
        return lambda: np.copyto(array, tensor.cpu().numpy())

    # --- the Comm interface ------------------------------------------------------------------------------------
    def barrier(self) -> float:
        """Sleep-polled on MPI: where a fast rank waits for the slowest without spending a core."""
        return self.comm.barrier()

    def allreduce_sum(self, buffer: np.ndarray, out: np.ndarray | None = None) -> float:
        """Every rank's `buffer` summed into `out` (default: in place) on every rank; returns seconds spent."""
        start = time.perf_counter()
        self.barrier()
        self.ready_at = time.time()
        target = buffer
        if out is not None:
            np.copyto(out, buffer)
            target = out
        tensor = self._tensor(target)
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM, group=self.group)
        self._copy_back(tensor, target)()
        self.bytes.sent += buffer.nbytes
        self.bytes.received += buffer.nbytes
        return time.perf_counter() - start

    def allreduce_sum16(self, words: np.ndarray, kind: str) -> float:
        """16-bit floats (their uint16 bits) summed in place in `kind` (float16, bfloat16) by torch.distributed's
        own all-reduce of that dtype, as DDP's compress hooks do; returns seconds spent."""
        start = time.perf_counter()
        self.barrier()
        self.ready_at = time.time()
        dtype = {"float16": torch.float16, "bfloat16": torch.bfloat16}[kind]
        tensor = torch.from_numpy(words.view(np.int16)).view(dtype).to(self.device)
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM, group=self.group)
        np.copyto(words, tensor.view(torch.int16).cpu().numpy().view(np.uint16))
        self.bytes.sent += words.nbytes
        self.bytes.received += words.nbytes
        return time.perf_counter() - start

    def allgather_bytes(self, payload: np.ndarray) -> list[np.ndarray]:
        """Every rank's byte payload (uint8, any length, empty allowed) to every rank, in rank order."""
        payload = np.ascontiguousarray(payload, dtype=np.uint8)
        self.barrier()
        self.ready_at = time.time()
        sizes = self._tensor(np.array([payload.size], dtype=np.int64))
        gathered_sizes = [torch.zeros_like(sizes) for _ in range(self.size)]
        dist.all_gather(gathered_sizes, sizes, group=self.group)
        counts = [int(s.item()) for s in gathered_sizes]
        longest = max(max(counts), 1)
        padded = np.zeros(longest, dtype=np.uint8)
        padded[:payload.size] = payload
        mine = self._tensor(padded)
        everyone = [torch.zeros_like(mine) for _ in range(self.size)]
        dist.all_gather(everyone, mine, group=self.group)
        self.bytes.sent += payload.nbytes
        self.bytes.received += sum(counts) - payload.nbytes
        return [tensor.cpu().numpy()[:count].copy() for tensor, count in zip(everyone, counts, strict=True)]

    def broadcast(self, buffer: np.ndarray, root: int = 0) -> TorchPending:
        """Fill `buffer` on every rank with root's contents; wait on the result."""
        if self.rank == root:
            self.bytes.sent += buffer.nbytes * (self.size - 1)
        else:
            self.bytes.received += buffer.nbytes
        tensor = self._tensor(buffer)
        pending = TorchPending().add(dist.broadcast(tensor, src=root, group=self.group, async_op=True))
        if self.rank != root:
            pending.after.append(self._copy_back(tensor, buffer))
        return pending

    def exchange(self, sends: list[tuple[int, np.ndarray]], receives: list[tuple[int, np.ndarray]],
                 tag: int = 0) -> TorchPending:
        """Point-to-point with partners: every send and receive posted at once; the caller waits on the result."""
        pending = TorchPending()
        for peer, buffer in receives:
            self.bytes.received += buffer.nbytes
            tensor = self._tensor(buffer)
            pending.add(dist.irecv(tensor, src=peer, group=self.group, tag=tag))
            pending.after.append(self._copy_back(tensor, buffer))
        for peer, buffer in sends:
            self.bytes.sent += buffer.nbytes
            pending.add(dist.isend(self._tensor(buffer), dst=peer, group=self.group, tag=tag))
        return pending

    def dup(self) -> TorchTransport:
        """A separate group over the same ranks (collective), counting its bytes apart."""
        return TorchTransport(self.comm.dup(), dist.new_group(list(range(self.size))), self.device)

    def close(self) -> None:
        """Leave the process group (collective, at the end of the run). Every rank has finished with it before
        any destroys it, and rank 0's store outlives the others' use of it: a process whose gloo threads still
        talk to a destroyed peer ends in std::terminate. The group object is dropped here too: one that a Python
        reference keeps alive is destroyed during interpreter shutdown instead, where its gloo threads can end the
        process in std::terminate (seen once in CI, on a loaded machine)."""
        if not dist.is_initialized() or self.group is None:
            return
        self.barrier()
        dist.destroy_process_group(self.group if self.group is not dist.group.WORLD else None)
        self.group = None
        self.barrier()
