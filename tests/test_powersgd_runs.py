"""PowerSGD through the real command line, in every method that takes a gradient exchange: `compress train`,
`train dynamic` and `train gossip --method allreduce`, each with 2 workers on the built-in digits; the bytes each
rank moves per step are what the low-rank factors and the uncompressed tensors add up to; bad options are one
line and exit 2."""

from __future__ import annotations

import json

import pytest
from helpers import anytimectl, anytimectl_each, metadata, selected_argvs, table
from test_cli_errors import assert_one_line_error

pytestmark = [pytest.mark.mpi, pytest.mark.slow]
COMMON = ["--workers", "2", "--test-size", "50", "--json"]


def _floats_per_step(compression: dict) -> int:
    """P's, Q's and the uncompressed tensors, from the tensor sizes and the matrices the run compressed: each
    n x m matrix of rank r travels as (n + m) r floats, every other tensor whole."""
    matrices = compression["matrices"]
    rate, rank = compression["min_compression_rate"], compression["rank"]
    for n, m, r in matrices:
        assert r == min(n, m, rank) and (n + m) * r * rate < n * m  # torch's rule for compressing
    return (sum(compression["tensor_sizes"]) - sum(n * m for n, m, _ in matrices)
            + sum((n + m) * r for n, m, r in matrices))


def _check_bytes(run, start: int) -> dict:
    """Every worker's row: the dense gradient before --powersgd-start-iter, the factors after; the bytes it sent
    and received in a step are that payload plus the float32 remainder (all-reduce: handed over once, obtained
    once); master_stats has both workers' payloads."""
    meta = metadata(run)
    compression = meta["compression"]
    assert compression["compressor"] == "powersgd" and compression["pattern"] == "all-reduce"
    trainable = compression["trainable_parameters"]
    floats = _floats_per_step(compression)
    assert floats < trainable / 10 and compression["floats_per_step"] == floats
    workers = table(run, "worker_stats")
    for _, rows in workers.groupby("rank"):
        rows = rows.sort_values("master_step")
        expected = [4 * (trainable if step < start else floats) for step in rows.master_step]
        assert rows.payload_bytes.tolist() == expected
        assert (rows.dense_bytes == 4 * trainable).all()
        sent, received = rows.bytes_sent.diff().iloc[1:], rows.bytes_recv.diff().iloc[1:]
        assert (sent == rows.payload_bytes.iloc[1:] + rows.extra_bytes.iloc[1:]).all()
        assert (received == sent).all()
    master = table(run, "master_stats").sort_values("step")
    assert (master.payload_bytes_total == 2 * workers.groupby("master_step").payload_bytes.first().values).all()
    return meta


@pytest.mark.torch
def test_compress_train_with_powersgd_sends_the_factors_after_its_start_iteration(tmp_path):
    result = anytimectl("compress", "train", "--compressor", "powersgd", "--rank", "2", "--powersgd-start-iter", "2",
                        "--steps", "6", "--log-every", "3", *COMMON, "--out", str(tmp_path), "--name", "c")
    summary = json.loads(result.stdout.strip().splitlines()[-1])
    assert summary["status"] == "completed" and summary["error_feedback"] is True
    meta = _check_bytes(tmp_path / "c", start=2)
    assert meta["compression"]["warm_start"] is True and meta["compression"]["start_iter"] == 2
    assert meta["config"]["powersgd_rank"] == 2


@pytest.mark.torch
def test_train_dynamic_takes_powersgd_as_its_exchange(tmp_path):
    result = anytimectl("train", "dynamic", "--policy", "static", "--batch-size", "24", "--backend", "torch",
                        "--compressor", "powersgd", "--rank", "1", "--no-warm-start", "--no-error-feedback",
                        "--steps", "5", "--log-every", "5", *COMMON, "--out", str(tmp_path), "--name", "d")
    summary = json.loads(result.stdout.strip().splitlines()[-1])
    assert summary["status"] == "completed" and summary["compression"]["error_feedback"] is False
    meta = _check_bytes(tmp_path / "d", start=0)
    assert meta["compression"]["rank"] == 1 and meta["compression"]["warm_start"] is False


@pytest.mark.torch
def test_gossip_allreduce_takes_powersgd_and_keeps_the_workers_on_one_model(tmp_path):
    result = anytimectl("train", "gossip", "--method", "allreduce", "--compressor", "powersgd",
                        "--min-compression-rate", "4", "--steps", "5", "--log-every", "5", *COMMON,
                        "--out", str(tmp_path), "--name", "g")
    summary = json.loads(result.stdout.strip().splitlines()[-1])
    assert summary["status"] == "completed"
    assert len(set(summary["test_loss_per_worker"].values())) == 1  # every rank applied the same sum
    meta = _check_bytes(tmp_path / "g", start=0)
    assert meta["compression"]["min_compression_rate"] == 4


@pytest.fixture(scope="module")
def refusals(request, tmp_path_factory):
    """Each selected case's real CLI in a fresh interpreter, started two at a time (helpers.anytimectl_each)."""
    out = tmp_path_factory.mktemp("refused")
    return out, anytimectl_each(selected_argvs(request, {
        "test_bad_powersgd_options_are_one_line_and_exit_2": lambda args, **_: (*args, "--steps", "2", "--out",
                                                                                str(out))}))


@pytest.mark.parametrize("args, fragments", [
    (["compress", "train", "--compressor", "powersgd", "--mode", "entire"], ["--mode entire", "powersgd"]),
    (["compress", "train", "--compressor", "powersgd", "--rank", "0"], ["--rank"]),
    (["compress", "train", "--compressor", "powersgd", "--min-compression-rate", "-1"], ["--min-compression-rate"]),
    (["train", "dynamic", "--compressor", "powersgd", "--backend", "tensorflow"], ["powersgd", "--backend torch"]),
])
def test_bad_powersgd_options_are_one_line_and_exit_2(refusals, args, fragments):
    out, results = refusals
    result = results[(*args, "--steps", "2", "--out", str(out))]
    assert_one_line_error(result, *fragments)


@pytest.mark.torch
def test_a_resumed_gossip_allreduce_run_continues_powersgd_exactly(tmp_path):
    """The checkpoint carries PowerSGD's warm-start Q, each rank's error-feedback residual and its seed stream:
    8 steps in one go and 4 + a resume to 8 give the same losses and the same bytes at every step."""
    common = ["train", "gossip", "--method", "allreduce", "--compressor", "powersgd", "--workers", "2",
              "--test-size", "50", "--log-every", "4", "--quiet", "--out", str(tmp_path)]
    anytimectl(*common, "--steps", "8", "--name", "a")
    anytimectl(*common, "--steps", "4", "--checkpoint-every", "2", "--name", "b")
    anytimectl("train", "gossip", "--resume", str(tmp_path / "b"), "--steps", "8", "--quiet")
    a, b = table(tmp_path / "a", "master_stats"), table(tmp_path / "b", "master_stats")
    assert b["step"].tolist() == list(range(1, 9)) and metadata(tmp_path / "b")["resumes"][0]["from_step"] == 4
    assert a["loss"].tolist() == b["loss"].tolist()
    workers_a, workers_b = table(tmp_path / "a", "worker_stats"), table(tmp_path / "b", "worker_stats")
    assert workers_a["payload_bytes"].tolist() == workers_b["payload_bytes"].tolist()


@pytest.mark.torch
def test_compress_bench_measures_powersgd_in_its_one_mode(tmp_path):
    result = anytimectl("compress", "bench", "--model", "digits-cnn", "--dataset", "digits", "--batch-size", "32",
                        "--methods", "powersgd", "--repeats", "1", "--json", "--out", str(tmp_path), "--name", "b")
    rows = json.loads(result.stdout.strip().splitlines()[-1])["rows"]
    assert [(r["method"], r["mode"]) for r in rows] == [("powersgd", "layerwise")]  # no entire row
    row = rows[0]
    assert row["bytes"] == 4 * row["sent"] and row["bytes_over_bound"] == 1.0
    assert row["compression_ratio"] > 10 and 0 < row["relative_error"] < 1
    assert row["codec_over_backward"] > 0
