"""The run directory writer: never overwrites, always parses, survives being cut off."""

from __future__ import annotations

import json
import math
import os
import stat

import numpy as np
import pandas as pd
import pytest
from helpers import anytimectl
from test_cli_errors import assert_one_line_error

from anytimectl.protocols.args_json import original_args
from anytimectl.runtime.errors import UsageError
from anytimectl.runtime.records import MASTER_COLUMNS
from anytimectl.runtime.rundir import (
    EVALUATED_MASTER_VIEW,
    EventLog,
    RunDirectory,
    Trace,
    file_mode,
    mark_if_unfinished,
    read_trace,
    release,
    reserve,
    update_metadata,
    write_json_atomic,
    write_view,
)
from anytimectl.runtime.stragglers import parse_induce


def test_generated_names_never_collide(tmp_path):
    first = reserve(tmp_path, None, "amb-digits")
    second = reserve(tmp_path, None, "amb-digits")
    assert first != second and first.is_dir() and second.is_dir()


def test_chosen_name_must_be_new(tmp_path):
    reserve(tmp_path, "mine", "unused")
    with pytest.raises(UsageError, match="already exists"):
        reserve(tmp_path, "mine", "unused")


def test_unwritable_out_is_a_usage_error(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("")
    with pytest.raises(UsageError, match="--out"):
        reserve(blocker / "runs", None, "x")


def open_run(tmp_path):
    path = reserve(tmp_path, "run", "x")
    return RunDirectory(path, {"run_id": "run"}, {"master_stats": MASTER_COLUMNS})


def test_rows_are_on_disk_before_the_run_ends(tmp_path):
    run = open_run(tmp_path)
    run.tables["master_stats"].write([(0.1, 1, 2.3, 0.001, None, None, 0.01)])
    table = pd.read_csv(run.path / "master_stats.csv")
    assert list(table.columns) == list(MASTER_COLUMNS) and len(table) == 1
    assert pd.isna(table.accuracy[0])
    assert json.loads((run.path / "metadata.json").read_text())["status"] == "running"


def test_unclosed_trace_still_reads(tmp_path):
    run = open_run(tmp_path)
    run.trace.name_process(1, "worker 1")
    run.trace.span("compute", 1, run.origin, run.origin + 0.5, step=1)
    run.trace.flush()
    events = read_trace(run.path / "trace.json")
    assert events[-1]["name"] == "compute" and events[-1]["dur"] == pytest.approx(5e5)
    run.finish("completed")
    assert json.loads((run.path / "trace.json").read_text())[-1]["name"] == "compute"


def test_finish_records_status_once(tmp_path):
    run = open_run(tmp_path)
    run.finish("interrupted", "interrupted by Ctrl-C", {"steps": 3})
    run.finish("failed", "later")
    meta = json.loads((run.path / "metadata.json").read_text())
    assert (meta["status"], meta["reason"], meta["summary"]) == ("interrupted", "interrupted by Ctrl-C", {"steps": 3})
    assert meta["ended_at"]


def test_the_parent_can_correct_what_rank_0_recorded(tmp_path):
    run = open_run(tmp_path)
    run.finish("interrupted", "interrupted by SIGTERM")
    assert update_metadata(run.path, reason="interrupted by Ctrl-C")
    meta = json.loads((run.path / "metadata.json").read_text())
    assert (meta["status"], meta["reason"]) == ("interrupted", "interrupted by Ctrl-C")
    assert not update_metadata(tmp_path / "nothing", reason="x")


def test_parent_marks_a_run_its_job_left_running(tmp_path):
    run = open_run(tmp_path)
    assert mark_if_unfinished(run.path, "failed", "exit code 9")
    assert json.loads((run.path / "metadata.json").read_text())["status"] == "failed"
    assert not mark_if_unfinished(run.path, "failed", "again")


# --- permissions ---------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("umask", [0o022, 0o002, 0o077])
def test_metadata_gets_the_mode_of_the_tables(tmp_path, umask):
    previous = os.umask(umask)
    try:
        run = open_run(tmp_path)
        mark_if_unfinished(run.path, "failed", "rewritten by the parent")
        modes = {p.name: stat.S_IMODE(p.stat().st_mode) for p in run.path.iterdir()}
        assert file_mode() == 0o666 & ~umask
        assert modes == {"metadata.json": 0o666 & ~umask, "master_stats.csv": 0o666 & ~umask,
                         "events.jsonl": 0o666 & ~umask, "trace.json": 0o666 & ~umask}
        assert stat.S_IMODE(run.path.stat().st_mode) == 0o777 & ~umask
    finally:
        os.umask(previous)


# --- run names -----------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["a/b", "../x", "..", ".", ".hidden", "", "  ", "a\\b", "x..y", "a\nb", "x" * 256,
                                  "/abs"])
def test_bad_run_names_are_refused(tmp_path, name):
    out = tmp_path / "out"
    with pytest.raises(UsageError, match="--name") as error:
        reserve(out, name, "x")
    assert "\n" not in str(error.value) and "one folder name inside --out" in str(error.value)
    assert not (tmp_path / "x").exists() and not list(tmp_path.glob("**/x"))


def test_good_run_names_are_accepted(tmp_path):
    for name in ("amb-lr1e-3", "run 2", "fmb_w4.seed=1", "é"):
        assert reserve(tmp_path, name, "x") == tmp_path / name


@pytest.mark.parametrize("name", ["a/b", "../x"])
def test_bad_run_names_from_the_cli(tmp_path, name):
    result = anytimectl("partitions", "eval", "--model", "toy-fc", "--batch-size", "4", "--partitions", "2",
                        "--out", str(tmp_path / "runs"), "--name", name, check=False, timeout=120)
    assert_one_line_error(result, f"--name {name!r}", "one folder name")
    assert not (tmp_path / "x").exists() and not (tmp_path / "runs" / "a").exists()


def test_a_released_name_can_be_reserved_again(tmp_path):
    path = reserve(tmp_path, "mine", "x")
    assert release(path) and not path.exists()
    assert reserve(tmp_path, "mine", "x") == path
    (path / "metadata.json").write_text("{}")
    assert not release(path) and path.is_dir()  # a run that started is kept
    assert not release(tmp_path / "never-made")


def test_a_bad_mpiexec_leaves_no_run_directory(tmp_path):
    """bandwidth: the run directory is reserved only once the launcher is known to exist."""
    result = anytimectl("bandwidth", "--workers", "1", "--mpiexec", "/no/such/mpiexec", "--out", str(tmp_path),
                        "--name", "b", check=False, timeout=60)
    assert_one_line_error(result, "--mpiexec /no/such/mpiexec")
    assert not (tmp_path / "b").exists()


# --- strict JSON ---------------------------------------------------------------------------------------------------
def strict_load(path):
    def refuse(constant):
        raise AssertionError(f"{path} holds {constant}, which is not JSON")
    return json.loads(path.read_text(), parse_constant=refuse)


def test_non_finite_numbers_are_written_as_null(tmp_path):
    data = {"lr": math.nan, "limit": math.inf, "list": [1.0, -math.inf], "np": np.float32("nan"),
            "array": np.array([1.0, np.inf]), "nested": {"x": (np.float64("nan"), 2)}, "ok": np.int64(3)}
    write_json_atomic(tmp_path / "m.json", data)
    assert strict_load(tmp_path / "m.json") == {"lr": None, "limit": None, "list": [1.0, None], "np": None,
                                                 "array": [1.0, None], "nested": {"x": [None, 2]}, "ok": 3}
    log = EventLog(tmp_path / "events.jsonl")
    log.log("evaluated", loss=math.nan, accuracy=np.float32(0.5))
    log.close()
    record = json.loads((tmp_path / "events.jsonl").read_text(), parse_constant=lambda c: pytest.fail(c))
    assert record["loss"] is None and record["accuracy"] == 0.5


def test_run_metadata_with_non_finite_values_stays_json(tmp_path):
    path = reserve(tmp_path, "run", "x")
    run = RunDirectory(path, {"config": {"learning_rate": math.nan, "time_limit": math.inf}}, {})
    run.finish("completed", summary={"mean_step_time_s": math.nan})
    meta = strict_load(path / "metadata.json")
    assert meta["config"] == {"learning_rate": None, "time_limit": None} and meta["summary"]["mean_step_time_s"] is None


# --- the row-per-evaluation view -----------------------------------------------------------------------------------
def master_rows(steps, every):
    for step in range(1, steps + 1):
        evaluated = step == 1 or step % every == 0
        test_loss, accuracy = (1.5 / step, 0.1 * step) if evaluated else (None, None)
        yield (0.1 * step, step, 2.0 / step, 0.001, test_loss, accuracy, step / 10)


def test_the_evaluation_view_keeps_only_evaluated_rows(tmp_path):
    path = reserve(tmp_path, "run", "x")
    run = RunDirectory(path, {}, {"master_stats": MASTER_COLUMNS}, views=EVALUATED_MASTER_VIEW)
    rows = list(master_rows(20, 5))
    run.tables["master_stats"].write(rows[:7])
    view = pd.read_csv(path / "master_stats_eval.csv")  # flushed with its table, before the run ends
    assert list(view["step"]) == [1, 5]
    run.tables["master_stats"].write(rows[7:])
    run.finish("completed")
    every = pd.read_csv(path / "master_stats.csv")
    view = pd.read_csv(path / "master_stats_eval.csv")
    assert len(every) == 20 and list(view.columns) == list(MASTER_COLUMNS)
    assert list(view["step"]) == [1, 5, 10, 15, 20] and view[["test_loss", "accuracy"]].notna().all().all()
    pd.testing.assert_frame_equal(view, every.dropna(subset=["accuracy"]).reset_index(drop=True))


def test_the_evaluation_view_can_be_derived_from_an_existing_run(tmp_path):
    path = reserve(tmp_path, "run", "x")
    run = RunDirectory(path, {}, {"master_stats": MASTER_COLUMNS}, views=EVALUATED_MASTER_VIEW)
    run.tables["master_stats"].write(master_rows(12, 4))
    run.finish("completed")
    written = (path / "master_stats_eval.csv").read_text()
    (path / "master_stats_eval.csv").unlink()
    with open(path / "master_stats.csv", "a") as stream:
        stream.write("9.9,13,0.1")  # a half-written last line of a running run
    assert write_view(path, "master_stats", "accuracy", "master_stats_eval").read_text() == written


# --- args.json for the original's scripts --------------------------------------------------------------------------
AMB_CONFIG = {
    "method": "amb", "dataset": "cifar10", "model": "cifar10", "optimizer": "rms", "batch_size": 356,
    "partitions": 16, "time_limit": 6.2, "weight_decay": 5e-4, "log_every": 1, "steps": 3000, "test_size": 100,
    "learning_rate": 1e-3, "lr_schedule": "exponential", "lr_linear_end": 1e-4, "lr_decay_steps": 50,
    "lr_decay_rate": 0.93, "lr_staircase": True, "lr_epochs_every": 10.0, "lr_epochs_frac": 0.5, "device": "cpu",
    "gpus_per_node": None, "data_dir": "/data", "seed": 0, "induce": "niagara:0.5", "workers": 10,
}


def test_args_json_speaks_the_originals_language():
    straggler = parse_induce("niagara:0.5").to_dict()
    args = original_args(AMB_CONFIG, straggler, 10)
    assert args["model"] == "cifar10" and args["dist_opt"] == "amb" and args["intr_opt"] == "rms"
    assert (args["batch_size"], args["amb_time_limit"], args["amb_num_partitions"]) == (356, 6.2, 16)
    assert args["dist_sgy"] == "syncr" and args["num_workers"] == 10 and args["log_freq"] == 1
    assert args["last_step"] == 3000 and args["test_size"] == 100 and args["weight_decay"] == 5e-4
    assert args["lrate_schedule"] == "exponential" and args["lrate_exp_decay_rate"] == 0.93
    assert args["lrate_exp_decay_steps"] == 50 and args["lrate_exp_staircase"] == 1
    assert args["lrate_epochs_every"] == [10.0]
    # the delays as applied: niagara's components with means and stds halved
    assert args["induce_comp"] == "niagara:0.5"
    np.testing.assert_allclose(args["induce_comp_dist"], [[0, 0, 0.4], [0, 0.2, 0.3], [1, 0.15, 0.2], [2.5, 0.15, 0.1]])
    json.dumps(args, allow_nan=False)


def test_args_json_for_fmb_and_auto_limits():
    fmb = original_args({**AMB_CONFIG, "method": "fmb", "optimizer": "momentum", "steps": None, "partitions": 1,
                         "time_limit": None, "model": "mnist", "dataset": "fashion-mnist", "device": "gpu-workers"},
                        None, 4)
    assert fmb["dist_opt"] == "fmb" and fmb["intr_opt"] == "mom" and fmb["amb_time_limit"] is None
    assert fmb["amb_num_partitions"] is None and fmb["induce_comp"] is None and fmb["induce_comp_dist"] is None
    assert fmb["last_step"] == 0 and fmb["model"] == "fashion_mnist" and fmb["cuda"] == "cpu_master"
    auto = original_args({**AMB_CONFIG, "time_limit": None, "optimizer": "adam"}, None, 2, time_limit=0.25)
    assert auto["amb_time_limit"] == 0.25 and auto["intr_opt"] == "adm"
    assert original_args({**AMB_CONFIG, "protocol": "async"}, None, 2)["dist_sgy"] == "async"


def test_a_trace_without_events_closes_as_an_empty_array(tmp_path):
    trace = Trace(tmp_path / "trace.json", 0.0)
    trace.close()
    assert json.loads((tmp_path / "trace.json").read_text()) == []
