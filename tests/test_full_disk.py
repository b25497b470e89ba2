"""A run whose output cannot be written (a full disk) ends at once, `failed` in its metadata.json with a one-line
reason naming the file, no rank traceback, and no temporary checkpoint file left. Written on a real small tmpfs
(mounting one needs root; skipped elsewhere)."""

from __future__ import annotations

import os
import shutil
import subprocess
import time

import pytest
from helpers import anytimectl, metadata

from anytimectl.runtime.rundir import RESERVE_BYTES, RunDirectory


@pytest.fixture
def small_disk(tmp_path):
    """A 3 MiB tmpfs: a 6 MB checkpoint cannot fit, and the tables fill what a filler file leaves."""
    if os.geteuid() != 0 or shutil.which("mount") is None:
        pytest.skip("mounting a tmpfs needs root")
    target = tmp_path / "disk"
    target.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=3m", "tmpfs", str(target)], check=True)
    try:
        yield target
    finally:
        _unmount(target)


def _unmount(target) -> None:
    """Unmount, waiting for a failed job's ranks: mpiexec returns when one rank aborts, and the others are still
    being killed (holding the run's files) for about 0.1 s after. Still busy after 10 s is a rank left running,
    which the test reports (after detaching the tmpfs, so that nothing stays mounted)."""
    deadline = time.monotonic() + 10
    while subprocess.run(["umount", str(target)], capture_output=True).returncode != 0:
        if time.monotonic() > deadline:
            subprocess.run(["umount", "--lazy", str(target)], check=False)
            pytest.fail(f"{target} was still in use 10 s after the test: a process of the run was left running")
        time.sleep(0.1)


def _fill(folder, leave: int) -> None:
    free = shutil.disk_usage(folder).free
    with open(folder / "filler", "wb") as stream:
        stream.write(b"\0" * max(0, free - leave))


def test_the_final_metadata_is_written_when_the_disk_is_already_full(small_disk):
    run_path = small_disk / "r"
    run_path.mkdir()
    run = RunDirectory(run_path, {"run_id": "r", "config": {"x": "y" * 2000}}, {"t": ("a", "b")})
    _fill(small_disk, 0)
    with pytest.raises(OSError, match="No space left on device"):
        for _ in range(10_000):
            run.tables["t"].write([("x" * 100, 1)] * 100)
    run.finish("failed", "the disk is full", summary={"steps": 3, "notes": "z" * (RESERVE_BYTES // 4)})
    meta = metadata(run_path)
    assert meta["status"] == "failed" and meta["summary"]["steps"] == 3  # rewritten with the space set aside
    assert not [p for p in run_path.iterdir() if p.name.startswith(".tmp")]


@pytest.mark.mpi
@pytest.mark.slow
@pytest.mark.torch  # train gossip runs on torch
def test_a_checkpoint_that_does_not_fit_fails_the_run_in_one_line(small_disk):
    result = anytimectl("train", "gossip", "--workers", "2", "--steps", "100000", "--checkpoint-every", "2",
                        "--test-size", "100", "--out", str(small_disk), "--name", "g", "--quiet", check=False)
    assert result.returncode == 1, result.stderr[-2000:]
    assert "Traceback" not in result.stderr and "RuntimeError" not in result.stderr
    assert "cannot write checkpoint" in result.stderr and "No space left on device" in result.stderr
    said = [line for line in result.stderr.splitlines() if line.startswith("anytimectl: error:")]
    assert said and len(said) == len(set(said)), result.stderr  # each failing rank says it once
    meta = metadata(small_disk / "g")
    assert meta["status"] == "failed" and "No space left on device" in meta["reason"]
    assert "checkpoints/step-2/rank-" in meta["reason"]
    leftovers = [p for p in (small_disk / "g").rglob("*") if p.name.startswith(".") and p.suffix == ".tmp"]
    assert leftovers == []  # no temporary checkpoint file
