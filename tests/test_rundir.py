"""The run directory writer: never overwrites, always parses, survives being cut off."""

from __future__ import annotations

import json

import pandas as pd
import pytest

from anytimectl.errors import UsageError
from anytimectl.rundir import MASTER_COLUMNS, RunDirectory, mark_if_unfinished, read_trace, reserve


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


def test_parent_marks_a_run_its_job_left_running(tmp_path):
    run = open_run(tmp_path)
    assert mark_if_unfinished(run.path, "failed", "exit code 9")
    assert json.loads((run.path / "metadata.json").read_text())["status"] == "failed"
    assert not mark_if_unfinished(run.path, "failed", "again")
