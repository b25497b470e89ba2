"""`anytimectl runs export --tensorboard`: event files that TensorBoard's own reader reads back, written by a
process that imports neither TensorFlow nor torch."""

from __future__ import annotations

import subprocess
import sys

import pytest
from helpers import anytimectl, table

pytestmark = pytest.mark.mpi  # reads the session's sim runs (MPI jobs)


def test_exported_scalars_read_back_with_tensorboards_reader(sim_runs, tmp_path):
    logdir = tmp_path / "tb"
    result = subprocess.run([sys.executable, "-X", "importtime", "-m", "anytimectl", "runs", "export",
                             str(sim_runs), "--tensorboard", str(logdir)], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    imported = {line.rsplit("|", 1)[-1].strip().split(".")[0] for line in result.stderr.splitlines() if "|" in line}
    assert "tensorboard" in imported and not imported & {"tensorflow", "torch"}
    files = result.stdout.split()
    assert len(files) == 5 and all("/tfevents" not in f and ".tfevents." in f for f in files)

    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    run = sim_runs / "amb" / "amb-s0"
    events = EventAccumulator(str(logdir / "amb-s0"))
    events.Reload()
    tags = set(events.Tags()["scalars"])
    assert {"train/loss", "train/learning_rate", "test/accuracy", "workers/1/compute_s", "workers/2/idle_s",
            "workers/2/bytes_sent"} <= tags
    master = table(run, "master_stats")
    evaluated = master.dropna(subset=["accuracy"])
    accuracy = events.Scalars("test/accuracy")
    assert [e.step for e in accuracy] == evaluated["step"].tolist()
    assert [e.value for e in accuracy] == pytest.approx(evaluated["accuracy"].tolist(), rel=1e-5)
    assert [e.value for e in events.Scalars("train/loss")] == pytest.approx(master["loss"].tolist(), rel=1e-5)
    # the run's clock: wall time = start + the row's time
    times = [e.wall_time for e in events.Scalars("train/loss")]
    assert [t - times[0] for t in times] == pytest.approx((master["time"] - master["time"].iloc[0]).tolist(),
                                                          abs=1e-3)
    workers = table(run, "worker_stats")
    compute = workers[workers["rank"] == 1]["compute_time"].tolist()
    assert [e.value for e in events.Scalars("workers/1/compute_s")] == pytest.approx(compute, rel=1e-5)


def test_export_needs_a_destination_and_training_runs(sim_runs, tmp_path):
    missing = anytimectl("runs", "export", str(sim_runs), check=False)
    assert missing.returncode == 2 and "--tensorboard DIR" in missing.stderr and missing.stdout == ""
    (tmp_path / "file").write_text("")
    not_a_folder = anytimectl("runs", "export", str(sim_runs), "--tensorboard", str(tmp_path / "file"), check=False)
    assert not_a_folder.returncode == 2 and "is not a folder" in not_a_folder.stderr


@pytest.mark.parametrize("asked_by", ["option", "environment"])
def test_a_run_writes_its_scalars_for_tensorboard_as_it_goes(tmp_path, asked_by):
    logdir = tmp_path / "tb"
    option = ["--tensorboard", str(logdir)] if asked_by == "option" else []
    environment = {"ANYTIMECTL_TENSORBOARD": str(logdir)} if asked_by == "environment" else None
    anytimectl("train", "fmb", "--backend", "sim", "--workers", "2", "--steps", "5", "--out", str(tmp_path),
               "--name", "live", "--quiet", *option, env=environment)
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(logdir / "live"))
    events.Reload()
    master = table(tmp_path / "live", "master_stats")
    assert [e.step for e in events.Scalars("train/loss")] == master["step"].tolist()
    assert [e.value for e in events.Scalars("train/loss")] == pytest.approx(master["loss"].tolist(), rel=1e-5)
    accuracy = master.dropna(subset=["accuracy"])
    assert [e.value for e in events.Scalars("test/accuracy")] == pytest.approx(accuracy["accuracy"].tolist(), rel=1e-5)
    workers = table(tmp_path / "live", "worker_stats")
    for worker in (1, 2):
        mine = workers[workers["rank"] == worker]
        assert [e.value for e in events.Scalars(f"workers/{worker}/compute_s")] == pytest.approx(
            mine["compute_time"].tolist(), rel=1e-5)
        assert [e.value for e in events.Scalars(f"workers/{worker}/bytes_sent")] == mine["bytes_sent"].tolist()
