"""The typed run configs (anytimectl/runtime/run_config.py): what a command records is its protocol's class, field for
field, and --resume rebuilds it, refusing in one line a record that does not fit this version's class."""

from __future__ import annotations

import json

import pytest
from helpers import anytimectl, metadata
from run_configs import make_config

from anytimectl.runtime.errors import UsageError
from anytimectl.runtime.run_config import (
    AsyncMasterWorkerConfig,
    CompressedConfig,
    DynamicConfig,
    GossipConfig,
    MasterWorkerConfig,
    RunConfig,
)

CLASSES = [MasterWorkerConfig, AsyncMasterWorkerConfig, DynamicConfig, GossipConfig, CompressedConfig]
OWN = {MasterWorkerConfig: {"protocol": "sync", "batch_size": 8, "partitions": 2, "time_limit": None,
                            "time_limit_requested": "auto", "match_batch": 5},
       DynamicConfig: {"batch_size": 8, "lr_scaling": "linear", "transport": "mpi", "resize": None, "channels": None,
                       "normalize": "none", "policy": "static", "min_batch": 4, "max_batch": 64, "every": 1,
                       "loss_weight": 0.8, "time_weight": 0.2, "probe_sizes": 3, "progress_k": 2,
                       "progress_threshold": 0.1, "target_epoch_time": 1.0, "tolerance": 0.1, "window": None},
       GossipConfig: {"method": "gossip", "batch_size": None, "global_batch_size": 32, "agg_period": 1,
                      "agg_prob": 0.5, "weighted": False, "penalty": 1.0, "elastic_alpha": 0.5, "momentum": 0.9,
                      "nesterov": True, "val_size": 0, "augment": None},
       CompressedConfig: {"method": "topk", "batch_size": 8, "lr_peak_epoch": None, "lr_knots": None,
                          "momentum": 0.9, "nesterov": True, "augment": "none"}}
OWN[AsyncMasterWorkerConfig] = {**OWN[MasterWorkerConfig], "protocol": "async", "async_master": "batch",
                                "async_batch_min": 4, "async_time_limit": 0.1, "async_delay_std": None}


@pytest.mark.parametrize("cls", CLASSES, ids=lambda c: c.__name__)
def test_a_record_rebuilds_the_same_config_and_is_frozen(cls):
    config = make_config(cls, **OWN[cls])
    recorded = json.loads(json.dumps(config.record()))  # as metadata.json holds it
    assert cls.from_record(recorded) == config
    assert set(recorded) == set(cls.field_names()) > set(RunConfig.field_names())
    with pytest.raises(AttributeError):
        config.seed = 3  # type: ignore[misc]


def test_a_record_that_does_not_fit_is_refused_in_one_line_naming_each_key():
    recorded = make_config(MasterWorkerConfig, **OWN[MasterWorkerConfig]).record()
    del recorded["lr_anneal"], recorded["backend_options"]  # backend_options has a default: it may be left out
    recorded["batch"] = 8
    with pytest.raises(UsageError) as refused:
        MasterWorkerConfig.from_record(recorded, where="--resume runs/x")
    message = str(refused.value)
    assert "\n" not in message and message.startswith("--resume runs/x: ")
    assert "unknown key(s) batch" in message and "missing key(s) lr_anneal" in message
    assert "backend_options" not in message


def test_a_command_refuses_a_field_its_class_does_not_have_at_build_time():
    with pytest.raises(TypeError, match="renamed_field"):
        make_config(GossipConfig, **OWN[GossipConfig], renamed_field=1)


def test_a_run_records_its_protocols_class_whole_and_resume_refuses_a_record_of_another_version(tmp_path):
    args = ("train", "amb", "--backend", "sim", "--workers", "0", "--sim-example-time", "0", "--time-limit", "0.01",
            "--steps", "4", "--checkpoint-every", "2", "--quiet", "--out", str(tmp_path), "--name", "a")
    anytimectl(*args)
    run = tmp_path / "a"
    recorded = metadata(run)["config"]
    assert set(recorded) == set(MasterWorkerConfig.field_names())
    assert MasterWorkerConfig.from_record(recorded).backend_options["examples"] == 60_000
    meta = metadata(run)
    meta["config"]["renamed_option"] = meta["config"].pop("partitions")
    (run / "metadata.json").write_text(json.dumps(meta))
    refused = anytimectl("train", "amb", "--resume", str(run), "--steps", "6", check=False)
    assert refused.returncode == 2, refused.stderr
    lines = refused.stderr.strip().splitlines()
    assert len(lines) == 1 and "unknown key(s) renamed_option" in lines[0] and "missing key(s) partitions" in lines[0]
