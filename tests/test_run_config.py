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
    PeerConfig,
    RunConfig,
    current_keys,
)

CLASSES = [MasterWorkerConfig, AsyncMasterWorkerConfig, DynamicConfig, GossipConfig, CompressedConfig]
OWN = {MasterWorkerConfig: {"protocol": "sync", "batch_size": 8, "partitions": 2, "time_limit": None,
                            "time_limit_requested": "auto", "match_batch": 5},
       DynamicConfig: {"batch_size": 8, "lr_scaling": "linear", "transport": "mpi", "resize": None, "channels": None,
                       "normalize": "none", "policy": "static", "min_batch": 4, "max_batch": 64, "every": 1,
                       "loss_weight": 0.8, "time_weight": 0.2, "probe_sizes": 3, "progress_k": 2,
                       "progress_threshold": 0.1, "target_epoch_time": 1.0, "tolerance": 0.1, "window": None},
       GossipConfig: {"rule": "gossip", "batch_size": None, "global_batch_size": 32, "agg_period": 1,
                      "agg_prob": 0.5, "weighted": False, "penalty": 1.0, "elastic_alpha": 0.5, "momentum": 0.9,
                      "nesterov": True, "val_size": 0, "augment": None},
       CompressedConfig: {"batch_size": 8, "lr_peak_epoch": None, "lr_knots": None,
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


@pytest.mark.parametrize(("field", "value", "expected"), [
    ("workers", "4", "a whole number or null"), ("learning_rate", True, "a number"), ("seed", 1.5, "a whole number"),
    ("lr_staircase", 1, "true or false"), ("input_shape", [8, "8"], "a list of a whole number"),
    ("backend_options", [1], "an object or null"), ("model", None, "text")])
def test_a_value_of_the_wrong_type_is_refused_in_one_line_naming_the_field(field, value, expected):
    """A hand-edited metadata.json: the refusal names the field, the value and the type, before any rank starts
    (a string where a number belongs would otherwise fail as a TypeError deep inside every rank)."""
    recorded = json.loads(json.dumps(make_config(MasterWorkerConfig, **OWN[MasterWorkerConfig]).record()))
    recorded[field] = value
    with pytest.raises(UsageError) as refused:
        MasterWorkerConfig.from_record(recorded, where="--resume runs/x")
    message = str(refused.value)
    assert "\n" not in message and message.startswith(f"--resume runs/x: its config's {field} is {value!r}, not ")
    assert f"not {expected};" in message


def test_values_a_json_round_trip_may_change_still_fit():
    """An int where a float is declared (JSON writes 1.0 as 1.0, but a hand-written 1 is fine), None in optional
    fields, nested lists."""
    recorded = json.loads(json.dumps(make_config(CompressedConfig, **OWN[CompressedConfig]).record()))
    recorded.update(learning_rate=1, lr_knots=[[0, 0.0], [5, 0.4]], epochs=None, threads=2)
    assert CompressedConfig.from_record(recorded).learning_rate == 1


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
    meta["config"]["partitions"] = meta["config"].pop("renamed_option")
    meta["config"]["steps"] = "4"  # read by --resume's own checks before the config is rebuilt
    (run / "metadata.json").write_text(json.dumps(meta))
    refused = anytimectl("train", "amb", "--resume", str(run), "--steps", "6", check=False)
    assert refused.returncode == 2 and "Traceback" not in refused.stderr
    assert refused.stderr.strip().splitlines() == [
        f"anytimectl: error: --resume {run}: its config's steps is '4', not a whole number or null; correct it in the "
        "file (was it edited by hand?) or start a new run"]


@pytest.mark.parametrize(("name", "cls"), [("master_worker", MasterWorkerConfig),
                                           ("async_master_worker", AsyncMasterWorkerConfig),
                                           ("dynamic", DynamicConfig), ("gossip", GossipConfig),
                                           ("compressed", CompressedConfig), ("allreduce", PeerConfig)])
def test_each_protocol_reads_the_class_of_its_type_argument(name, cls):
    """`class DynamicProtocol(AllReduceProtocol[DynamicConfig])`: the class the shell checks (and --resume
    rebuilds) is the one a type checker sees as `context.config`; an intermediate base gets its variable's bound."""
    from anytimectl.runtime.shell import load_protocol

    assert load_protocol(name).config_class is cls


def test_a_protocol_names_its_config_once():
    from anytimectl.protocols.base import TrainingProtocol

    with pytest.raises(TypeError, match="do not set config_class too"):
        class Twice(TrainingProtocol[DynamicConfig]):
            config_class = DynamicConfig
    with pytest.raises(TypeError, match="does not name a RunConfig class"):
        class NotAConfig(TrainingProtocol[dict]):  # type: ignore[type-var]
            pass

    class Plain(TrainingProtocol[GossipConfig]):
        pass

    class Inherited(Plain):  # no type argument of its own: keeps its base's
        pass

    assert Plain.config_class is GossipConfig and Inherited.config_class is GossipConfig


def test_an_earlier_versions_method_key_is_read_as_the_field_it_now_is():
    """`method` meant the command's method in metadata but the variant in the config; the config's fields are now
    `rule` (train gossip) and `compressor` (compress train, which recorded it twice): records of earlier versions
    rebuild, and plots and `runs` (current_keys) read them under the new names."""
    gossip = make_config(GossipConfig, **OWN[GossipConfig])
    old = {("method" if k == "rule" else k): v for k, v in gossip.record().items()}
    assert "rule" not in old and GossipConfig.from_record(old) == gossip
    assert current_keys("gossip", old)["rule"] == "gossip" and "method" not in current_keys("gossip", old)

    compressed = make_config(CompressedConfig, **OWN[CompressedConfig], compressor="topk")
    old = {**compressed.record(), "method": "topk"}
    assert CompressedConfig.from_record(old) == compressed
    assert "method" not in compressed.record() and "method" not in current_keys("compress", old)
    # a record older still, with the compressor only under `method`
    older = {k: v for k, v in old.items() if k != "compressor"}
    assert CompressedConfig.from_record(older) == compressed
    # other methods' configs keep their keys (the master-worker args.json reads a `method` it is given)
    assert current_keys("amb", {"method": "amb"}) == {"method": "amb"}


def test_runs_and_plots_read_an_earlier_gossip_run_under_rule(tmp_path):
    from anytimectl.plots.rundir import Run
    from anytimectl.runtime.run_table import config_value

    run = tmp_path / "old-gossip"
    run.mkdir()
    (run / "metadata.json").write_text(json.dumps({"command": "train", "method": "gossip",
                                                   "config": {"method": "elastic", "agg_prob": 0.125}}))
    assert config_value(str(run), "rule") == "elastic" and config_value(str(run), "method") == "gossip"
    loaded = Run(path=run, meta=json.loads((run / "metadata.json").read_text()))
    assert loaded.config["rule"] == "elastic" and loaded.method == "gossip"
