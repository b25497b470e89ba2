"""Real `train gossip` runs through the command line (MPI jobs of 2-3 ranks on the built-in digits data): the
tables a run writes, partner sets that agree between partners and follow the shared derivation, identical results
for the same seed, and checkpoints that a resumed run continues exactly."""

from __future__ import annotations

import io
import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pandas as pd
import pytest
from helpers import REPO, anytimectl, metadata, table

from anytimectl.protocols.gossip import GossipProtocol
from anytimectl.protocols.gossip_schedule import GossipSchedule

pytestmark = [pytest.mark.mpi, pytest.mark.slow, pytest.mark.torch]

COMMON = ("--test-size", "100", "--log-every", "5", "--quiet")
WORKER_COLUMNS = GossipProtocol.columns.tables()["worker_stats"]


def _partners(cell) -> set[int]:
    return set() if pd.isna(cell) or str(cell).strip() == "" else {int(w) for w in str(cell).split()}


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    out = tmp_path_factory.mktemp("gossip-runs")

    def run(name: str, *args: str) -> None:
        anytimectl("train", "gossip", *args, "--out", str(out), "--name", name, *COMMON)

    run("elastic", "--workers", "3", "--method", "elastic", "--agg-prob", "0.5", "--steps", "20", "--seed", "4")
    run("a", "--workers", "2", "--method", "gossip", "--agg-prob", "0.5", "--steps", "12")
    run("b", "--workers", "2", "--method", "gossip", "--agg-prob", "0.5", "--steps", "6", "--checkpoint-every", "3")
    anytimectl("train", "gossip", "--resume", str(out / "b"), "--steps", "12", "--quiet")
    run("allreduce", "--workers", "2", "--method", "gradAllReduce", "--steps", "10")
    run("local", "--workers", "1", "--method", "elastic", "--steps", "10")
    return out


def test_an_elastic_run_writes_partners_bytes_and_validation(runs):
    run = runs / "elastic"
    meta = metadata(run)
    assert meta["status"] == "completed" and meta["world_size"] == 3 and meta["gossip"]["lag"] == 16
    assert meta["gossip"]["rule"] == meta["config"]["rule"] == "elastic"
    assert "torch" in meta["versions"] and "mpi4py" in meta["versions"]
    assert meta["config"]["rule"] == "elastic" and meta["config"]["batch_size"] == 64 // 3 \
        and meta["config"]["global_batch_size"] == 64
    workers = table(run, "worker_stats")
    assert tuple(workers.columns) == WORKER_COLUMNS
    assert len(workers) == 3 * 20 and sorted(workers["rank"].unique()) == [1, 2, 3]
    schedule = GossipSchedule.create(3, seed=4, prob=0.5)
    for step, rows in workers.groupby("master_step"):
        partners = {int(r["rank"]): _partners(r["partners"]) for _, r in rows.iterrows()}
        for worker, theirs in partners.items():
            assert worker not in theirs
            for other in theirs:  # j is i's partner exactly when i is j's
                assert worker in partners[other]
            # what the rank did is what the shared generator says, derived here again from (seed, update)
            assert theirs == {p + 1 for p in schedule.partners(int(step), worker - 1)}
            assert len(theirs) == int(rows[rows["rank"] == worker]["partner_count"].iloc[0])
    assert (workers["partner_count"] > 0).any()
    evaluated = workers.dropna(subset=["val_accuracy"])
    assert sorted(evaluated["master_step"].unique()) == [5, 10, 15, 20]
    assert evaluated["val_accuracy"].between(0, 1).all()
    for _, per_rank in workers.groupby("rank"):
        assert per_rank["bytes_sent"].is_monotonic_increasing
    summary = meta["summary"]
    assert 0 <= summary["agg_test_accuracy"] <= 1
    assert set(summary["test_accuracy_per_worker"]) == {"1", "2", "3"}
    assert summary["bytes_sent_per_update"] > 0 and summary["test_examples"] == 100
    events = [json.loads(line) for line in (run / "events.jsonl").read_text().splitlines()]
    rounds = [e for e in events if e["msg"] == "gossip round"]
    assert rounds and all(i != p for e in rounds for i, p in e["chose"])
    assert sum(e["msg"] == "final test" for e in events) == 3
    assert any(e["msg"] == "averaged model tested" for e in events)


def test_allreduce_keeps_every_worker_on_the_same_model(runs):
    workers = table(runs / "allreduce", "worker_stats").dropna(subset=["val_accuracy"])
    assert len(workers) == 2 * 2  # steps 5 and 10, two workers
    for _, rows in workers.groupby("master_step"):
        assert rows["val_loss"].nunique() == 1  # identical models give identical validation losses
    summary = metadata(runs / "allreduce")["summary"]
    assert summary["gossip_rule"] == "allreduce"
    assert summary["test_accuracy_per_worker"]["1"] == summary["test_accuracy_per_worker"]["2"]
    assert abs(summary["agg_test_accuracy"] - summary["test_accuracy_per_worker"]["1"]) < 1e-9


def test_one_worker_trains_locally(runs):
    meta = metadata(runs / "local")
    assert meta["world_size"] == 1 and meta["config"]["rule"] == meta["gossip"]["rule"] == "local"
    assert meta["summary"]["steps"] == 10 and meta["summary"]["bytes_sent_per_update"] == 0


def test_a_resumed_run_continues_exactly_where_its_checkpoint_left_it(runs):
    a, b = runs / "a", runs / "b"
    meta = metadata(b)
    assert meta["status"] == "completed" and meta["summary"]["steps"] == 12
    assert len(meta["resumes"]) == 1 and meta["resumes"][0]["from_step"] == 6
    master_a, master_b = table(a, "master_stats"), table(b, "master_stats")
    assert master_b["step"].tolist() == list(range(1, 13))  # continued, appended, no step twice
    assert master_b["time"].is_monotonic_increasing
    # the same seed gives the same run, and the checkpoint carried everything: model, momentum, data position,
    # the counters; gossip partners and delays follow from (seed, step)
    assert np.array_equal(master_a["loss"].to_numpy(), master_b["loss"].to_numpy())
    evaluated = master_a["accuracy"].notna().to_numpy()  # b also evaluated step 6, the first job's last
    assert np.array_equal(master_a["accuracy"][evaluated], master_b["accuracy"][evaluated])
    assert master_b["accuracy"].notna().tolist() == [s in (5, 6, 10, 12) for s in range(1, 13)]
    workers_a, workers_b = table(a, "worker_stats"), table(b, "worker_stats")
    assert workers_b["master_step"].tolist() == workers_a["master_step"].tolist()
    for column in ("partners", "val_loss", "bytes_sent", "bytes_recv"):
        assert workers_a[column].equals(workers_b[column]), column
    assert meta["summary"]["agg_test_accuracy"] == metadata(a)["summary"]["agg_test_accuracy"]
    steps = sorted(int(p.name.split("-")[1]) for p in (b / "checkpoints").iterdir())
    assert steps == [9, 12]  # --keep-checkpoints 2
    events = [json.loads(line)["msg"] for line in (b / "events.jsonl").read_text().splitlines()]
    assert events.count("resumed") == 1 and events.count("run completed") == 2


def test_runs_show_tells_a_resumed_run_s_segments_and_runs_lists_each_gossip_variant(runs):
    account = json.loads(anytimectl("runs", "show", str(runs / "b"), "--format", "json").stdout)
    first, second = account["segments"]
    assert (first["from_step"], first["status"], second["from_step"], second["status"]) == (0, "completed", 6,
                                                                                             "completed")
    assert second["argv"][:2] == ["train", "gossip"] and "--resume" in second["argv"]
    assert account["figures"]["steps"] == 12
    listed = pd.read_csv(io.StringIO(anytimectl("runs", str(runs), "--format", "csv").stdout))
    variants = dict(zip(listed["name"], listed["variant"], strict=True))
    assert variants["elastic"] == "elastic p=1/2" and variants["a"] == "gossip p=1/2"
    assert set(listed["method"]) == {"gossip"} and set(listed["status"]) == {"completed"}
    assert (listed["bytes_sent"] > 0).sum() == 4  # the local run sends nothing


def test_resume_refuses_a_run_that_already_ended_and_other_options(runs):
    ended = anytimectl("train", "gossip", "--resume", str(runs / "b"), check=False)
    assert ended.returncode == 2 and "give a larger --steps" in ended.stderr
    changed = anytimectl("train", "gossip", "--resume", str(runs / "b"), "--steps", "20", "--method", "allreduce",
                         check=False)
    assert changed.returncode == 2 and "--method cannot change" in changed.stderr
    none = anytimectl("train", "gossip", "--resume", str(runs / "a"), "--steps", "20", check=False)
    assert none.returncode == 2 and "no complete checkpoint" in none.stderr


def test_an_interrupted_run_saves_its_last_step_and_resumes_from_it(tmp_path):
    """Ctrl-C stops every rank at one agreed step; the checkpoint of that step lets the run go on from it."""
    args = [sys.executable, "-m", "anytimectl", "train", "gossip", "--workers", "2", "--steps", "100000",
            "--checkpoint-every", "100000", "--out", str(tmp_path), "--name", "i", *COMMON]
    process = subprocess.Popen(args, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                               env={**os.environ}, start_new_session=True)
    run = tmp_path / "i"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:  # until the run has steps on disk
        if (run / "master_stats.csv").is_file() and len((run / "master_stats.csv").read_text().splitlines()) > 30:
            break
        time.sleep(0.2)
    process.send_signal(signal.SIGINT)
    _, stderr = process.communicate(timeout=120)
    assert process.returncode == 130, stderr[-2000:]
    meta = metadata(run)
    assert meta["status"] == "interrupted"
    stopped = meta["summary"]["steps"]
    assert [p.name for p in (run / "checkpoints").iterdir()] == [f"step-{stopped}"]
    anytimectl("train", "gossip", "--resume", str(run), "--steps", str(stopped + 5), "--quiet")
    master = table(run, "master_stats")
    assert master["step"].tolist() == list(range(1, stopped + 6))
    assert metadata(run)["status"] == "completed"


@pytest.mark.parametrize("kind", ["gossip", "accuracy_vs_bytes", "accuracy_spread"])
def test_gossip_figures_draw_from_the_runs(runs, tmp_path, kind):
    result = anytimectl("plot", str(runs / "elastic"), str(runs / "a"), str(runs / "allreduce"), "--type", kind,
                        "--out", str(tmp_path))
    written = [line for line in result.stdout.splitlines() if line.endswith(".png")]
    assert len(written) == 1 and (tmp_path / written[0].rsplit("/", 1)[-1]).stat().st_size > 10_000
    if kind != "accuracy_spread":
        assert "elastic p=1/2: accuracy" in result.stdout and "allreduce: accuracy" in result.stdout
    else:
        assert "over 3 workers" in result.stdout
