"""Typed run configs for tests that build a protocol directly (no command): the fields a test does not care about
take what the commands resolve by default, the rest come from the test. A field the class does not have fails
(TypeError), as it would in a command."""

from __future__ import annotations

import dataclasses
from typing import Any

from anytimectl.cli.options import OptimizerOptions
from anytimectl.exchange.options import ExchangeOptions

#: what `commands.common.prepare` resolves for a run with the default options (data facts: the test's own)
BASE = {
    "model": "mlp", "backend": "torch", "dataset": "digits", "data_dir": None, "test_size": -1,
    "test_size_requested": -1, "train_examples": 0, "input_shape": [], "num_classes": 0,
    "workers": None, "threads": None, "device": "cpu", "gpus_per_node": None,
    "induce": None, "slow": None, "seed": 0,
    "steps": None, "epochs": None, "target_accuracy": None, "log_every": 1,
    **dataclasses.asdict(OptimizerOptions()),
    "checkpoint_every": None, "keep_checkpoints": 2, "checkpoint_on_signal": "USR1", "resume": None,
}
EXCHANGE = ExchangeOptions().config()


def make_config(cls: type, **fields: Any) -> Any:
    """`cls` (a run_config class) with `fields`, the others from BASE / EXCHANGE where the class has them."""
    names = {f.name for f in dataclasses.fields(cls)}
    defaults = {k: v for k, v in {**BASE, **EXCHANGE}.items() if k in names}
    return cls(**{**defaults, **fields})
