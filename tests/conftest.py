"""Shared fixtures: real 2-worker runs, made once per session and only read by the tests that use them."""

from __future__ import annotations

from pathlib import Path

import pytest
from helpers import anytimectl

REAL_RUN_STEPS = 6


@pytest.fixture(scope="session")
def real_runs(tmp_path_factory) -> dict[str, Path]:
    """One short 2-worker run of each method on the built-in digits data."""
    out = tmp_path_factory.mktemp("real-runs")
    common = ["--workers", "2", "--induce", "cedar:0.2", "--steps", str(REAL_RUN_STEPS), "--test-size", "100",
              "--out", str(out), "--quiet"]
    anytimectl("train", "amb", "--batch-size", "32", "--partitions", "4", "--name", "amb", *common)
    anytimectl("train", "fmb", "--batch-size", "32", "--name", "fmb", *common)
    return {"amb": out / "amb", "fmb": out / "fmb"}
