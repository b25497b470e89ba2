"""`train dynamic`'s protocol in one process on the torch engine: the learning rate the optimizer applies in each
step is the one logged in master_stats (the original computed a new rate and never applied it), and it follows the
global batch; the shared data sequence gives each example once per epoch; the input transform feeds the engine."""

from __future__ import annotations

import socket
from types import SimpleNamespace

import numpy as np
import pytest
from run_configs import make_config

from anytimectl.protocols.base import RunRequest
from anytimectl.protocols.batch_policies import PolicyOptions
from anytimectl.protocols.dynamic import DynamicProtocol, SharedEpochStream
from anytimectl.runtime.launch import RankInfo
from anytimectl.runtime.run_config import DynamicConfig
from anytimectl.runtime.schedules import Schedule
from anytimectl.runtime.shell import RunContext, Stopper


class _Recorder:
    """What PeerProtocol.run hands rank 0's recorder, kept for the test."""

    origin = 0.0

    def __init__(self) -> None:
        self.records = []

    def start_clock(self, origin: float | None = None) -> None:
        pass

    def step(self, record) -> None:
        self.records.append(record)

    def rows(self, ranks, rows, record=None) -> None:
        pass


def _config(**overrides) -> dict:
    config = {
        "dataset": "digits", "data_dir": None, "model": "digits-cnn", "optimizer": "momentum", "learning_rate": 0.01,
        "weight_decay": 0.0, "seed": 0, "test_size": 20, "steps": None, "epochs": 3.0, "target_accuracy": None,
        "log_every": 1000, "batch_size": 64, "policy": "increasing", "lr_scaling": "linear", "transport": "mpi",
        "resize": None, "channels": None, "normalize": "none", "lr_schedule": "const", "lr_linear_end": 1e-4,
        "lr_decay_steps": 50, "lr_decay_rate": 0.9, "lr_staircase": True, "lr_epochs_every": 10.0,
        "lr_epochs_frac": 0.5, "lr_milestones": None, "lr_anneal": 0.1,
    }
    config.update(vars(PolicyOptions(policy="increasing", min_batch=4, max_batch=1024)))
    config.update(overrides)
    return config


def _protocol(**overrides) -> tuple[DynamicProtocol, RunContext, list]:
    config = make_config(DynamicConfig, **_config(**overrides))
    request = RunRequest(command="train", method="dynamic", protocol="dynamic", backend="torch", dataset="digits",
                         model="digits-cnn", config=config, launch=SimpleNamespace(workers=0), output=None)
    context = RunContext(request=request, rank=RankInfo(0, 1, socket.gethostname(), 0, 1, 1, None),
                         stopper=Stopper(), delay=None, slow={})
    events: list = []
    context.log = lambda msg, **fields: events.append((msg, fields))  # type: ignore[method-assign]
    context.recorder = _Recorder()
    protocol = DynamicProtocol(context)
    protocol.setup()
    return protocol, context, events


def test_the_rate_the_optimizer_applies_is_the_one_logged_and_follows_the_global_batch():
    protocol, context, events = _protocol()
    applied = []
    apply = protocol.engine.apply

    def spy(buffer, learning_rate):
        loss = apply(buffer, learning_rate)
        applied.append(protocol.engine.current_learning_rate())
        return loss

    protocol.engine.apply = spy
    protocol.run()
    records = context.recorder.records
    logged = [r.learning_rate for r in records]
    assert applied == pytest.approx(logged)
    batches = [r.master["global_batch"] for r in records]
    assert sorted(set(batches)) == [64, 128, 256]  # doubled after epochs 1 and 2
    assert logged == pytest.approx([0.01 * b / 64 for b in batches])
    changes = [fields for msg, fields in events if msg == "learning rate changed"]
    assert [c["learning_rate"] for c in changes] == pytest.approx([0.02, 0.04])


def test_a_schedule_and_the_scaling_multiply():
    protocol, _, _ = _protocol(lr_scaling="sqrt", lr_schedule="epochs", lr_epochs_every=1.0, lr_epochs_frac=0.5)
    assert isinstance(protocol.schedule.schedule, Schedule)
    assert protocol.schedule.at(1, 0.0) == pytest.approx(0.01)
    protocol.policy.batches = (256,)
    assert protocol.schedule.at(50, 1.5) == pytest.approx(0.01 * 0.5 * 2.0)


def test_each_example_once_per_epoch_whatever_the_split():
    x = np.arange(100, dtype=np.float32)[:, None]
    y = np.arange(100)
    streams = [SharedEpochStream(x, y, seed=3) for _ in range(3)]
    seen = []
    for batches in [(10, 5, 15)] * 2 + [(1, 2, 27)] * 2 + [(20, 5, 5)]:  # 150 examples: one epoch and a half
        for rank, stream in enumerate(streams):
            part, labels = stream.take(batches, rank)
            assert len(part) == batches[rank] and (part[:, 0] == labels).all()
            seen.extend(labels.tolist())
    assert sorted(seen[:100]) == list(range(100))  # the first epoch: every example exactly once
    assert len(set(seen[100:])) == 50
    assert all(s.position == 150 and s.epochs == 1.5 for s in streams)


def test_the_input_transform_reaches_the_engine():
    protocol, context, _ = _protocol(resize=16, channels=3, normalize="imagenet", epochs=None, steps=2,
                                     policy="static", model="resnet18", batch_size=8)
    assert protocol.transform.output_shape((8, 8, 1)) == (16, 16, 3)
    protocol.run()
    assert len(context.recorder.records) == 2
    described = protocol.metadata()["batch_policy"]["input_transform"]
    assert described == "resize 16x16, 3 channel(s), imagenet normalisation"


def test_a_checkpoint_carries_the_policy_and_the_data_position():
    protocol, _, _ = _protocol(policy="loss", epochs=None, steps=60, tolerance=0.0)
    protocol.run()
    state = protocol.checkpoint_state()
    resumed, _, _ = _protocol(policy="loss", epochs=None, steps=60, tolerance=0.0)
    resumed.load_checkpoint_state(state)
    assert resumed.stream.position == protocol.stream.position > 0
    assert resumed.policy.batches == protocol.policy.batches
    assert resumed.policy.previous == protocol.policy.previous is not None  # the score history came along
    assert resumed.periods == protocol.periods >= 2
    assert np.array_equal(resumed.engine.get_params(), protocol.engine.get_params())
