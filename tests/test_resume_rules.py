"""The shared resume path's rules without a job: which options may accompany --resume, how differences are named,
the checkpoint signal's names, and the protocols that declare checkpoints."""

from __future__ import annotations

import signal
from pathlib import Path

import pytest

from anytimectl.cli.commands.resume import ResumeRules, changed_options
from anytimectl.runtime.checkpoints import checkpoint_signal
from anytimectl.runtime.errors import UsageError
from anytimectl.runtime.launch import STOP_SIGNALS, heeded_signals
from anytimectl.runtime.step_reports import StepReports

RULES = ResumeRules(command="train", method="dynamic", protocol="dynamic")
RECORDED = {"learning_rate": 0.05, "lr_milestones": [2.0, 4.0], "data_dir": "/data", "steps": 10, "policy": "dbs"}


def test_equal_options_pass_and_each_difference_is_named():
    given = {"learning_rate", "lr_milestones", "data_dir", "policy", "steps", "workers", "quiet"}
    same = {"learning_rate": 0.05, "lr_milestones": (2.0, 4.0), "data_dir": Path("/data"), "policy": "dbs",
            "steps": 20, "workers": 4, "quiet": True}
    assert changed_options(given, same, RECORDED, RULES.may_change) == []
    differ = changed_options(given, {**same, "learning_rate": 0.1, "policy": "static"}, RECORDED, RULES.may_change)
    assert differ == ["--learning-rate 0.1 (recorded: 0.05)", "--policy static (recorded: dbs)"]
    assert changed_options({"unknown_option"}, {"unknown_option": 3}, RECORDED, RULES.may_change) == [
        "--unknown-option 3"]


def test_a_fixed_length_method_may_not_extend():
    fixed = ResumeRules(command="compress", method="compress", protocol="compressed", extendable=())
    assert "steps" not in fixed.may_change and "steps" in RULES.may_change
    assert changed_options({"steps"}, {"steps": 20}, RECORDED, fixed.may_change) == ["--steps 20 (recorded: 10)"]


@pytest.mark.parametrize("name", ["USR1", "SIGUSR1", "usr2", "TERM", "sigterm", "INT", "HUP"])
def test_checkpoint_signal_names(name):
    number = checkpoint_signal(name)
    assert signal.Signals(number).name == "SIG" + name.upper().removeprefix("SIG")


@pytest.mark.parametrize("name", ["KILL", "9", "", "USR3"])
def test_bad_checkpoint_signals_are_one_line(name):
    with pytest.raises(UsageError, match="--checkpoint-on-signal"):
        checkpoint_signal(name)


def test_the_checkpoint_signal_is_heeded_beside_the_stop_signals():
    assert signal.SIGUSR1 in heeded_signals(signal.SIGUSR1) and signal.SIGUSR1 not in heeded_signals()
    assert heeded_signals(signal.SIGTERM) == heeded_signals()
    assert set(heeded_signals()) <= set(STOP_SIGNALS)


def test_a_checkpoint_wish_is_agreed_with_the_stop():
    reports = StepReports(None, 3, 1)
    reports.post(1, [0.0, 0.0, 0.0], False)
    assert reports.last_step is None and not reports.checkpoint_wished
    reports.post(2, [0.0, 0.0, 0.0], 2)
    assert reports.last_step == 2 and reports.checkpoint_wished


def test_peer_protocols_declare_checkpoints():
    from anytimectl.runtime.shell import load_protocol

    for name in ("dynamic", "gossip", "compressed", "allreduce"):
        assert load_protocol(name).supports_checkpoints, name
