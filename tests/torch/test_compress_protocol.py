"""`compress train`'s protocol and recipe in one process on the torch engine: the engine's per-example step is the
original's summed-loss step (rate / B, weight decay x B, Nesterov); the rate applied each step is the piecewise
schedule's, and the one logged; the CLI's method names are the library's; error feedback's residual survives a
checkpoint."""

from __future__ import annotations

import dataclasses
import math
import socket
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from run_configs import make_config
from torch.nn import functional

from anytimectl.backends.torch.compression import canonical_method, canonical_mode, method_names
from anytimectl.backends.torch.engine import TorchEngine
from anytimectl.backends.torch.models import build_model, to_model_input
from anytimectl.cli.commands.compress import METHOD_ALIASES, METHODS, MODE_ALIASES, MODES
from anytimectl.cli.options import OptimizerOptions
from anytimectl.exchange import entry as exchange_entry
from anytimectl.exchange import names as exchange_names
from anytimectl.protocols.base import RunRequest
from anytimectl.protocols.compressed import CompressedProtocol, schedule_knots
from anytimectl.runtime.launch import RankInfo
from anytimectl.runtime.run_config import CompressedConfig
from anytimectl.runtime.schedules import Schedule
from anytimectl.runtime.shell import RunContext, Stopper


class _Recorder:
    origin = 0.0

    def __init__(self) -> None:
        self.records = []

    def start_clock(self, origin: float | None = None) -> None:
        pass

    def step(self, record) -> None:
        self.records.append(record)

    def rows(self, ranks, rows, record=None) -> None:
        pass


def _protocol(**overrides) -> tuple[CompressedProtocol, RunContext]:
    config = dataclasses.asdict(OptimizerOptions(optimizer="sgd", learning_rate=0.4, weight_decay=5e-4))
    config.update(dataset="digits", data_dir=None, model="digits-cnn", seed=0, test_size=30, steps=None, epochs=1.0,
                  target_accuracy=None, batch_size=64, compressor="topk", mode="layerwise", ratio=0.01, threshold=0.001,
                  levels=255, value_dtype="float32", rescale=False, error_feedback=True, momentum=0.9, nesterov=True,
                  augment="none", log_every=None, lr_schedule="piecewise", lr_peak_epoch=None, lr_knots=None)
    config.update(overrides)
    config = make_config(CompressedConfig, **config)
    request = RunRequest(command="compress", method="compress", protocol="compressed", backend="torch",
                         dataset="digits", model="digits-cnn", config=config, launch=SimpleNamespace(workers=0),
                         output=None)
    context = RunContext(request=request, rank=RankInfo(0, 1, socket.gethostname(), 0, 1, 1, None),
                         stopper=Stopper(), delay=None, slow={})
    context.log = lambda msg, **fields: None  # type: ignore[method-assign]
    context.recorder = _Recorder()
    protocol = CompressedProtocol(context)
    protocol.setup()
    return protocol, context


def test_the_cli_names_are_the_librarys():
    assert METHODS == method_names()
    codecs = [n for n in exchange_names() if exchange_entry(n).target.endswith(":CodecExchange")]
    assert ["none", *codecs] == list(method_names())  # every codec is an exchange; none is the dense all-reduce
    assert all(exchange_entry(alias).name == name for alias, name in METHOD_ALIASES.items())
    assert all(canonical_method(alias) == name for alias, name in METHOD_ALIASES.items())
    assert set(MODES) == {canonical_mode(m) for m in MODES}
    assert all(canonical_mode(alias) == name for alias, name in MODE_ALIASES.items())


@pytest.mark.parametrize("momentum", [0.0, 0.9])
def test_the_engines_per_example_step_is_the_originals_summed_loss_step(momentum):
    """The original: SGD(lr / B, momentum, nesterov, weight_decay 5e-4 B) on loss.sum(); the engine: lr and 5e-4 on
    the mean gradient. Same parameters after every step."""
    torch.manual_seed(0)
    B, rates = 32, [0.05, 0.4, 0.2, 0.1]
    engine = TorchEngine("digits-cnn", (8, 8, 1), 10, "sgd", rates[0], 5e-4, momentum=momentum, nesterov=momentum > 0)
    original = build_model("digits-cnn", (8, 8, 1), 10)
    original.load_state_dict(engine.model.state_dict())
    optimizer = torch.optim.SGD(original.parameters(), lr=rates[0] / B, momentum=momentum, nesterov=momentum > 0,
                                weight_decay=5e-4 * B)
    rng = np.random.default_rng(0)
    for rate in rates:
        x = rng.random((B, 8, 8, 1), dtype=np.float32)
        y = rng.integers(0, 10, B)
        buffer, _, _ = engine.compute(x, y, 1, math.inf)
        engine.apply(buffer, rate)
        optimizer.zero_grad()
        functional.cross_entropy(original(to_model_input(torch.from_numpy(x))), torch.from_numpy(y),
                                 reduction="sum").backward()
        for group in optimizer.param_groups:
            group["lr"] = rate / B
        optimizer.step()
    theirs = torch.cat([p.detach().reshape(-1) for p in original.parameters()]).numpy()
    ours = engine.get_params()[:engine.trainable_count]
    assert np.abs(ours - theirs).max() <= 1e-5 * max(1.0, np.abs(theirs).max())


def test_the_rate_applied_is_the_piecewise_schedules_and_the_one_logged():
    protocol, context = _protocol(epochs=2.0)
    applied = []
    apply = protocol.engine.apply

    def spy(buffer, learning_rate):
        loss = apply(buffer, learning_rate)
        applied.append(protocol.engine.current_learning_rate())
        return loss

    protocol.engine.apply = spy
    protocol.run()
    records = context.recorder.records
    knots = schedule_knots(0.4, 2.0, None)
    assert context.config.lr_knots == [list(k) for k in knots] and knots[1][0] == pytest.approx(2 * 5 / 24)
    expected = Schedule("piecewise", knots=knots)
    assert [r.learning_rate for r in records] == pytest.approx(applied)
    assert [r.learning_rate for r in records] == pytest.approx([expected.at(1, r.epoch - 64 / 1437) for r in records])
    assert max(applied) > 0.3 and applied[0] == 0.0 and applied[-1] < 0.05
    # once an epoch by default: 1437 / 64 steps
    assert context.config.log_every == round(1437 / 64)
    evaluated = [r.step for r in records if r.accuracy is not None]
    assert evaluated == [22, 44, len(records)] and len(records) == 45 and records[-1].accuracy > 0.5
    assert records[-1].master["compression_ratio"] > 50  # top-1% of the digits CNN with 32-bit values


def test_error_feedback_residual_survives_a_checkpoint():
    protocol, _ = _protocol(steps=3, epochs=None)
    for step in (1, 2, 3):
        protocol.clock.begin(step)
        protocol.step(step, 0.1)
    protocol.examples = 3 * 64.0
    state = protocol.checkpoint_state()
    residual = protocol.exchange.codec.memory.state()
    assert np.abs(residual).max() > 0 and np.array_equal(state["exchange"]["residual"], residual)
    fresh, _ = _protocol(steps=3, epochs=None)
    fresh.load_checkpoint_state(state)
    assert np.array_equal(fresh.exchange.codec.memory.state(), residual)
    assert np.array_equal(fresh.exchange_totals, protocol.exchange_totals)
