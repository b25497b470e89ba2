"""The simulated backend (`--backend sim`): its engine meets the flat-buffer contract with sleeps and a synthetic
curve, and runs through the real run shell (no framework imported, real MPI jobs, real tables)."""

from __future__ import annotations

import json
import math
import subprocess
import sys
import time

import numpy as np
import pytest
from helpers import anytimectl, anytimectl_each, metadata, selected_argvs, table

from anytimectl.backends import EngineSpec, create_engine
from anytimectl.backends.sim import Curve, synthetic_dataset
from anytimectl.backends.sim.engine import SimEngine
from anytimectl.runtime.errors import UsageError

pytestmark = pytest.mark.mpi

EXAMPLE = 0.002


def engine(params: int = 100, example_time: float = EXAMPLE) -> SimEngine:
    return SimEngine(params, example_time, learning_rate=0.1, weight_decay=0.0, seed=3)


def test_the_registry_builds_it_from_the_spec_options():
    spec = EngineSpec("sim", (1,), 10, "rms", 0.01, 5e-4, options={"params": 50, "example_time": 0.0,
                                                                 "half_examples": 1000})
    built = create_engine("sim", spec)
    assert built.param_count == 50 and built.example_time == 0.0 and built.curve.half == 1000


def test_building_it_imports_no_framework():
    """In a fresh interpreter: the rest of the suite has TensorFlow loaded in this one."""
    probe = ("import sys; from anytimectl.backends import EngineSpec, create_engine; "
             "create_engine('sim', EngineSpec('sim', (1,), 10, 'rms', 0.01, 5e-4, options={'params': 50})); "
             "print(sorted({'tensorflow', 'torch'} & set(sys.modules)))")
    result = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=120, check=True)
    assert result.stdout.strip() == "[]"


def test_contribution_buffer_follows_the_engine_contract():
    sim = engine(params=10)
    data = synthetic_dataset(100)
    out, examples, done = sim.compute(data.x_train[:12], data.y_train[:12], 3, math.inf)
    assert out.dtype == np.float32 and out.shape == (sim.param_count + 2,)
    assert (examples, done) == (12, 3) and out[-2] == 12
    assert out[-1] == pytest.approx(12 * Curve().loss(0), rel=0.5)  # 12 x the curve's loss, with noise
    np.testing.assert_allclose(out[:8], sim.get_params()[:8] * 12, rtol=1e-6)  # the weights' "gradient"
    assert not out[8:10].any()  # the progress slots take no gradient


def test_compute_sleeps_per_example_and_honours_the_deadline():
    sim = engine()
    data = synthetic_dataset(400)
    start = time.time()
    _, examples, done = sim.compute(data.x_train[:40], data.y_train[:40], 4, math.inf)
    assert time.time() - start >= 40 * EXAMPLE and (examples, done) == (40, 4)
    start = time.time()
    _, examples, done = sim.compute(data.x_train[:400], data.y_train[:400], 40, start + 0.05)
    elapsed = time.time() - start
    assert 0 < done < 40 and examples == done * 10
    assert elapsed <= 0.05 + 0.015  # a micro-batch starts only if it can end in time (a little scheduling slack)
    _, examples, done = sim.compute(data.x_train[:40], data.y_train[:40], 4, time.time() - 1)
    assert (examples, done) == (10, 1)  # at least one always runs


def test_apply_counts_the_examples_and_the_curve_follows_them():
    sim = engine()
    reduced = np.zeros(sim.param_count + 2, dtype=np.float32)
    reduced[-2], reduced[-1] = 30_000, 30_000 * 1.5
    assert sim.apply(reduced, 0.1) == pytest.approx(1.5)
    assert sim.progress == 30_000
    sim.apply(reduced, 0.1)
    assert sim.progress == 60_000
    losses = [sim.evaluate(np.zeros((10_000, 1), np.float32), None)[0] for _ in range(2)]
    assert losses[0] == losses[1]  # seeded: the same model evaluates the same
    curve = sim.curve
    assert losses[0] == pytest.approx(curve.loss(60_000), rel=0.05)
    assert curve.loss(0) == pytest.approx(math.log(10)) and curve.loss(curve.half) == pytest.approx(
        (curve.loss_start + curve.loss_end) / 2)
    assert curve.accuracy(0) == pytest.approx(0.1) and curve.accuracy(1e12) == pytest.approx(curve.acc_end, abs=1e-6)


def test_progress_travels_with_the_parameters_exactly():
    sim, other = engine(), engine()
    reduced = np.zeros(sim.param_count + 2, dtype=np.float32)
    reduced[-2] = (1 << 23) + 3  # one step's count is exact in float32; the total goes beyond 2^24
    sim.apply(reduced, 0.1)
    sim.apply(reduced, 0.1)
    other.set_params(sim.get_params())
    assert other.progress == (1 << 24) + 6  # kept as two exact halves


def test_between_swaps_in_a_new_model_and_the_gradient_follows_each_model():
    sim = engine(params=6, example_time=0.0)
    data = synthetic_dataset(40)
    newer = sim.get_params()
    newer[:4] = 10.0
    calls = []

    def between():
        calls.append(len(calls))
        if len(calls) == 1:
            sim.set_params(newer)

    old = sim.get_params()[:4].copy()
    out, examples, done = sim.compute(data.x_train[:8], data.y_train[:8], 4, math.inf, between=between)
    assert (examples, done) == (8, 4) and calls == [0, 1, 2]
    np.testing.assert_allclose(out[:4], old * 2 + 10.0 * 6, rtol=1e-6)  # 2 examples on the old model, 6 on the new


def test_bad_sizes_are_usage_errors():
    with pytest.raises(UsageError):
        SimEngine(2, 0.001, 0.1, 0.0)


# --- through the command line ---------------------------------------------------------------------------------
def test_a_sim_run_imports_no_framework(tmp_path):
    code = ("import sys\nfrom anytimectl.cli.app import main\nargv = ['train', 'amb', '--backend', "
            f"'sim', '--workers', '0', '--steps', '3', '--out', {str(tmp_path)!r}, '--quiet', "
            "'--sim-example-time', '0.0005']\n"
            "try:\n    main(argv)\nexcept SystemExit:\n    pass\n"
            "print('tensorflow' in sys.modules, 'torch' in sys.modules)")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip().splitlines()[-1] == "False False"


@pytest.mark.parametrize("method", ["amb", "fmb"])
def test_sim_job_writes_the_documented_tables(tmp_path, method):
    result = anytimectl("train", method, "--backend", "sim", "--workers", "3", "--steps", "8", "--induce",
                        "niagara:0.02", "--sim-example-time", "0.0005", "--sim-params", "5000", "--out",
                        str(tmp_path), "--name", "run", "--json")
    summary = json.loads(result.stdout)
    run = tmp_path / "run"
    meta = metadata(run)
    assert meta["status"] == "completed" and meta["backend"] == "sim" and meta["world_size"] == 4
    assert meta["config"]["dataset"] == "sim" and meta["versions"]["sim"]
    assert summary["replicated_updates"] and summary["shared_memory"]
    workers = table(run, "worker_stats")
    assert sorted(workers["rank"].unique()) == [1, 2, 3] and len(workers) == 3 * 8
    master = table(run, "master_stats")
    assert list(master.step) == list(range(1, 9))
    assert master.loss.iloc[-1] < master.loss.iloc[0]  # the synthetic curve goes down with the examples
    assert summary["master_bytes_sent"] >= 8 * 3 * 5000 * 4  # the parameters' bytes really moved
    if method == "fmb":
        assert (workers.num_samples == 128).all()


@pytest.mark.slow
def test_many_sim_workers_on_a_small_machine(tmp_path):
    anytimectl("train", "fmb", "--backend", "sim", "--workers", "16", "--steps", "4", "--batch-size", "16",
               "--sim-example-time", "0.001", "--out", str(tmp_path), "--name", "many", "--quiet")
    workers = table(tmp_path / "many", "worker_stats")
    assert sorted(workers["rank"].unique()) == list(range(1, 17)) and len(workers) == 16 * 4


@pytest.fixture(scope="module")
def bad_option_results(request, tmp_path_factory):
    """Each selected case's real CLI in a fresh interpreter, started two at a time (helpers.anytimectl_each)."""
    out = tmp_path_factory.mktemp("bad-options")
    return out, anytimectl_each(selected_argvs(request, {
        "test_bad_sim_and_protocol_options_are_one_line_errors": lambda args, **_: ("train", "fmb", "--out", str(out),
                                                                                     *args)}))


@pytest.mark.parametrize("args, message", [
    (["--backend", "tensorflow", "--sim-params", "10"], "--sim-params applies to --backend sim only"),
    (["--backend", "sim", "--dataset", "iris"], "--backend sim trains on no data"),
    (["--backend", "sim", "--device", "gpu", "--gpus-per-node", "1"], "sim backend computes nothing"),
    (["--backend", "sim", "--workers", "8", "--sim-examples", "4"], "--sim-examples"),
    (["--async-batch-min", "3"], "applies to --protocol async only"),
    (["--protocol", "async", "--workers", "0"], "--protocol async needs workers"),
])
def test_bad_sim_and_protocol_options_are_one_line_errors(bad_option_results, args, message):
    out, result = bad_option_results
    result = result[("train", "fmb", "--out", str(out), *args)]
    assert result.returncode == 2, result.stderr
    assert message in result.stderr and "Traceback" not in result.stderr


def test_state_round_trip_continues_exactly_and_another_size_is_refused():
    engine = SimEngine(64, 0.0, 0.1, 0.01, seed=3)
    x = np.arange(16, dtype=np.float32).reshape(16, 1)
    y = np.zeros(16, dtype=np.int64)

    def step(e: SimEngine) -> tuple[np.ndarray, float]:
        flat, _, _ = e.compute(x, y, 2, math.inf)
        return e.get_params(), e.apply(flat, 0.1)

    step(engine)
    saved = engine.state()
    expected = step(engine)
    other = SimEngine(64, 0.0, 0.1, 0.01, seed=3)
    other.load_state(saved)
    got = step(other)
    np.testing.assert_array_equal(got[0], expected[0])
    assert got[1] == expected[1]
    with pytest.raises(ValueError, match="--sim-params"):
        SimEngine(65, 0.0, 0.1, 0.01).load_state(saved)


def test_one_process_run_resumes_exactly_from_its_checkpoint(tmp_path):
    """`--workers 0` (master and worker in one process): a run of 6 steps with a checkpoint at 3, continued to 10
    with --resume, has the losses and the final model of a straight run of 10 (tests/test_amb_fmb_checkpoints.py
    has the MPI jobs, the kill -9 and the asynchronous protocol)."""
    from anytimectl.runtime import checkpoints
    common = ["train", "fmb", "--backend", "sim", "--workers", "0", "--seed", "3", "--batch-size", "16",
              "--sim-example-time", "0", "--sim-half-examples", "100", "--out", str(tmp_path), "--quiet"]
    anytimectl(*common, "--steps", "10", "--checkpoint-every", "10", "--name", "straight")
    anytimectl(*common, "--steps", "6", "--checkpoint-every", "3", "--name", "resumed")
    anytimectl("train", "fmb", "--resume", str(tmp_path / "resumed"), "--steps", "10", "--quiet")
    a, b = table(tmp_path / "straight", "master_stats"), table(tmp_path / "resumed", "master_stats")
    assert b["step"].tolist() == list(range(1, 11)) and a["loss"].tolist() == b["loss"].tolist()
    assert metadata(tmp_path / "resumed")["resumes"][0]["from_step"] == 6

    def final(run):
        point = checkpoints.latest(tmp_path / run)
        assert point.step == 10
        return checkpoints.load_rank(point, 0)

    x, y = final("straight"), final("resumed")
    assert np.array_equal(x["engine"]["params"], y["engine"]["params"])
    assert x["worker"] == y["worker"] and x["master"] == y["master"]
