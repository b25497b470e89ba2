"""`anytimectl doctor`: is this installation able to run experiments here? (the logic is runtime/doctor.py)"""

from __future__ import annotations

import sys
from typing import Annotated

import typer


def doctor(
    json_output: Annotated[bool, typer.Option("--json", help="The report as JSON, one object per check.")] = False,
) -> int:
    """Report the installed frameworks and their builds (CUDA or CPU), whether a GPU is usable, the MPI library,
    and whether the MPI launcher starts a job.

    Each framework is imported in a process of its own (TensorFlow and torch never share one), and a real 2-rank
    job is started with the mpiexec that --workers uses. Exit code 0 when everything works, 1 when a check
    failed (the report says which and why). A missing GPU is not a failure: everything runs on the CPU.

    \b
    Examples:
      anytimectl doctor
      anytimectl doctor --json | jq '.[] | select(.ok | not)'
    """
    from anytimectl.runtime import doctor as checks
    report = checks.checks()
    if json_output:
        sys.stdout.write(checks.as_json(report) + "\n")
    else:
        width = max(len(c.name) for c in report)
        for check in report:
            mark = "ok  " if check.ok else "FAIL"
            print(f"{mark} {check.name:<{width}}  {check.detail}")
    return 0 if all(c.ok for c in report) else 1
