"""Running the real command line from tests: in a subprocess, exactly as a user would."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pandas as pd

REPO = Path(__file__).resolve().parent.parent
#: Start-up of TF ranks sharing two cores takes 5-10 s each (docs/platform-facts.md); runs get generous limits.
RUN_TIMEOUT = 240


def anytimectl(*args: str, timeout: float = RUN_TIMEOUT, check: bool = True,
               env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(
        [sys.executable, "-m", "anytimectl", *args], capture_output=True, text=True, timeout=timeout,
        env={**os.environ, **(env or {})}, stdin=subprocess.DEVNULL,
    )
    if check and result.returncode != 0:
        raise AssertionError(f"anytimectl {' '.join(args)} exited {result.returncode}:\n{result.stderr[-3000:]}")
    return result


#: The tiny 2-rank torch runs of each command that averages gradients through an exchange, on the built-in digits:
#: the one form the modules that read such a run share (`tiny_run_argv`), so that tests/conftest.py's `shared_run`
#: starts each distinct command line once per session.
TINY_COMMANDS = {
    "compress": ("compress", "train", "--workers", "2", "--batch-size", "16"),
    "dynamic": ("train", "dynamic", "--workers", "2", "--policy", "dbs", "--batch-size", "16", "--window", "2"),
    "gossip": ("train", "gossip", "--workers", "2", "--method", "allreduce", "--batch-size", "16"),
}


def tiny_run_argv(command: str, *args: str, steps: int) -> tuple[str, ...]:
    """The command line of a tiny run of `command` (a key of TINY_COMMANDS) with `args`, `steps` steps long,
    evaluated at its last step on 50 test examples."""
    return (*TINY_COMMANDS[command], "--steps", str(steps), "--quiet", "--test-size", "50", "--log-every", str(steps),
            *args)


def anytimectl_each(argvs: Iterable[tuple[str, ...]], timeout: float = 180,
                    at_once: int = 2) -> dict[tuple[str, ...], subprocess.CompletedProcess[str]]:
    """`anytimectl(*argv, check=False)` for each argv, each in a fresh interpreter of its own as a user would start
    it, but two at a time (one per core of the 2-core machines we test on): checks that end before launching spend
    most of their 0.4 s of CPU starting Python, and one after another they used one core of two. Not more at once:
    on a loaded machine each would take that many times longer, towards its timeout."""
    with ThreadPoolExecutor(max_workers=at_once) as pool:
        started = {argv: pool.submit(anytimectl, *argv, check=False, timeout=timeout) for argv in dict.fromkeys(argvs)}
    return {argv: job.result() for argv, job in started.items()}


def selected_argvs(request, argv_of: dict[str, Callable[..., tuple[str, ...]]]) -> list[tuple[str, ...]]:
    """For a module fixture that runs its tests' commands together: the command line of each test of this module
    that this session will run (after -k/-m), from its parameters; `argv_of` maps a test's name to a function of
    its parameters."""
    return [tuple(argv_of[item.originalname](**item.callspec.params)) for item in request.session.items
            if item.module is request.module and getattr(item, "originalname", None) in argv_of]


def metadata(run: Path) -> dict:
    return json.loads((run / "metadata.json").read_text())


def table(run: Path, name: str) -> pd.DataFrame:
    return pd.read_csv(run / f"{name}.csv")


def check_a_model_handed_over_by_between_is_used(engine, x, y, atol_share: float):
    """The engine contract's `between` (the asynchronous protocol's hand-over), for any engine: a newer model set
    after micro-batch 1 of 4 computes micro-batches 2-4, and the contribution is the sum of the two parts computed
    separately. `atol_share`: absolute tolerance as a share of the largest gradient value."""
    import math

    import numpy as np
    import pytest

    old = engine.get_params()
    newer = old + np.float32(0.05)
    calls = []

    def between():
        calls.append(len(calls))
        if len(calls) == 1:
            engine.set_params(newer)

    mixed, count, done = engine.compute(x, y, 4, math.inf, between=between)
    assert (count, done) == (len(x), 4) and calls == [0, 1, 2]
    np.testing.assert_array_equal(engine.get_params(), newer)
    quarter = len(x) // 4
    engine.set_params(old)
    first, _, _ = engine.compute(x[:quarter], y[:quarter], 1, math.inf)
    engine.set_params(newer)
    rest, _, _ = engine.compute(x[quarter:], y[quarter:], 1, math.inf)
    n = engine.trainable_count
    expected = first[:n] + rest[:n]
    np.testing.assert_allclose(mixed[:n], expected, rtol=1e-4, atol=atol_share * np.abs(expected).max())
    assert mixed[-1] == pytest.approx(first[-1] + rest[-1], rel=1e-4)

#: What a test puts in the environment of the processes it starts, to find every one of them in /proc later
#: (mpiexec's ranks and proxies inherit it).
PROCESS_MARKER = "ANYTIMECTL_TEST_MARKER"


def marked_processes(marker: str) -> list[int]:
    needle = f"{PROCESS_MARKER}={marker}".encode()
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/environ", "rb") as stream:
                    if needle in stream.read().split(b"\0"):
                        with open(f"/proc/{entry}/stat", "rb") as stat:
                            if stat.read().rsplit(b")", 1)[1].split()[0] != b"Z":
                                found.append(int(entry))
            except OSError:
                continue
    return found


def ranks_of(parent: str | int) -> dict[int, int]:
    """rank -> pid of the MPI ranks started by a launcher with ANYTIMECTL_TEST_PARENT=parent (compared as text:
    other tests' markers may be any text)."""
    ranks = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            environ = (entry / "environ").read_bytes().split(b"\0")
        except OSError:
            continue
        variables = dict(item.split(b"=", 1) for item in environ if b"=" in item)
        if variables.get(b"ANYTIMECTL_TEST_PARENT") == str(parent).encode() and b"PMI_RANK" in variables:
            ranks[int(variables[b"PMI_RANK"])] = int(entry.name)
    return ranks


def wait_for(predicate, what: str, seconds: float = 240) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}")


def table_rows(run: Path, name: str = "master_stats") -> int:
    """Complete data rows in a run's table so far (0 before it exists)."""
    path = Path(run) / f"{name}.csv"
    return len(path.read_text().splitlines()) - 1 if path.is_file() else 0


def signal_mid_run(args: list[str], run: Path, sig: str, after: int, seconds: float = 300) -> int:
    """Start `anytimectl *args` as a user would, send it SIG<sig> (as a scheduler does) once step `after` is in
    the run's table; the run must end `interrupted` with exit 130 and a checkpoint of the step it stopped at, which
    is returned."""
    import signal

    from anytimectl.runtime import checkpoints

    process = subprocess.Popen([sys.executable, "-m", "anytimectl", *args], cwd=REPO, stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        def reached() -> bool:
            assert process.poll() is None, f"the run ended before step {after}: {process.stderr.read()[-2000:]}"
            return table_rows(run) >= after

        wait_for(reached, f"step {after} of {Path(run).name}", seconds=seconds)
        process.send_signal(getattr(signal, f"SIG{sig}"))
        _, stderr = process.communicate(timeout=120)
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
            process.communicate()
    assert process.returncode == 130, stderr[-3000:]
    meta = metadata(run)
    stopped = meta["summary"]["steps"]
    assert meta["status"] == "interrupted" and f"SIG{sig}" in meta["reason"], meta.get("reason")
    assert checkpoints.latest(run).step == stopped, "the checkpoint of the step the run stopped at"
    return stopped
