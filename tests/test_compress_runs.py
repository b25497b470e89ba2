"""`anytimectl compress` through the real command line: two 2-worker training runs on the built-in digits (the
issue's top-k command with error feedback, and QSGD over the whole model under the original's option names), a
bench, and bad input as one line with exit 2. Every method and mode is exercised on real ranks by
test_compress_mpi.py; these check the run directory a user gets."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from helpers import anytimectl, anytimectl_each, metadata, selected_argvs, table
from test_cli_errors import assert_one_line_error

from anytimectl.protocols.compressed import CompressedProtocol

pytestmark = [pytest.mark.mpi, pytest.mark.slow, pytest.mark.torch]

TABLES = CompressedProtocol.columns.tables()
TRAIN = 1437  # digits training examples
COMMON = ["--workers", "2", "--test-size", "60", "--quiet"]


def bits(n: int) -> int:
    return max(0, n - 1).bit_length()


@pytest.fixture(scope="module")
def topk_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("compress")
    anytimectl("compress", "train", "--method", "topk", "--ratio", "0.01", "--error-feedback", "--steps", "8",
               "--log-every", "4", *COMMON, "--out", str(out), "--name", "topk")
    return out / "topk"


@pytest.fixture(scope="module")
def qsgd_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("compress")
    result = anytimectl("compress", "train", "--method", "RandomDithering", "--compress", "entiremodel", "-Q", "15",
                        "--epochs", "0.25", "--workers", "2", "--test-size", "60", "--json", "--out", str(out),
                        "--name", "qsgd")
    return out / "qsgd", json.loads(result.stdout.strip().splitlines()[-1])


def test_topk_run_directory_has_the_compression_columns_and_metadata(topk_run):
    meta = metadata(topk_run)
    assert meta["status"] == "completed", meta.get("reason")
    assert meta["command"] == "compress" and meta["method"] == "compress" and meta["protocol"] == "compressed"
    assert meta["config"]["compressor"] == "topk" and meta["config"]["mode"] == "layerwise"
    assert "method" not in meta["config"]  # the compressor was recorded twice before (config.method)
    assert meta["config"]["error_feedback"] is True and meta["compression"]["error_feedback"] is True
    assert meta["config"]["model"] == "digits-cnn" and meta["config"]["batch_size"] == 32
    master, workers = table(topk_run, "master_stats"), table(topk_run, "worker_stats")
    assert tuple(master.columns) == TABLES["master_stats"] and tuple(workers.columns) == TABLES["worker_stats"]
    assert list(master.step) == list(range(1, 9)) and len(workers) == 16
    assert master.accuracy.notna().sum() == 2  # --log-every 4 over 8 steps
    # the piecewise rate in epochs: 0 -> 0.4 at 5/24 of the run -> 0 where --steps 8 end, read before each step
    knots = meta["config"]["lr_knots"]
    end = 8 * 64 / TRAIN
    assert knots == [[0.0, 0.0], [pytest.approx(end * 5 / 24), 0.4], [pytest.approx(end), 0.0]]
    before = master.epoch - 64 / TRAIN
    xs, ys = zip(*knots, strict=True)
    assert master.learning_rate.to_numpy() == pytest.approx(np.interp(before, xs, ys), abs=1e-6)


def test_topk_sends_the_bytes_its_encoding_says_every_step(topk_run):
    meta = metadata(topk_run)
    sizes = meta["compression"]["tensor_sizes"]
    trainable = sum(sizes)
    assert meta["compression"]["trainable_parameters"] == trainable
    k = [math.ceil(n / 100) for n in sizes]  # K = 0.01: ceil(K n) per tensor
    expected = 6 + sum(math.ceil(kt * bits(n) / 8) for n, kt in zip(sizes, k, strict=True)) + 4 * sum(k)
    workers = table(topk_run, "worker_stats")
    assert (workers.payload_bytes == expected).all()
    assert (workers.values_sent == sum(k)).all()
    assert (workers.dense_bytes == 4 * trainable).all()
    assert (workers.extra_bytes == 8).all()  # the digits CNN has no batch norm: n and the loss sum
    assert (workers.payload_bytes / workers.bound_bytes).between(1.0, 1.1).all()
    for _, rows in workers.groupby("rank"):
        sent = rows.sort_values("master_step").bytes_sent.diff().dropna()
        received = rows.sort_values("master_step").bytes_recv.diff().dropna()
        assert (sent == expected + 8).all() and (received == expected + 8).all()  # the other worker's
    summary = meta["summary"]
    assert summary["payload_bytes"] == int(workers.payload_bytes.sum())
    assert summary["dense_bytes"] == 16 * 4 * trainable
    assert summary["compression_ratio"] == pytest.approx(4 * trainable / expected)
    master = table(topk_run, "master_stats")
    assert (master.payload_bytes_total == 2 * expected).all()


def test_qsgd_entire_under_the_original_names(qsgd_run):
    run, printed = qsgd_run
    meta = metadata(run)
    assert meta["status"] == "completed", meta.get("reason")
    c = meta["config"]
    assert c["compressor"] == "qsgd" and c["mode"] == "entire" and c["levels"] == 15
    assert meta["compression"]["tensors"] == 1  # one message for the whole model
    trainable = meta["compression"]["trainable_parameters"]
    workers = table(run, "worker_stats")
    # s = 15: 31 symbols, cheaper as 3 per 15 bits... whichever the symbol code picked, it is one norm + n symbols
    symbol_bytes = workers.payload_bytes - 6 - 4
    assert (symbol_bytes <= math.ceil(5 * trainable / 8)).all()  # at most ceil(log2 31) = 5 bits per symbol
    assert (workers.payload_bytes / workers.bound_bytes).between(1.0, 1.1).all()
    steps = math.ceil(0.25 * TRAIN / 64)
    assert printed["steps"] == steps and printed["status"] == "completed"
    assert printed["compression_ratio"] == pytest.approx(4 * trainable / workers.payload_bytes.mean())
    assert printed["compressor"] == "qsgd" and printed["mode"] == "entire"
    # --log-every left out: the whole test set once an epoch, and at the end
    assert meta["config"]["log_every"] == round(TRAIN / 64) and meta["config"]["test_size"] == 60


def test_bench_writes_a_run_directory_and_json(tmp_path):
    result = anytimectl("compress", "bench", "--model", "digits-cnn", "--dataset", "digits", "--batch-size", "32",
                        "--methods", "topk,TernGrad", "--repeats", "1", "--json", "--out", str(tmp_path), "--name", "b")
    printed = json.loads(result.stdout.strip().splitlines()[-1])
    rows = printed["rows"]
    assert [(r["method"], r["mode"]) for r in rows] == [("topk", "layerwise"), ("topk", "entire"),
                                                        ("terngrad", "layerwise"), ("terngrad", "entire")]
    assert all(1.0 <= r["bytes_over_bound"] <= 1.1 and r["compression_ratio"] > 1 for r in rows)
    for row in rows:  # terngrad's trits: 5 to a byte, and their entropy below log2(3)
        if row["method"] == "terngrad":
            assert row["bits_per_symbol"] == pytest.approx(1.6, abs=1e-3)
            assert 0 < row["symbol_entropy_bits"] < math.log2(3)
        else:
            assert row.get("symbol_entropy_bits") is None
    bench = table(tmp_path / "b", "compress_bench")
    assert list(bench.method) == ["topk", "topk", "terngrad", "terngrad"] and (bench.relative_error > 0).all()
    meta = metadata(tmp_path / "b")
    assert meta["status"] == "completed" and meta["command"] == "compress bench"
    assert meta["gradient"]["elements"] == rows[0]["elements"]
    figure = anytimectl("plot", str(tmp_path / "b"), "--type", "compress_bench", "--save", "--out", str(tmp_path))
    assert "compress_bench" in figure.stdout


def _case_folder(args) -> str:
    return f"case-{abs(hash(tuple(args)))}"


@pytest.fixture(scope="module")
def bad_input_results(request, tmp_path_factory):
    """Each selected case's real CLI in a fresh interpreter, with an empty --out folder of its own, started a few at
    a time (helpers.anytimectl_each)."""
    out = tmp_path_factory.mktemp("bad-input")

    def argv(args, **_):
        (out / _case_folder(args)).mkdir(exist_ok=True)
        return ("compress", *args, "--out", str(out / _case_folder(args)))

    return {"out": out, **anytimectl_each(selected_argvs(request, {"test_bad_input_is_one_line_and_exit_2": argv}))}


@pytest.mark.parametrize(("args", "fragments"), [
    (["train", "--method", "sparsify"], ["'sparsify'", "topk"]),
    (["train", "--mode", "diagonal"], ["'diagonal'", "layerwise"]),
    (["train", "--ratio", "0"], ["--ratio 0", "(0, 1]"]),
    (["train", "-K", "1.5"], ["--ratio 1.5", "(0, 1]"]),
    (["train", "--levels", "0"], ["--levels 0", "greater than or equal to 1"]),
    (["train", "--threshold", "-1"], ["--threshold -1", "greater than or equal to 0"]),
    (["train", "--rescale", "--method", "topk"], ["--rescale", "topk"]),
    (["train", "--workers", "2", "--batch-size", "1000"], ["--batch-size 1000", "1437"]),
    (["train", "--augment", "cifar"], ["cutout", "8x8"]),
    (["train", "--epochs", "2", "--lr-peak-epoch", "3"], ["--lr-peak-epoch 3", "peak"]),
    (["bench", "--methods", "topk,zip"], ["--methods 'zip'"]),
    (["bench", "--modes", "sideways"], ["--modes 'sideways'"]),
    (["bench", "--ratio", "0"], ["--ratio 0"]),
    (["bench", "--model", "nosuchnet"], ["--model 'nosuchnet'", "--dataset"]),
])
def test_bad_input_is_one_line_and_exit_2(bad_input_results, args, fragments):
    out = bad_input_results["out"] / _case_folder(args)
    result = bad_input_results[("compress", *args, "--out", str(out))]
    assert_one_line_error(result, *fragments)
    assert not list(out.iterdir())  # nothing was created
