"""Any gradient exchange in any method that averages gradients, through the real command line (2-rank MPI jobs on
the built-in digits): `--compressor topk --ratio 0.01 --error-feedback` trains with dynamic batching (DBS) and with
gossip's all-reduce mode and writes the compression columns; each new exchange (fp16, bf16, signsgd, ef-signsgd)
trains through `compress train`, `train dynamic` and `train gossip --method allreduce`, sending the bytes its
packing says; options that cannot apply are one-line errors."""

from __future__ import annotations

import json
import math

import pytest
from helpers import TINY_COMMANDS, anytimectl, anytimectl_each, metadata, selected_argvs, table, tiny_run_argv
from test_cli_errors import assert_one_line_error

from anytimectl.exchange import MASTER_FIELDS, ROW_FIELDS

pytestmark = [pytest.mark.mpi, pytest.mark.slow]
TOPK_EF = ("--compressor", "topk", "--ratio", "0.01", "--error-feedback")


def _run(tmp_path, command: str, name: str, *args: str, steps: int = 4):
    """A run of this test's own (one it resumes, or of options no other test reads)."""
    anytimectl(*tiny_run_argv(command, *args, steps=steps), "--out", str(tmp_path), "--name", name)
    return tmp_path / name


def _check_columns(run, steps: int) -> tuple[dict, object]:
    meta = metadata(run)
    assert meta["status"] == "completed", meta.get("reason")
    workers, master = table(run, "worker_stats"), table(run, "master_stats")
    assert set(ROW_FIELDS) <= set(workers.columns) and set(MASTER_FIELDS) <= set(master.columns)
    assert len(workers) == 2 * steps and workers["payload_bytes"].gt(0).all()
    assert master["loss"].map(math.isfinite).all()
    return meta, workers


@pytest.mark.torch
@pytest.mark.parametrize("command", ["dynamic", "gossip"])
def test_topk_with_error_feedback_trains_dbs_and_gossip_allreduce(shared_run, command):
    run = shared_run(*tiny_run_argv(command, *TOPK_EF, steps=6))
    meta, workers = _check_columns(run, 6)
    assert meta["config"]["compressor"] == "topk" and meta["config"]["error_feedback"] is True
    assert meta["compression"]["compressor"] == "topk" and meta["compression"]["error_feedback"] is True
    dense = 4 * meta["compression"]["trainable_parameters"]
    assert (workers["dense_bytes"] == dense).all() and (workers["payload_bytes"] < dense / 20).all()
    summary = meta["summary"]["compression"]
    assert summary["compressor"] == "topk" and summary["compression_ratio"] > 20
    assert summary["payload_bytes"] == workers["payload_bytes"].sum()
    if command == "gossip":  # every rank applies the same decoded sum: one model
        assert meta["summary"]["test_accuracy_per_worker"]["1"] == meta["summary"]["test_accuracy_per_worker"]["2"]
    else:  # DBS still decides with the exchange in place
        assert "global_batch" in table(run, "master_stats").columns


def _expected_payload(method: str, compression: dict) -> int:
    trainable, tensors = compression["trainable_parameters"], len(compression["tensor_sizes"])
    if method in ("fp16", "bf16"):
        return 2 * trainable
    return 4 * tensors + math.ceil(trainable / 8)  # one float32 scale per tensor + one bit per element


@pytest.mark.torch
@pytest.mark.parametrize("command", list(TINY_COMMANDS))
@pytest.mark.parametrize("method", ["fp16", "bf16", "signsgd", "ef-signsgd"])
def test_each_new_exchange_trains_through_every_method(shared_run, command, method):
    run = shared_run(*tiny_run_argv(command, "--compressor", method, steps=3))
    meta, workers = _check_columns(run, 3)
    compression = meta["compression"]
    assert compression["compressor"] == method
    assert compression["pattern"] == ("all-reduce" if method in ("fp16", "bf16") else "all-gather")
    assert (workers["payload_bytes"] == _expected_payload(method, compression)).all()
    assert compression["error_feedback"] is (method == "ef-signsgd")
    assert workers["bound_bytes"].le(workers["payload_bytes"]).all()


@pytest.fixture(scope="module")
def refusals(request, tmp_path_factory):
    """Each selected case's real CLI in a fresh interpreter, started two at a time (helpers.anytimectl_each)."""
    out = tmp_path_factory.mktemp("refused")
    return out, anytimectl_each(selected_argvs(request, {
        "test_options_that_cannot_apply_are_one_line_errors": lambda args, **_: (*args, "--out", str(out))}))


@pytest.mark.parametrize(("args", "fragments"), [
    (["train", "gossip", "--method", "elastic", "--compressor", "topk"], ["--compressor topk", "--method allreduce"]),
    (["train", "dynamic", "--backend", "tensorflow", "--compressor", "qsgd"], ["--compressor qsgd", "--backend torch"]),
    (["compress", "train", "--compressor", "ef-signsgd", "--no-error-feedback"], ["ef-signsgd", "error feedback"]),
    (["train", "dynamic", "--compressor", "fp16", "--error-feedback"], ["fp16", "no error feedback"]),
    (["compress", "train", "--method", "topk", "--compressor", "qsgd"], ["--method topk", "--compressor qsgd"]),
    (["train", "dynamic", "--compressor", "zip"], ["'zip'", "topk", "signsgd"]),
])
def test_options_that_cannot_apply_are_one_line_errors(refusals, args, fragments):
    out, results = refusals
    assert_one_line_error(results[(*args, "--out", str(out))], *fragments)


@pytest.mark.torch
def test_bench_reports_the_new_exchanges_bytes_against_their_bound(tmp_path):
    result = anytimectl("compress", "bench", "--model", "digits-cnn", "--dataset", "digits", "--batch-size", "32",
                        "--methods", "fp16,bf16,signsgd,ef-signsgd", "--modes", "layerwise", "--repeats", "1",
                        "--json", "--out", str(tmp_path), "--name", "b")
    rows = {r["method"]: r for r in json.loads(result.stdout.strip().splitlines()[-1])["rows"]}
    assert list(rows) == ["fp16", "bf16", "signsgd", "ef-signsgd"]
    elements = rows["fp16"]["elements"]
    for name in ("fp16", "bf16"):
        assert rows[name]["bytes"] == 2 * elements and rows[name]["compression_ratio"] == 2.0
        assert rows[name]["relative_error"] < 1e-2 and rows[name]["mode"] == "dense"
    for name in ("signsgd", "ef-signsgd"):
        assert rows[name]["bytes"] == 4 * rows[name]["tensors"] + math.ceil(elements / 8)
        assert 1.0 <= rows[name]["bytes_over_bound"] < 1.001
    assert all(r["codec_over_backward"] > 0 and r["codec_cpu_over_backward_cpu"] > 0 for r in rows.values())
    assert list(table(tmp_path / "b", "compress_bench").method) == list(rows)


@pytest.mark.torch
@pytest.mark.parametrize("method", ["fp16", "bf16"])
def test_a_cast_sums_alike_over_mpi_and_torch_distributed(tmp_path, method):
    """Two ranks' 16-bit sum is correctly rounded whoever adds: MPI's user-defined sum and gloo's native one give the
    same training, and count the same bytes each step."""
    runs = {}
    for transport in ("mpi", "torch"):
        runs[transport] = _run(tmp_path, "dynamic", transport, "--compressor", method, "--policy", "static",
                               "--transport", transport, steps=5)
    losses = {t: table(run, "master_stats").loss.values for t, run in runs.items()}
    assert len(losses["mpi"]) == 5 and (losses["mpi"] == losses["torch"]).all()
    per_step = {t: table(run, "worker_stats").groupby("rank")["bytes_sent"].diff().dropna().values
                for t, run in runs.items()}
    assert (per_step["mpi"] == per_step["torch"]).all() and (per_step["mpi"] > 0).all()


@pytest.mark.torch
def test_a_resumed_gossip_allreduce_keeps_the_error_feedback_memory(shared_run, tmp_path):
    """The exchange's residual is in the checkpoint: stopped at step 3 and resumed, a topk run with error feedback
    trains exactly as the uninterrupted one (a lost residual would change every later step). The uninterrupted run
    is the one the topk test reads."""
    whole = shared_run(*tiny_run_argv("gossip", *TOPK_EF, steps=6))
    _run(tmp_path, "gossip", "split", *TOPK_EF, "--checkpoint-every", "3", steps=3)
    anytimectl("train", "gossip", "--resume", str(tmp_path / "split"), "--steps", "6", "--quiet")
    a, b = table(whole, "master_stats"), table(tmp_path / "split", "master_stats")
    assert b["step"].tolist() == list(range(1, 7))
    assert (a["loss"].to_numpy() == b["loss"].to_numpy()).all()
    assert table(whole, "worker_stats")["payload_bytes"].equals(table(tmp_path / "split", "worker_stats")
                                                                 ["payload_bytes"])
    assert metadata(tmp_path / "split")["summary"]["compression"]["payload_bytes"] == \
        metadata(whole)["summary"]["compression"]["payload_bytes"]
