"""A stand-in job for the launcher tests: `relaunch` starts this file as every rank instead of anytimectl.

As the parent: `python launcher_job.py parent BEHAVIOUR LOG_DIR` calls `anytimectl.runtime.launch.relaunch` with one
worker, prints the JobEnd as JSON on stdout and exits with its exit code. As a rank (started by mpiexec with
the arguments relaunch gives, which include `-m mpi4py -m anytimectl` and so look like our ranks), it does not
touch MPI; it writes what happens to LOG_DIR/rank-PID.log and behaves as BEHAVIOUR says:
- `slow-stop`: handles SIGTERM at once, then takes 120 s to "finish its step" (a second signal must kill it);
- `late-handler`: handles SIGTERM only after 3 s (a signal sent earlier must be held back until then);
- `env`: writes the terminal width variable it was given, then exits.
"""

from __future__ import annotations

import json
import os
import signal
import sys
import time
from pathlib import Path

from anytimectl.runtime import launch


def rank(behaviour: str, log_dir: Path) -> None:
    log = open(log_dir / f"rank-{os.getpid()}.log", "a", buffering=1)  # noqa: SIM115 - lives as long as the rank

    def on_term(signum, frame):
        log.write(f"got {signal.Signals(signum).name}\n")

    if behaviour == "env":
        log.write(f"width={os.environ.get(launch.TERMINAL_WIDTH_VARIABLE, '')}\n")
        return
    if behaviour == "late-handler":
        log.write("starting\n")
        time.sleep(3)
    signal.signal(signal.SIGTERM, on_term)
    log.write("ready\n")
    if behaviour == "late-handler":
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            time.sleep(0.05)
            if "got SIGTERM" in (log_dir / f"rank-{os.getpid()}.log").read_text():
                log.write("stopped\n")
                return
        return
    time.sleep(120)


def parent(behaviour: str, log_dir: str) -> None:
    script = str(Path(__file__).resolve())
    launch.child_python = lambda: [sys.executable, "-P", script, "rank", behaviour, log_dir]
    end = launch.relaunch(1, [], None, None, {})
    print(json.dumps({"code": end.code, "signal": end.signal, "exit_code": end.exit_code}), flush=True)
    sys.exit(end.exit_code)


if __name__ == "__main__":
    role, behaviour, where = sys.argv[1:4]
    if role == "parent":
        parent(behaviour, where)
    else:
        rank(behaviour, Path(where))
