"""The live view's plain lines (`--live lines`, what a batch job's log or a pipe gets) through the real command
line: the first line comes with the first step's header, before any worker's row, and shows a dash there."""

from __future__ import annotations

import pytest
from helpers import anytimectl

pytestmark = [pytest.mark.mpi, pytest.mark.slow]


def test_the_first_plain_line_shows_dashes_not_zero_and_nan(tmp_path):
    """The plain lines are the run shell's, the same for every backend: the simulated one spares a framework's
    start-up."""
    result = anytimectl("train", "fmb", "--backend", "sim", "--workers", "2", "--steps", "3", "--batch-size", "16",
                        "--out", str(tmp_path), "--live", "lines")
    lines = [line for line in result.stderr.splitlines() if "mean batch" in line]
    assert lines, result.stderr[-3000:]
    assert lines[0].endswith("mean batch -  utilisation -"), lines[0]
    assert "nan" not in result.stderr and "mean batch 0.0" not in result.stderr
