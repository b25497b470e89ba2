"""Real runs of `train dynamic` (2-worker MPI jobs on the built-in digits): every policy writes a complete run
directory whose batches follow its rule; DBS gives a persistently slow worker a proportionally smaller batch; the
learning rate follows the global batch; a killed rank ends the job; the figures draw these runs."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest
from helpers import anytimectl, metadata, ranks_of, table
from test_cli_errors import assert_one_line_error
from test_train_runs import _wait_for_rows

from anytimectl.protocols.dynamic import DynamicProtocol
from anytimectl.runtime.launch import find_mpiexec

pytestmark = [pytest.mark.mpi, pytest.mark.slow, pytest.mark.torch]

TABLES = DynamicProtocol.columns.tables()
BACKEND = os.environ.get("ANYTIMECTL_DYNAMIC_BACKEND", "torch")
TRAIN = 1437  # digits training examples
COMMON = ["--workers", "2", "--epochs", "2", "--test-size", "50", "--log-every", "10", "--quiet",
          "--backend", BACKEND]
#: per policy: options that make its rule act within two epochs
POLICY_ARGS = {
    "static": ["--batch-size", "24"],
    "increasing": ["--batch-size", "16", "--max-batch", "64"],
    "decreasing": ["--batch-size", "32", "--min-batch", "8", "--lr-scaling", "sqrt", "--lr-schedule", "epochs",
                   "--lr-epochs-every", "1", "--lr-epochs-frac", "0.5"],
    "loss": ["--batch-size", "16", "--tolerance", "0", "--time-weight", "0", "--epochs", "3"],
    "progress": ["--batch-size", "16", "--progress-k", "3"],
    "probe": ["--batch-size", "16", "--probe-sizes", "2", "--epochs", "3"],
    "dbs": ["--batch-size", "16", "--slow", "2:3", "--window", "8", "--epochs", "3"],
}


class _Runs(dict):
    """policy -> its run directory, each run made the first time a test asks for it (so that each test's timeout
    covers one run, and `-k dbs` runs only what it needs)."""

    def __init__(self, out):
        super().__init__()
        self.out = out

    def __missing__(self, policy: str):
        anytimectl("train", "dynamic", "--policy", policy, *COMMON, *POLICY_ARGS[policy], "--out", str(self.out),
                   "--name", policy)
        self[policy] = self.out / policy
        return self[policy]


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> _Runs:
    return _Runs(tmp_path_factory.mktemp("dynamic-runs"))


def events(run) -> list[dict]:
    return [json.loads(line) for line in (run / "events.jsonl").read_text().splitlines()]


def batches_per_step(run):
    """step -> (batch of worker 1, batch of worker 2)"""
    workers = table(run, "worker_stats")
    wide = workers.pivot(index="master_step", columns="rank", values="batch_size")
    return {int(step): (int(row[1]), int(row[2])) for step, row in wide.iterrows()}


@pytest.mark.parametrize("policy", list(POLICY_ARGS))
def test_every_policy_writes_a_complete_run_directory(runs, policy):
    run = runs[policy]
    meta = metadata(run)
    assert meta["status"] == "completed", meta.get("reason")
    assert meta["method"] == "dynamic" and meta["protocol"] == "dynamic" and meta["backend"] == BACKEND
    assert meta["world_size"] == 2 and meta["config"]["workers"] == 2 and meta["config"]["policy"] == policy
    assert meta["batch_policy"]["policy"] == policy
    # the facts every training command's preparation records (train dynamic skipped them before)
    assert meta["config"]["train_examples"] == TRAIN and meta["config"]["input_shape"] == [8, 8, 1]
    assert meta["config"]["num_classes"] == 10 and meta["config"]["test_size"] == 50
    master, workers, collect = (table(run, name) for name in ("master_stats", "worker_stats", "collect_stats"))
    assert tuple(master.columns) == TABLES["master_stats"]
    assert tuple(workers.columns) == TABLES["worker_stats"]
    assert tuple(collect.columns) == TABLES["collect_stats"]
    steps = meta["summary"]["steps"]
    # no master in this method: rank 0's own figures are named for what it is
    assert meta["summary"]["rank0_bytes_sent"] > 0 and meta["summary"]["rank0_cpu_fraction"] > 0
    assert not [key for key in meta["summary"] if key.startswith("master_")]
    assert list(master.step) == list(range(1, steps + 1))
    assert len(workers) == 2 * steps and len(collect) == steps
    assert sorted(workers["rank"].unique()) == [1, 2]
    assert (workers.num_samples == workers.batch_size).all()
    assert (master.global_batch.values == workers.groupby("master_step").batch_size.sum().values).all()
    assert (collect.total_samples.values == master.global_batch.values).all()
    # an epoch is one pass over the training set by both workers together: the run stops at the first step
    # whose examples reach the --epochs asked for
    epochs = meta["config"]["epochs"]
    assert master.epoch.iloc[-1] >= epochs > master.epoch.iloc[-2]
    assert master.epoch.iloc[-1] == pytest.approx(master.global_batch.sum() / TRAIN, rel=1e-5)
    assert master.accuracy.notna().sum() >= steps // 10
    assert (run / "trace.json").is_file()
    log = events(run)
    assert log[0]["msg"] == "run started" and log[-1]["msg"] == "run completed"
    assert any(e["msg"] == "batch sizes" and e["policy"] == policy for e in log)


def test_static_keeps_its_batch(runs):
    assert set(batches_per_step(runs["static"]).values()) == {(24, 24)}
    assert not [e for e in events(runs["static"]) if e["msg"] == "batch sizes changed"]


def test_increasing_doubles_after_each_epoch_and_decreasing_halves(runs):
    for policy, first, second in (("increasing", 16, 32), ("decreasing", 32, 16)):
        per_step = batches_per_step(runs[policy])
        master = table(runs[policy], "master_stats").set_index("step")
        first_epoch_end = int(master.index[master.epoch >= 1][0])
        assert per_step[1] == (first, first) and per_step[first_epoch_end] == (first, first)
        assert per_step[first_epoch_end + 1] == (second, second)
        changed = [e for e in events(runs[policy]) if e["msg"] == "batch sizes changed"]
        assert changed[0]["step"] == first_epoch_end + 1 and changed[0]["batches"] == [second, second]


def test_loss_policy_doubles_when_the_score_falls(runs):
    # --time-weight 0 --tolerance 0: the score is the mean epoch loss, which falls from epoch 1 to 2: double
    decisions = [e for e in events(runs["loss"]) if e.get("policy") == "loss" and "period" in e]
    assert decisions[0]["msg"] == "batch sizes kept" and "first" in decisions[0]["reason"]
    assert decisions[1]["loss"] < decisions[0]["loss"]
    assert decisions[1]["msg"] == "batch sizes changed" and decisions[1]["batches"] == [32, 32]
    assert "better, double" in decisions[1]["reason"]
    assert len(decisions) == 2  # the third epoch ends the run: nothing left to decide


def test_progress_policy_doubles_after_the_first_epoch(runs):
    decisions = [e for e in events(runs["progress"]) if e["msg"] == "batch sizes changed"]
    assert decisions[0]["batches"] == [32, 32] and "P_1 = 0" in decisions[0]["reason"]


def test_probe_tries_the_sizes_then_keeps_the_fastest(runs):
    decisions = [e for e in events(runs["probe"]) if e.get("policy") == "probe" and "period" in e]
    assert decisions[0]["batches"] == [32, 32]  # after epoch 1 at 16: the next size
    assert "keep the fastest" in decisions[1]["reason"]
    assert decisions[1]["batches"] in ([16, 16], [32, 32])


def test_dbs_gives_the_slow_worker_a_proportionally_smaller_batch(runs):
    run = runs["dbs"]
    per_step = batches_per_step(run)
    assert per_step[1] == (16, 16)
    assert {sum(b) for b in per_step.values()} == {32}  # the global batch never changes
    last = [per_step[s] for s in sorted(per_step)[-20:]]
    fast = sum(b[0] for b in last) / len(last)
    slow = sum(b[1] for b in last) / len(last)
    assert slow <= 0.5 * fast  # worker 2 computes 3x slower: about a quarter of the global batch
    changed = [e for e in events(run) if e["msg"] == "batch sizes changed"]
    assert changed and changed[0]["after_step"] == 8  # --window 8
    # re-balancing evens out the compute: the fast worker waits less for the slow one than under a static split
    workers = table(run, "worker_stats")
    early = workers[(workers["rank"] == 1) & (workers.master_step.between(2, 8))].master_wait_time.mean()
    late = workers[(workers["rank"] == 1) & (workers.master_step > workers.master_step.max() - 20)]
    assert late.master_wait_time.mean() < early


@pytest.mark.parametrize("policy", ["increasing", "dbs"])
def test_learning_rate_follows_the_global_batch(runs, policy):
    master = table(runs[policy], "master_stats")
    base = metadata(runs[policy])["config"]["learning_rate"]
    start = master.global_batch.iloc[0]
    assert master.learning_rate.values == pytest.approx(base * master.global_batch.values / start, rel=1e-5)
    changes = [e for e in events(runs[policy]) if e["msg"] == "learning rate changed"]
    if policy == "increasing":
        assert changes and changes[0]["learning_rate"] == pytest.approx(2 * base)


def test_sqrt_scaling_and_an_explicit_schedule_multiply(runs):
    run = runs["decreasing"]
    master = table(run, "master_stats")
    base = metadata(run)["config"]["learning_rate"]
    # the schedule halves the rate each epoch (of the epochs before the step), the halved batch multiplies it by
    # sqrt(1/2)
    previous_epoch = master.epoch.shift(1, fill_value=0.0)
    expected = base * 0.5 ** (previous_epoch // 1) * (master.global_batch / 64) ** 0.5
    assert master.learning_rate.values == pytest.approx(expected.values, rel=1e-5)
    assert master.global_batch.iloc[-1] == 32


def test_figures_draw_a_dynamic_run(runs, tmp_path):
    result = anytimectl("plot", str(runs["dbs"]), "--type", "batch_size", "--out", str(tmp_path))
    assert (tmp_path / "batch_size__dbs.png").stat().st_size > 10_000, result.stdout
    anytimectl("plot", str(runs["dbs"]), str(runs["static"]), "--out", str(tmp_path))
    assert list(tmp_path.glob("panel_main__*.png"))


@pytest.mark.parametrize(("args", "fragments"), [
    (["--policy", "greedy"], ["--policy", "'greedy'"]),
    (["--policy", "increasing", "--batch-size", "256"], ["--batch-size 256", "--max-batch 128"]),
    (["--policy", "increasing", "--min-batch", "64", "--max-batch", "32"], ["--min-batch 64"]),
    (["--workers", "2", "--batch-size", "1000"], ["1000 x 2 workers", "1437"]),
    (["--workers", "2", "--slow", "3:2"], ["worker 3", "1..2"]),
    (["--backend", "tensorflow", "--transport", "torch"], ["--transport torch", "--backend torch"]),
    (["--dataset", "iris", "--resize", "32"], ["--resize", "image"]),
    (["--channels", "2"], ["--channels 2"]),
    (["--normalize", "imagenet"], ["--normalize imagenet", "--channels 3"]),
    (["--window", "0"], ["--window"]),
    (["--lr-scaling", "cubic"], ["--lr-scaling", "'cubic'"]),
])
def test_bad_input_is_one_line_and_exit_2(args, fragments, tmp_path):
    result = anytimectl("train", "dynamic", *args, "--out", str(tmp_path), check=False, timeout=60)
    assert_one_line_error(result, *fragments)
    assert not list(tmp_path.iterdir())


def test_more_workers_than_memory_holds_are_refused_before_launch(tmp_path):
    """The memory guard every training command runs: without it the job would start the ranks and swap."""
    from anytimectl.cli.commands.common import RANK_MEMORY_BYTES
    from anytimectl.studies import available_memory

    available = available_memory()
    if available is None:
        pytest.skip("this system does not say how much memory is free")
    workers = 2 * (available // RANK_MEMORY_BYTES["torch"]) + 2  # twice what fits, whatever the others free
    if workers > TRAIN:
        pytest.skip(f"{workers} workers would outnumber the {TRAIN} digits")
    result = anytimectl("train", "dynamic", "--workers", str(workers), "--batch-size", "1", "--backend", "torch",
                        "--out", str(tmp_path), check=False, timeout=60)
    assert_one_line_error(result, f"--workers {workers}", "GiB", "start at most")
    assert not list(tmp_path.iterdir())


def test_a_batch_larger_than_memory_is_refused_before_launch(tmp_path):
    result = anytimectl("train", "dynamic", "--workers", "2", "--batch-size", "1000000000000", "--out", str(tmp_path),
                        check=False, timeout=60)
    assert_one_line_error(result, "--batch-size 1000000000000", "memory available")
    assert not list(tmp_path.iterdir())


def test_gpu_master_is_refused_by_a_job_without_a_master(tmp_path):
    """Found by the ranks themselves (under the user's mpiexec nothing checks before launch): one line, exit 2."""
    result = subprocess.run([find_mpiexec(), "-n", "2", sys.executable, "-m", "anytimectl", "train", "dynamic",
                             "--device", "gpu-master", "--epochs", "1", "--out", str(tmp_path)],
                            capture_output=True, text=True, timeout=120, stdin=subprocess.DEVNULL)
    assert_one_line_error(result, "--device gpu-master", "no master")
    assert not list(tmp_path.iterdir())


def test_killed_rank_ends_the_job_and_marks_the_run_failed(tmp_path):
    marker = str(os.getpid() + 1_000_000)
    process = subprocess.Popen(
        [sys.executable, "-m", "anytimectl", "train", "dynamic", "--workers", "2", "--epochs", "1000", "--out",
         str(tmp_path), "--name", "victim", "--quiet", "--batch-size", "16", "--backend", BACKEND],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True,
        env={**os.environ, "ANYTIMECTL_TEST_PARENT": marker})
    run = tmp_path / "victim"
    try:
        _wait_for_rows(run / "worker_stats.csv", 10, process)
        ranks = ranks_of(int(marker))
        assert 1 in ranks, ranks
        os.kill(ranks[1], signal.SIGKILL)
        killed_at = time.time()
        process.wait(timeout=60)
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
    assert time.time() - killed_at < 15
    assert process.returncode != 0
    meta = metadata(run)
    assert meta["status"] == "failed" and "exit code" in meta["reason"]
    master, workers = table(run, "master_stats"), table(run, "worker_stats")
    assert len(master) >= 5 and list(master.step) == list(range(1, len(master) + 1))
    assert len(workers) >= 10 and workers.batch_size.notna().all()


def test_the_torch_transport_trains_exactly_as_mpi_does(runs, tmp_path):
    """gloo's all-reduce of two ranks adds the same two numbers as MPI's: the same losses, the same bytes a step."""
    anytimectl("train", "dynamic", "--policy", "static", *COMMON, *POLICY_ARGS["static"], "--steps", "10",
               "--transport", "torch", "--out", str(tmp_path), "--name", "gloo")
    meta = metadata(tmp_path / "gloo")
    assert meta["status"] == "completed" and meta["batch_policy"]["transport"] == "torch"
    over_gloo, over_mpi = table(tmp_path / "gloo", "master_stats"), table(runs["static"], "master_stats")
    assert len(over_gloo) == 10
    assert over_gloo.loss.values == pytest.approx(over_mpi.loss.values[:10], rel=1e-5)
    workers_gloo, workers_mpi = table(tmp_path / "gloo", "worker_stats"), table(runs["static"], "worker_stats")
    first = workers_mpi[workers_mpi.master_step <= 10]
    for column in ("bytes_sent", "bytes_recv"):  # every step's all-reduce moves the same bytes, counted alike
        per_step_gloo = workers_gloo.groupby("rank")[column].diff().dropna().values
        per_step_mpi = first.groupby("rank")[column].diff().dropna().values
        assert (per_step_gloo == per_step_mpi).all() and (per_step_gloo > 0).all()
