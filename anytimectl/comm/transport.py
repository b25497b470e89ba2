"""The declared interface of a transport: what the methods without a master (and their gradient exchanges) call.

Two classes implement it: `anytimectl.comm.mpi.Comm` (MPI, with shared memory on one host; the default) and
`anytimectl.backends.torch.transport.TorchTransport` (torch.distributed: NCCL on GPUs, gloo on CPUs, started from
the MPI job). A method holds a `Transport` and never asks which one it has; `tests/test_comm.py` checks that both
classes provide every member declared here.
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable

import numpy as np

from anytimectl.comm.waiting import ByteCounter
from anytimectl.runtime.errors import UsageError

#: the transports `--transport` names: MPI (`Comm`), or torch.distributed (`TorchTransport`)
TRANSPORTS = ("mpi", "torch")


def check_transport(name: str, backend: str) -> None:
    """`--transport name` can carry a `backend` run's traffic: the command checks before launch, the ranks again
    (under the user's mpiexec, or for a config written by hand)."""
    if name not in TRANSPORTS:
        raise UsageError(f"--transport {name!r}: choose one of {', '.join(TRANSPORTS)}")
    if name == "torch" and backend != "torch":
        raise UsageError("--transport torch needs --backend torch (TensorFlow and torch never share a process)")


@runtime_checkable
class Waitable(Protocol):
    """Outstanding operations that complete together."""

    def test(self) -> bool:
        """Whether they have completed (never blocks)."""
        ...

    def wait(self, spin: bool = False, spin_seconds: float = ...) -> float:
        """Sleep-poll until they complete; the seconds waited."""
        ...


@runtime_checkable
class Transport(Protocol):
    """Flat-buffer collectives between the ranks of one job, with byte accounting."""

    rank: int
    size: int
    #: bytes this rank handed over and obtained, payload only, whatever algorithm moved them
    bytes: ByteCounter
    #: time.time() at which the last collective found every rank ready (its transfer began): the end of the wait
    ready_at: float

    def barrier(self) -> float:
        """Wait (sleep-polled) until every rank is here; the seconds waited."""
        ...

    def allreduce_sum(self, buffer: np.ndarray, out: np.ndarray | None = None) -> float:
        """Sum `buffer` over every rank, in place (or into `out`), the same bits on every rank; seconds waited."""
        ...

    def allreduce_sum16(self, words: np.ndarray, kind: str) -> float:
        """16-bit floats (`kind` float16 or bfloat16, as uint16 bits) summed in place in that type; seconds spent."""
        ...

    def allgather_bytes(self, payload: np.ndarray) -> list[np.ndarray]:
        """Every rank's uint8 payload (sizes may differ), in rank order."""
        ...

    def broadcast(self, buffer: np.ndarray, root: int = 0) -> Waitable:
        """`root`'s buffer into every rank's, in place."""
        ...

    def exchange(self, sends: list[tuple[int, np.ndarray]], receives: list[tuple[int, np.ndarray]],
                 tag: int = 0) -> Waitable:
        """Point-to-point with partners: each (peer, buffer) sent or received."""
        ...

    def dup(self) -> Transport:
        """A separate channel over the same ranks, for traffic that must not mix with this one's."""
        ...
