"""The communication layer: how ranks move flat buffers, and wait for each other without burning a core.

- `waiting`: the sleep-polling loop every wait uses, `Pending` and the byte counter (the leaf: imports nothing of
  anytimectl);
- `transport`: the declared `Transport` interface the methods call;
- `mpi`: the MPI transport (`Comm`), also the master-worker step's collect/distribute;
- `shm`: the shared-memory step and doorbells for ranks on one host;
- `host_chain`: the step's reduce and broadcast across hosts (within each host, then a chain of hosts).

The torch.distributed transport is the torch backend's (`anytimectl.backends.torch.transport`); channels that only
one method uses live beside that method's protocol (`protocols/async_channel.py`). The imports run one way:
waiting <- shm <- mpi, and nothing here imports a protocol or a backend.
"""

from anytimectl.comm.mpi import Comm
from anytimectl.comm.transport import Transport, Waitable
from anytimectl.comm.waiting import ByteCounter, Pending

__all__ = ["ByteCounter", "Comm", "Pending", "Transport", "Waitable"]
