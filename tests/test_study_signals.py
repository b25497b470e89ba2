"""The studies honour stop signals as training does (anytimectl.studies): SIGTERM or SIGHUP ends `partitions sweep`
and `compress bench` with exit code 130, metadata.json `interrupted` with the signal's name, and no process of
theirs left running (the sweep's measuring child included). Real signals to real commands."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import uuid

import pytest
from helpers import PROCESS_MARKER as MARKER
from helpers import REPO, marked_processes, metadata, wait_for

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc; Linux only")


def _signalled(args: list[str], run, sig: int, ready) -> tuple[subprocess.CompletedProcess, str]:
    marker = uuid.uuid4().hex
    process = subprocess.Popen([sys.executable, "-m", "anytimectl", *args], cwd=REPO, stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True, env={**os.environ, MARKER: marker},
                               stdin=subprocess.DEVNULL)
    try:
        wait_for(lambda: ready(marker, process.pid), "the study to be measuring")
        process.send_signal(sig)  # to the command only, as a scheduler's scancel --signal=B:TERM would
        stdout, stderr = process.communicate(timeout=120)
        wait_for(lambda: not marked_processes(marker), "every process of the study to end", seconds=30)
    finally:
        if process.poll() is None:
            process.kill()
        for pid in marked_processes(marker):
            os.kill(pid, signal.SIGKILL)
    return subprocess.CompletedProcess(args, process.returncode, stdout, stderr), marker


@pytest.mark.slow
def test_sigterm_ends_a_partitions_sweep_and_its_measuring_child(tmp_path):
    run = tmp_path / "s"
    args = ["partitions", "sweep", "--model", "mlp", "--batch-sizes", "4..8", "--steps", "100000", "--repeats", "1",
            "--warmup", "1", "--threads", "1", "--out", str(tmp_path), "--name", "s"]

    def child_running(marker: str, parent: int) -> bool:
        return (run / "metadata.json").is_file() and any(pid != parent for pid in marked_processes(marker))

    result, _ = _signalled(args, run, signal.SIGTERM, child_running)
    assert result.returncode == 130, result.stderr[-2000:]
    assert "Traceback" not in result.stderr
    assert result.stderr.strip().splitlines()[-1].startswith("anytimectl: interrupted by SIGTERM; ")
    meta = metadata(run)
    assert meta["status"] == "interrupted" and meta["reason"] == "interrupted by SIGTERM"


@pytest.mark.slow
@pytest.mark.torch
def test_sighup_ends_a_compress_bench(tmp_path):
    run = tmp_path / "b"
    args = ["compress", "bench", "--model", "resnet9", "--repeats", "1000", "--out", str(tmp_path), "--name", "b"]
    result, _ = _signalled(args, run, signal.SIGHUP, lambda marker, parent: (run / "metadata.json").is_file())
    assert result.returncode == 130, result.stderr[-2000:]
    assert "Traceback" not in result.stderr
    assert result.stderr.strip().splitlines()[-1].startswith("anytimectl: interrupted by SIGHUP; ")
    meta = metadata(run)
    assert meta["status"] == "interrupted" and meta["reason"] == "interrupted by SIGHUP"


def test_a_data_error_before_the_bench_leaves_no_run_directory(tmp_path):
    result = subprocess.run([sys.executable, "-m", "anytimectl", "compress", "bench", "--model", "digits-cnn",
                             "--dataset", "cifar10", "--data-dir", str(tmp_path / "none"), "--out",
                             str(tmp_path / "out"), "--name", "x"], cwd=REPO, capture_output=True, text=True,
                            timeout=240)
    assert result.returncode == 2, result.stderr[-2000:]
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "out").exists()  # neither the run directory nor the --out folder it created
