"""Checkpoint files and the reopened run directory, without a job: atomic rank files, manifests, the latest
complete checkpoint, pruning, and a resumed RunDirectory that appends to its tables, keeps its history and drops
the rows of steps it will do again."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from anytimectl.runtime import checkpoints
from anytimectl.runtime.errors import UsageError
from anytimectl.runtime.rundir import RunDirectory, read_trace

TABLES = {"master_stats": ("time", "step", "loss"), "worker_stats": ("time", "master_step", "rank", "partners")}


def _state(seed: int) -> dict:
    rng = np.random.default_rng(seed)
    return {"engine": {"params": rng.standard_normal(10), "rng": rng.bit_generator.state}, "stream_consumed": 7,
            "examples": 42.0}


def test_rank_files_round_trip_and_manifest_completes_a_checkpoint(tmp_path):
    for rank in range(3):
        checkpoints.save_rank(tmp_path, 5, rank, _state(rank), backend=None)
    assert checkpoints.latest(tmp_path) is None  # no manifest yet: not complete
    assert not list((tmp_path / "checkpoints" / "step-5").glob(".*"))  # no temporary file left behind
    checkpoints.write_manifest(tmp_path, 5, 3, {"elapsed": 1.5, "epoch": 0.25})
    point = checkpoints.latest(tmp_path)
    assert point.step == 5 and point.manifest["ranks"] == 3 and point.manifest["elapsed"] == 1.5
    for rank in range(3):
        loaded = checkpoints.load_rank(point, rank, backend=None, tensors=False)
        expected = _state(rank)
        assert loaded["step"] == 5 and loaded["rank"] == rank
        assert np.array_equal(loaded["engine"]["params"], expected["engine"]["params"])
        assert loaded["engine"]["rng"] == expected["engine"]["rng"]
    with pytest.raises(UsageError, match="no file for rank 3"):
        checkpoints.load_rank(point, 3, backend=None)


def test_manifest_refuses_missing_ranks(tmp_path):
    checkpoints.save_rank(tmp_path, 2, 0, _state(0), backend=None)
    with pytest.raises(RuntimeError, match=r"ranks \[1\]"):
        checkpoints.write_manifest(tmp_path, 2, 2, {})


def test_latest_and_prune_keep_the_newest_complete_checkpoints(tmp_path):
    for step in (10, 20, 30, 40):
        checkpoints.save_rank(tmp_path, step, 0, _state(step), backend=None)
        checkpoints.write_manifest(tmp_path, step, 1, {})
    checkpoints.save_rank(tmp_path, 25, 0, _state(25), backend=None)  # a rank died while writing step 25
    checkpoints.save_rank(tmp_path, 50, 0, _state(50), backend=None)  # step 50 is being written now
    assert checkpoints.latest(tmp_path).step == 40
    removed = checkpoints.prune(tmp_path, keep=2)
    assert removed == [10, 20, 25]
    assert checkpoints.complete_steps(tmp_path) == [30, 40]
    assert (tmp_path / "checkpoints" / "step-50").is_dir()  # newer than the latest complete one: kept


def test_resume_point_errors_are_one_line(tmp_path):
    with pytest.raises(UsageError, match="not a run directory"):
        checkpoints.resume_point(tmp_path)
    (tmp_path / "metadata.json").write_text("{}")
    with pytest.raises(UsageError, match="no complete checkpoint"):
        checkpoints.resume_point(tmp_path)


def _write_run(path, steps: int, close: bool) -> RunDirectory:
    run = RunDirectory(path, {"run_id": path.name, "config": {"steps": steps}, "argv": ["first"]}, TABLES)
    for step in range(1, steps + 1):
        run.tables["master_stats"].write([(step * 0.1, step, 1.0 / step)])
        run.tables["worker_stats"].write([(step * 0.1, step, rank, "2 4") for rank in (1, 2)])
        run.trace.span("compute", 1, 100.0 + step, 100.5 + step, step=step)
    run.events.log("evaluated", step=steps)
    if close:
        run.finish("interrupted", "interrupted by Ctrl-C")
    return run


@pytest.mark.parametrize("closed", [True, False])
def test_a_resumed_run_directory_appends_and_keeps_its_history(tmp_path, closed):
    path = tmp_path / "run"
    path.mkdir()
    first = _write_run(path, 6, close=closed)
    if not closed:  # killed: a cut-short last line in a table and in the trace, nothing closed
        for name in ("master_stats", "worker_stats"):
            first.tables[name]._stream.write("9.9,7,")
            first.tables[name]._stream.flush()
        first.trace._stream.write('{"name": "comp')
        first.trace._stream.flush()
    started = json.loads((path / "metadata.json").read_text())["started_at"]
    resumed = RunDirectory(path, {"run_id": path.name, "config": {"steps": 8}, "argv": ["second"], "summary": {}},
                           TABLES, resumed_from=4)
    meta = json.loads((path / "metadata.json").read_text())
    assert meta["status"] == "running" and meta["started_at"] == started and meta["config"]["steps"] == 8
    assert meta["resumes"][0]["from_step"] == 4 and meta["resumes"][0]["argv"] == ["second"]
    assert meta["resumes"][0]["previous_status"] == ("interrupted" if closed else "running")
    for step in (5, 6, 7, 8):
        resumed.tables["master_stats"].write([(step * 0.1, step, 1.0 / step)])
        resumed.tables["worker_stats"].write([(step * 0.1, step, rank, "1 3") for rank in (1, 2)])
        resumed.trace.span("compute", 1, 100.0 + step, 100.5 + step, step=step)
    resumed.finish("completed")
    master = pd.read_csv(path / "master_stats.csv")
    assert master["step"].tolist() == list(range(1, 9))  # steps 5-6 of the first job dropped, done again
    workers = pd.read_csv(path / "worker_stats.csv")
    assert workers["master_step"].tolist() == [s for s in range(1, 9) for _ in (1, 2)]
    assert workers["partners"].tolist()[:8] == ["2 4"] * 8 and workers["partners"].tolist()[8:] == ["1 3"] * 8
    events = [json.loads(line)["msg"] for line in (path / "events.jsonl").read_text().splitlines()]
    assert events[0] == "evaluated" and events[-1] == "run completed"
    spans = [e for e in read_trace(path / "trace.json") if e.get("ph") == "X"]
    assert len(spans) == 6 + 4
    assert json.loads((path / "metadata.json").read_text())["status"] == "completed"


def test_a_resumed_table_must_have_the_same_columns(tmp_path):
    path = tmp_path / "run"
    path.mkdir()
    _write_run(path, 2, close=True)
    with pytest.raises(UsageError, match="cannot be continued"):
        RunDirectory(path, {}, {"master_stats": ("time", "step", "loss", "extra")}, resumed_from=1)
