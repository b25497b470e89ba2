"""Checkpoint round trip on the torch engine (the original's test_checkpointing): save, train on, load: the saved
state is restored exactly, and training on from it repeats the same updates bit for bit (model, momentum, the
dropout generator, the data stream's position)."""

from __future__ import annotations

import math

import numpy as np
import torch

from anytimectl.backends.torch.engine import TorchEngine
from anytimectl.data import BatchStream
from anytimectl.runtime import checkpoints

BATCH = 16


def _setup():
    torch.manual_seed(3)
    engine = TorchEngine("mnist-mlp", (28, 28, 1), 10, "sgd", 0.01, 1e-4, momentum=0.99, nesterov=True)
    rng = np.random.default_rng(0)
    x = rng.random((200, 28, 28, 1), dtype=np.float32)
    y = rng.integers(0, 10, 200)
    return engine, BatchStream(x, y, seed=5, rank=1)


def _train(engine: TorchEngine, stream: BatchStream, steps: int) -> None:
    for _ in range(steps):
        xb, yb = stream.peek(BATCH)
        buffer, examples, _ = engine.compute(xb, yb, 1, math.inf)  # dropout draws from torch's generator
        stream.advance(examples)
        engine.apply(buffer, 0.01)


def test_save_train_on_load_restores_exactly_and_repeats_the_same_steps(tmp_path):
    engine, stream = _setup()
    _train(engine, stream, 3)
    state = {"engine": engine.state(), "stream_consumed": stream._consumed}
    checkpoints.save_rank(tmp_path, 3, 0, state, backend="torch")
    checkpoints.write_manifest(tmp_path, 3, 1, {})
    saved = engine.get_params()
    _train(engine, stream, 4)
    after_more = engine.get_params()
    assert not np.array_equal(saved, after_more)  # training on changed the state

    point = checkpoints.latest(tmp_path)
    loaded = checkpoints.load_rank(point, 0, backend="torch")
    fresh, fresh_stream = _setup()  # a new process's engine: other initial weights, fresh momentum
    fresh.load_state(loaded["engine"])
    fresh_stream.advance(loaded["stream_consumed"])
    assert np.array_equal(fresh.get_params(), saved)
    restored = fresh.optimizer.state_dict()["state"]
    assert restored and all(torch.count_nonzero(s["momentum_buffer"]) > 0 for s in restored.values())
    _train(fresh, fresh_stream, 4)
    assert np.array_equal(fresh.get_params(), after_more)  # the same four updates, bit for bit
