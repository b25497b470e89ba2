"""Run under `mpiexec -n W python -m mpi4py tests/mpi/gossip_invariants.py BACKEND` by tests/test_gossip_mpi.py.

The original's TestPairwise / TestAllReduce / TestElasticGossip / TestGossipingSgd / TestCluster checks, through the
real GossipProtocol (its set-up, its steps, its point-to-point exchange) on W real ranks. Each check collects its
evidence with explicit collectives that the protocol itself never uses (all_gather), and rank 0 prints one JSON
report. Learning rate 0 in the exchange checks, so that the optimizer step is the identity and what changes is
exactly the gossip update.
"""

from __future__ import annotations

import dataclasses
import json
import sys
from pathlib import Path

import numpy as np

from anytimectl.cli.options import OptimizerOptions
from anytimectl.protocols.base import RunRequest
from anytimectl.protocols.gossip import GossipProtocol
from anytimectl.protocols.gossip_schedule import NO_PEER, GossipSchedule, partners_of
from anytimectl.runtime.launch import start_rank
from anytimectl.runtime.run_config import GossipConfig
from anytimectl.runtime.shell import RunContext, Stopper

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests/: run_configs
from run_configs import make_config  # noqa: E402

backend = sys.argv[1]
MODEL = {"torch": "iris-mlp", "tensorflow": "mlp"}[backend]
SEED = 7
rank_info = start_rank(1)
world = rank_info.comm.mpi
rank, size = rank_info.rank, rank_info.size

config = dataclasses.asdict(OptimizerOptions(optimizer="sgd", learning_rate=0.1, weight_decay=1e-3))
config.update(dataset="iris", data_dir=None, model=MODEL, seed=SEED, test_size=-1, val_size=25, steps=None,
              epochs=None, batch_size=4, global_batch_size=4 * size, momentum=0.9 if backend == "torch" else None,
              nesterov=backend == "torch", rule="elastic", agg_prob=0.5, agg_period=1, weighted=False, penalty=1.0,
              elastic_alpha=0.5, log_every=1000, augment=None)
config = make_config(GossipConfig, **config)
request = RunRequest(command="train", method="gossip", protocol="gossip", backend=backend, dataset="iris",
                     model=MODEL, config=config, launch=None, output=None, seed=SEED)
context = RunContext(request=request, rank=rank_info, stopper=Stopper(), delay=None, slow={})
protocol = GossipProtocol(context)
protocol.setup()
engine = protocol.engine
T = protocol.trainable
report: dict[str, object] = {"size": size, "trainable": T}


def gathered(value):
    return world.allgather(value)


# --- identical parameters after start-up (param_init_check) --------------------------------------------------------
params = gathered(engine.get_params())
report["init_identical"] = all(np.array_equal(params[0], p) for p in params)

# --- seeds differ across ranks, and follow seed + rank (test_seed_non_symmetry) ----------------------------------
if backend == "torch":
    import torch

    draws = gathered(torch.rand(8).numpy())
    report["initial_seeds"] = gathered(int(torch.initial_seed()))
else:
    import tensorflow as tf

    draws = gathered(tf.random.uniform((8,)).numpy())
report["rng_draws_differ"] = all(not np.array_equal(draws[i], draws[j]) for i in range(size) for j in range(i))

# --- the partner derivation against an explicit all_gather (init_comm_check), over many rounds -----------------------
mismatches = 0
for step in range(1, 201):
    derived = protocol.gossip.choices(step)  # every rank's choice, derived here without asking
    own = gathered(int(derived[rank]))  # what each rank chose, as the original learned it
    mismatches += int(not np.array_equal(np.array(own), derived))
    expected = {j for j, choice in enumerate(own) if choice == rank} | ({own[rank]} if own[rank] != NO_PEER else set())
    mismatches += int(set(partners_of(derived, rank)) != expected)
report["derivation_mismatches"] = mismatches


def asymmetric() -> np.ndarray:
    """Different parameters on every rank (the original re-initialised the model per rank)."""
    base = np.array(engine.get_params(), dtype=np.float32)
    noise = np.random.default_rng(100 + rank).standard_normal(base.size).astype(np.float32)
    engine.set_params(base + (rank + 1) * 0.05 * noise)
    return np.array(engine.get_params(), dtype=np.float32)


def run_step(step: int) -> None:
    protocol.clock.begin(step)
    protocol.step(step, 0.0)


# --- allreduce: every worker holds the mean of the pre-exchange gradients (all_reduce_check) ------------------------
protocol.rule = "allreduce"
captured: dict[str, np.ndarray] = {}
compute, apply = engine.compute, engine.apply


def capture_compute(*args):
    buffer, examples, done = compute(*args)
    captured["pre"] = buffer.copy()
    return buffer, examples, done


def capture_apply(buffer, rate):
    captured["reduced"] = buffer.copy()
    return apply(buffer, rate)


engine.compute, engine.apply = capture_compute, capture_apply
asymmetric()
run_step(1)
engine.compute, engine.apply = compute, apply
pre = gathered(captured["pre"])
reduced = gathered(captured["reduced"])
pre_grads = [p[:T] / p[-2] for p in pre]  # each rank's mean gradient before the exchange
report["allreduce_pre_differ"] = all(not np.allclose(pre_grads[i], pre_grads[j]) for i in range(size)
                                     for j in range(i))
report["allreduce_equal_after"] = all(np.array_equal(reduced[0], r) for r in reduced)
report["allreduce_mean_error"] = float(np.abs(reduced[rank][:T] / reduced[rank][-2] - np.mean(pre_grads, axis=0)).max())

# --- elastic: the update is alpha * sum over partners (x_r - x_p); the sum is conserved (elastic_gossip_check) -------
protocol.rule = "elastic"
protocol.gossip = GossipSchedule.create(size, SEED, prob=1.0)
errors, conserved, changed = [], [], []
for step in range(2, 8):
    before = gathered(asymmetric())
    run_step(step)
    after = gathered(np.array(engine.get_params(), dtype=np.float32))
    partners = partners_of(protocol.gossip.choices(step), rank)
    expected = before[rank][:T] - 0.5 * sum(before[rank][:T] - before[p][:T] for p in partners)
    errors.append(float(np.abs(after[rank][:T] - expected).max()))
    changed.append(bool(np.abs(after[rank][:T] - before[rank][:T]).max() > 1e-4))
    total_before = np.sum([b[:T] for b in before], axis=0, dtype=np.float64)
    total_after = np.sum([a[:T] for a in after], axis=0, dtype=np.float64)
    conserved.append(float(np.abs(total_after - total_before).max()))
report["elastic_update_error"] = max(gathered(max(errors)))
report["elastic_changed"] = all(gathered(all(changed)))
report["elastic_sum_drift"] = max(conserved)
# two ranks, alpha 0.5, one partner each: both end at the midpoint
if size == 2:
    before = gathered(asymmetric())
    run_step(8)
    after = gathered(np.array(engine.get_params(), dtype=np.float32))
    report["elastic_midpoint_error"] = float(np.abs(after[rank][:T] - (before[0][:T] + before[1][:T]) / 2).max())

# --- pull gossip: the initiator's update is (x_r - x_peer)/2, the peer does not change (gossiping_sgd_check) ---------
protocol.rule = "gossip"
protocol.gossip = GossipSchedule.create(size, SEED, prob=0.5)
initiator_errors, bystander_errors, seen = [], [], set()
for step in range(10, 40):
    before = gathered(asymmetric())
    run_step(step)
    after = np.array(engine.get_params(), dtype=np.float32)
    peer = protocol.gossip.peer(step, rank)
    if peer != NO_PEER:
        initiator_errors.append(float(np.abs(after[:T] - (before[rank][:T] - (before[rank][:T] - before[peer][:T]) / 2))
                                      .max()))
        seen.add("initiator")
    else:
        bystander_errors.append(float(np.abs(after - before[rank]).max()))
        seen.add("peer only" if rank in protocol.gossip.choices(step) else "idle")
report["gossip_initiator_error"] = max(max(e) if e else 0.0 for e in gathered(initiator_errors))
report["gossip_non_initiator_change"] = max(max(e) if e else 0.0 for e in gathered(bystander_errors))
report["gossip_roles_seen"] = sorted(set().union(*gathered(seen)))
report["bytes_sent"] = gathered(protocol.comm.bytes.sent)

if rank == 0:
    print(json.dumps(report))
