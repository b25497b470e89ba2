"""A finished or stopped run's job is gone within seconds of the end rank 0 records: the launching process,
mpiexec, Hydra's proxy and every rank (found by a marker in their environment, tests/job_end.py).

The bound is generous (a busy 2-core machine) but not a mere hang detector: before every process left through
`launch.leave_process`'s fast exit, the launching process's own interpreter teardown (scipy, pandas, scikit-learn)
and each simulated rank's took 2-4 s at a load average of 14, and 9-33 s were seen on a busier machine.
"""

from __future__ import annotations

import signal
import sys
from pathlib import Path

import pytest
from job_end import watch_job

pytestmark = [pytest.mark.mpi,
              pytest.mark.skipif(not sys.platform.startswith("linux"), reason="finds the job's processes in /proc")]

#: Seconds from the recorded end to the moment no process of the job is left.
GONE_WITHIN = 10.0

CASES = {"sync-finished": ("sync", None), "sync-SIGTERM": ("sync", signal.SIGTERM),
         "async-Ctrl-C": ("async", signal.SIGINT)}


@pytest.mark.parametrize("case", list(CASES))
def test_the_job_is_gone_within_seconds_of_the_recorded_end(tmp_path, case):
    protocol, stop = CASES[case]
    command = [str(Path(sys.executable).parent / "anytimectl"), "train", "amb", "--backend", "sim", "--protocol",
               protocol, "--workers", "2", "--steps", "8" if stop is None else "100000", "--out", str(tmp_path),
               "--name", case, "--quiet"]
    times = watch_job(command, tmp_path / case, stop, rows_before_stop=3, timeout=240)
    assert times.status == ("completed" if stop is None else "interrupted"), times.stderr[-2000:]
    assert times.returncode == (0 if stop is None else 130)
    if stop is not None:
        assert times.stop_to_last_step < GONE_WITHIN  # stops at the end of the current step
    assert times.step_to_recorded < GONE_WITHIN
    assert times.recorded_to_all_gone < GONE_WITHIN, times.line()
