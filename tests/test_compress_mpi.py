"""`compress train`'s protocol on 2 real MPI ranks, every method in both modes (tests/mpi/compress_check.py): each
rank sends exactly the bytes the encoding's formula says, the counters move by exactly those bytes, and the update
every rank applies is the per-example average of the ranks' decompressed gradients, identical on both ranks."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from anytimectl.runtime.launch import find_mpiexec

pytestmark = [pytest.mark.mpi, pytest.mark.slow, pytest.mark.torch]

SCRIPT = Path(__file__).parent / "mpi" / "compress_check.py"
METHODS = {"none", "topk", "randomk", "threshold", "adaptive-threshold", "terngrad", "qsgd"}


@pytest.fixture(scope="module")
def report() -> dict:
    result = subprocess.run([find_mpiexec(), "-n", "2", sys.executable, "-m", "mpi4py", str(SCRIPT)],
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads(result.stdout.strip().splitlines()[-1])


def test_every_method_and_mode_ran_on_two_ranks(report):
    assert report["size"] == 2
    cases = {c["case"].split("/")[0] + "/" + c["case"].split("/")[1] for c in report["cases"]}
    assert {case.split("/")[0] for case in cases} == METHODS
    assert all(f"{m}/{mode}" in cases for m in METHODS - {"none"} for mode in ("layerwise", "entire"))


def test_payloads_are_the_bytes_the_encoding_says_and_the_counters_agree(report):
    for case in report["cases"]:
        assert case["payload_mismatches"] == 0, case
        assert case["counter_mismatches"] == 0, case
        assert case["count_mismatches"] == 0, case
        assert all(0 < b for b in case["payload_bytes"]), case
        assert all(1 <= r <= 1.1 for r in case["bound_ratio"]), case  # 6-byte header on a tiny model included


def test_the_update_is_the_average_of_the_decompressed_gradients_on_every_rank(report):
    for case in report["cases"]:
        assert case["identical_params"], case
        assert case["max_update"] > 1e-4, case  # the parameters really moved
        assert case["max_update_error"] <= 2e-7 + 1e-5 * case["max_update"], case
        assert case["max_stats_error"] <= 1e-6, case  # batch-norm statistics: the example-weighted mean


def test_error_feedback_keeps_exactly_what_was_not_sent(report):
    fed = [c for c in report["cases"] if "/ef" in c["case"]]
    assert len(fed) == 3
    assert all(c["residual_mismatches"] == 0 for c in fed)
