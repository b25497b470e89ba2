"""Reading run directories for `anytimectl plot`: discovery, tolerant parsing, and the one-line errors."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import plot_fixtures as fx
import pytest

from anytimectl.plots import render, rundir, style, workers
from anytimectl.runtime.errors import UsageError


@pytest.fixture(scope="module")
def runs_root(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("runs")
    fx.make_pair(root, steps=120)
    return root


def test_folder_of_runs_is_found_sorted_by_name(runs_root, tmp_path):
    found = rundir.find_runs([runs_root])
    assert [p.name for p, _ in found] == sorted(p.name for p in runs_root.iterdir())
    assert not any(direct for _, direct in found)
    # a run directory named directly, and the same run again through its folder: listed once
    amb = found[0][0]
    assert [p.name for p, _ in rundir.find_runs([amb, runs_root])] == [amb.name, found[1][0].name]


def test_nested_folders_are_searched(tmp_path):
    fx.make_run(tmp_path / "sweep" / "a", "amb", steps=20, name="r1")
    fx.make_run(tmp_path / "sweep" / "b", "fmb", steps=20, name="r0")
    assert [p.name for p, _ in rundir.find_runs([tmp_path])] == ["r0", "r1"]


def test_tables_are_read_by_name_with_appended_columns(runs_root):
    run = rundir.load_run(sorted(runs_root.iterdir())[0])
    assert len(run.master) == 120
    assert list(run.master.columns[:6]) == ["time", "step", "loss", "learning_rate", "test_loss", "accuracy"]
    assert run.master["accuracy"].notna().sum() == 13  # step 1 and every 10th step
    assert len(run.workers) == 4 * 120
    assert {"host", "round_start", "bytes_sent"} <= set(run.workers.columns)
    assert run.workers["host"].iloc[0] == "h1"
    assert len(run.collect) == 120
    assert set(run.trace["name"]) >= {"compute", "sleep", "send", "recv", "exit", "collect", "broadcast"}


def test_columns_in_another_order_are_read_by_name(tmp_path):
    path = fx.make_run(tmp_path, "fmb", steps=30)
    df = pd.read_csv(path / "master_stats.csv")
    df[list(reversed(df.columns))].to_csv(path / "master_stats.csv", index=False)
    run = rundir.load_run(path)
    assert run.master["step"].tolist() == list(range(1, 31))


def test_running_run_keeps_complete_rows_only(tmp_path):
    path = fx.make_running(tmp_path)
    run = rundir.load_run(path)
    assert run.status == "running"
    assert len(run.master) == 80
    assert run.master["step"].max() == 80
    assert len(run.workers) == 4 * 80 + 2
    assert run.workers.notna().all().all()  # the cut line is gone, not half-read
    assert len(run.trace) > 0  # open array, half-written last event
    runs = render.prepare([path])
    assert runs[0].label.endswith("(running)")


def test_complete_bytes_drops_a_partial_last_line(tmp_path):
    f = tmp_path / "t.csv"
    f.write_bytes(b"a,b\n1,2\n3,4")
    assert rundir.complete_bytes(f) == b"a,b\n1,2\n"
    f.write_bytes(b"a,b\n1,2\n")
    assert rundir.complete_bytes(f) == b"a,b\n1,2\n"
    f.write_bytes(b"a,b")
    assert rundir.complete_bytes(f) == b""


def test_closed_and_open_traces_parse_alike(tmp_path):
    events = [
        {"name": "compute", "ph": "X", "ts": 1_000_000, "dur": 500_000, "pid": 1, "tid": 0, "args": {"step": 1}},
        {"name": "process_name", "ph": "M", "pid": 1, "tid": 0, "args": {"name": "worker 1"}},
    ]
    body = "[\n" + "".join(json.dumps(e) + ",\n" for e in events)
    for text in (body + "]\n", body, body + '{"name": "send", "ph": "X", "ts": 15'):
        f = tmp_path / "trace.json"
        f.write_text(text)
        df = rundir.read_trace(f)
        assert df[["name", "ts", "dur", "pid", "step"]].values.tolist() == [["compute", 1.0, 0.5, 1, 1]]


# ---- errors: one line, naming the path or name, and what is valid ----


def test_missing_path(tmp_path):
    with pytest.raises(UsageError, match="nope: no such file"):
        rundir.find_runs([tmp_path / "nope"])


def test_folder_without_runs(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(UsageError, match=r"empty: not a run directory .*contains none"):
        rundir.find_runs([tmp_path / "empty"])


def test_file_is_not_a_run(tmp_path):
    f = tmp_path / "notes.txt"
    f.write_text("x")
    with pytest.raises(UsageError, match="notes.txt: not a run directory"):
        rundir.find_runs([f])


def test_run_with_no_steps_named_directly(tmp_path):
    path = fx.make_empty(tmp_path)
    with pytest.raises(UsageError, match=r"fmb-empty has no steps yet"):
        render.prepare([path])


def test_run_with_no_steps_inside_a_folder_is_skipped_with_a_warning(tmp_path):
    fx.make_empty(tmp_path)
    fx.make_run(tmp_path, "amb", steps=20, name="amb-ok")
    warnings = []
    runs = render.prepare([tmp_path], warn=warnings.append)
    assert [r.name for r in runs] == ["amb-ok"]
    assert len(warnings) == 1 and "fmb-empty has no steps yet" in warnings[0]


def test_folder_of_only_empty_runs(tmp_path):
    fx.make_empty(tmp_path)
    with pytest.raises(UsageError, match="no steps yet"):
        render.prepare([tmp_path], warn=lambda m: None)


def test_corrupt_master_table_names_file_and_line(tmp_path):
    path = fx.make_corrupt(tmp_path, "master_stats.csv")
    with pytest.raises(UsageError, match=r"corrupt table .*master_stats.csv: line 11, column 'step' holds 'oops'"):
        render.prepare([path])


def test_corrupt_worker_table_is_reported_when_needed(tmp_path):
    path = fx.make_corrupt(tmp_path, "worker_stats.csv")
    runs = render.prepare([path])  # master is fine
    with pytest.raises(UsageError, match=r"corrupt table .*worker_stats.csv"):
        render.build_figures(kind="hist_compute_time", runs=runs)


def test_csv_with_too_many_fields_is_corrupt(tmp_path):
    path = fx.make_run(tmp_path, "fmb", steps=20)
    with open(path / "collect_stats.csv", "a") as f:
        f.write("21,4,0.1,128,9,9,9\n")
    run = rundir.load_run(path)
    with pytest.raises(UsageError, match=r"corrupt table .*collect_stats.csv"):
        run.collect  # noqa: B018


def test_missing_column_is_corrupt(tmp_path):
    path = fx.make_run(tmp_path, "fmb", steps=20)
    df = pd.read_csv(path / "master_stats.csv").drop(columns=["loss"])
    df.to_csv(path / "master_stats.csv", index=False)
    with pytest.raises(UsageError, match=r"master_stats.csv: missing column\(s\) loss"):
        rundir.load_run(path)


def test_corrupt_metadata(tmp_path):
    path = fx.make_run(tmp_path, "fmb", steps=5)
    (path / "metadata.json").write_text("{not json")
    with pytest.raises(UsageError, match="corrupt metadata .*metadata.json"):
        rundir.load_run(path)


# ---- labels and colours ----


def test_labels_keep_only_what_differs(runs_root):
    runs = render.prepare([runs_root])
    assert [r.label for r in runs] == ["AMB B=192 T=auto (batch 128) P=12", "FMB B=128"]
    one = render.prepare([sorted(runs_root.iterdir())[1]])
    assert one[0].label == "FMB B=128 W=4 niagara×0.1"


def test_label_overrides_and_too_many(runs_root):
    runs = render.prepare([runs_root], labels=["anytime"])
    assert [r.label for r in runs] == ["anytime", "FMB B=128"]
    with pytest.raises(UsageError, match="3 --label values for 2 run"):
        render.prepare([runs_root], labels=["a", "b", "c"])


def test_repeated_configuration_gets_run_names(tmp_path):
    fx.make_run(tmp_path, "amb", steps=10, name="amb-a")
    fx.make_run(tmp_path, "amb", steps=10, name="amb-b")
    runs = render.prepare([tmp_path])
    assert [r.label for r in runs] == ["amb-a", "amb-b"]
    assert runs[0].color != runs[1].color and runs[0].linestyle != runs[1].linestyle


def test_colours_follow_the_method(runs_root):
    runs = render.prepare([runs_root])
    assert [r.color for r in runs] == [style.METHOD_COLORS["amb"][0], style.METHOD_COLORS["fmb"][0]]


def test_time_units():
    assert style.time_unit(90) == ("s", 1.0)
    assert style.time_unit(1500) == ("min", 60.0)
    assert style.time_unit(5 * 3600) == ("h", 3600.0)
    assert style.time_unit(0.4, allow_ms=True) == ("ms", 1e-3)
    assert style.format_duration(0.25) == "250 ms"
    assert style.format_duration(42.1) == "42.1 s"
    assert style.format_duration(7200) == "120 min"


# ---- worker rounds ----


def test_utilisation_by_hand():
    # one worker, three steps; round k's send/recv/exit arrive with row k+1
    df = pd.DataFrame(
        {
            "master_step": [1, 2, 3],
            "rank": [1, 1, 1],
            "compute_time": [0.6, 0.5, 0.7],
            "sleep_time": [0.2, 0.0, 0.1],
            "last_send": [-1, 0.1, 0.1],
            "last_recv": [-1, 0.2, 0.4],
            "last_exit": [-1, 0.1, 0.0],
            "round_start": [0.0, 1.0, 2.0],
        }
    )
    r = workers.rounds(df)
    assert r["step"].tolist() == [1, 2]
    assert np.allclose(r["round"], [1.0, 1.0])
    u = workers.utilisation(df)
    # compute without sleep: 0.4 + 0.5 over 2 s of rounds; idle: 0.2 + 0.4
    assert u["compute"].iloc[0] == pytest.approx(0.45)
    assert u["recv"].iloc[0] == pytest.approx(0.30)
    assert u["sleep"].iloc[0] == pytest.approx(0.10)
    assert u[list(workers.PHASES)].sum(axis=1).iloc[0] == pytest.approx(1.0)


def test_large_worker_table_reads_vectorised(tmp_path):
    """100k worker rows: read and reduced with pandas only (no timing assertion; the bench is the judge)."""
    path = fx.make_large(tmp_path)
    run = rundir.load_run(path)
    assert len(run.workers) == 100_000
    u = workers.utilisation(run.workers)
    assert len(u) == 16 and u["rounds"].sum() == 16 * 6249


def _run(tmp_path: Path, name: str, protocol: str, command: str, backend: str, **config) -> rundir.Run:
    return rundir.Run(path=tmp_path / name, meta={"protocol": protocol, "method": command, "backend": backend,
                                                   "status": "completed", "config": {"workers": 4, **config}})


def test_labels_tell_each_methods_variants_apart(tmp_path):
    from anytimectl.plots import registry

    registry.load_all()  # each method's figure module registers how its runs differ
    runs = [_run(tmp_path, "a", "dynamic", "dynamic", "torch", policy="dbs"),
            _run(tmp_path, "b", "dynamic", "dynamic", "torch", policy="loss"),
            _run(tmp_path, "c", "gossip", "gossip", "torch", method="elastic", agg_prob=0.125),
            _run(tmp_path, "d", "master_worker", "amb", "tensorflow"),
            _run(tmp_path, "e", "master_worker", "amb", "torch"),
            _run(tmp_path, "f", "async_master_worker", "amb", "torch", async_master="time", async_time_limit=0.2)]
    style.assign_labels(runs)
    labels = [r.label for r in runs]
    assert "dbs" in labels[0] and "loss" in labels[1] and "elastic p=1/8" in labels[2]
    assert len(set(labels)) == len(labels) and not any("[" in label for label in labels), labels
    assert "tensorflow" in labels[3] and "torch" in labels[4] and "async every 200 ms" in labels[5]


def test_labels_name_the_compressor_of_dynamic_and_allreduce_runs(tmp_path):
    from anytimectl.plots import registry

    registry.load_all()
    exchange = {"compressor": "none", "mode": "layerwise", "ratio": 0.01, "error_feedback": False}
    runs = [_run(tmp_path, "a", "dynamic", "dynamic", "torch", policy="dbs", **exchange),
            _run(tmp_path, "b", "dynamic", "dynamic", "torch", policy="dbs",
                 **{**exchange, "compressor": "topk", "error_feedback": True}),
            _run(tmp_path, "c", "gossip", "gossip", "torch", method="allreduce", **exchange),
            _run(tmp_path, "d", "gossip", "gossip", "torch", method="allreduce",
                 **{**exchange, "compressor": "qsgd", "mode": "entire", "levels": 4}),
            _run(tmp_path, "e", "gossip", "gossip", "torch", method="allreduce", **{**exchange, "compressor": "fp16"})]
    style.assign_labels(runs)
    assert [r.label for r in runs] == ["DYNAMIC dbs", "DYNAMIC dbs, topk K=0.01 EF", "GOSSIP allreduce",
                                       "GOSSIP allreduce, qsgd entire s=4", "GOSSIP allreduce, fp16"]
