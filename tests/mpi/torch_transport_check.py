"""Run under `mpiexec -n N python -m mpi4py` by tests/test_torch_transport.py: the torch.distributed transport
(gloo on CPU) started from the MPI job, every call the peer protocols make, against what MPI computes.
Rank 0 prints one JSON line with what it checked."""

import json
import sys
import time

import numpy as np
from mpi4py import MPI

from anytimectl.backends.torch.transport import TorchTransport
from anytimectl.comm import Comm, Transport, Waitable

comm = Comm(MPI.COMM_WORLD)
rank, size = comm.rank, comm.size
transport = TorchTransport.start(comm)
checked = {"backend": transport.backend, "size": size}
assert (transport.rank, transport.size) == (rank, size)

# all-reduce, in place and into another buffer; the reference through MPI
buffer = np.arange(1000, dtype=np.float32) * (rank + 1)
expected = np.arange(1000, dtype=np.float32) * sum(range(1, size + 1))
before = time.time()
transport.allreduce_sum(buffer)
assert np.array_equal(buffer, expected), buffer[:4]
assert transport.ready_at >= before
out = np.zeros(1000, dtype=np.float32)
source = np.full(1000, rank, dtype=np.float32)
transport.allreduce_sum(source, out)
assert np.all(out == sum(range(size))) and np.all(source == rank)
checked["allreduce"] = True
assert transport.bytes.sent == 2 * 4000 and transport.bytes.received == 2 * 4000

# all-gather of variable-size byte payloads, one of them empty
payload = np.frombuffer(("x" * rank).encode(), dtype=np.uint8)
gathered = transport.allgather_bytes(payload)
assert [bytes(p).decode() for p in gathered] == ["x" * r for r in range(size)]
floats = transport.allgather_bytes(np.array([rank + 0.5], dtype=np.float64).view(np.uint8))
assert [float(np.frombuffer(bytes(p), np.float64)[0]) for p in floats] == [r + 0.5 for r in range(size)]
checked["allgather_bytes"] = True

# broadcast, waited on like comm.Pending
data = np.full(16, 7.0 if rank == 1 else 0.0, dtype=np.float32)
transport.broadcast(data, root=1).wait()
assert np.all(data == 7.0)
checked["broadcast"] = True

# point-to-point ring: send to the right, receive from the left, with a tag; the left neighbour is late
right, left = (rank + 1) % size, (rank - 1) % size
if rank == 0:
    time.sleep(0.3)
send = np.full(8, rank, dtype=np.float32)
receive = np.zeros(8, dtype=np.float32)
cpu = time.process_time()
pending = transport.exchange([(right, send)], [(left, receive)], tag=5)
waited = pending.wait(spin_seconds=1e-4)
cpu = time.process_time() - cpu
assert np.all(receive == left), receive
checked["exchange"] = True
waits = MPI.COMM_WORLD.gather((waited, cpu), root=0)
if rank == 0:
    # worker 2 (rank 1) waited for rank 0's late send while sleeping, not spinning
    checked["late_peer_wait_s"], checked["late_peer_wait_cpu_s"] = waits[1]

# a duplicate group counts apart and does not mix with the original
copy = transport.dup()
sent_before = transport.bytes.sent
ones = np.ones(10, dtype=np.float32)
copy.allreduce_sum(ones)
assert np.all(ones == size) and copy.bytes.sent == 40 and transport.bytes.sent == sent_before
checked["dup"] = True

checked["is_transport"] = isinstance(transport, Transport) and isinstance(copy, Transport)
checked["waitable"] = isinstance(transport.broadcast(np.zeros(1, dtype=np.float32)), Waitable)
copy.close()
transport.close()
if rank == 0:
    print(json.dumps(checked))
sys.stdout.flush()
