"""`anytimectl bandwidth`: what the master's reduce + broadcast costs, against the number of workers and the size.

Each round is what a synchronous training step does on the wire: every worker's buffer is summed into the
master's (reduce), then the master's buffer is sent to every worker (broadcast). It is timed through
`anytimectl.comm` (non-blocking, sleep-polled: the layer training uses) and, in the same job and interleaved round
by round, through raw blocking mpi4py `Reduce`/`Bcast` of the same buffers, so the cost of our layer is a ratio
measured side by side. Times are the master's: from the start of the round (after a barrier) to the end of its
reduce, and from there until every rank has the broadcast buffer (a closing barrier, the same for both layers).

Message sizes count float32 elements, as the flat model buffers do (2^20 elements = 4 MiB). The original script
(`test_bandwidth.sh`) sent float64 buffers of the same element counts.

Without an MPI job and given `--workers 1,2,4`, the command re-launches itself once per worker count
(`mpiexec -n N+1`); each job hands its rows back to this process, which writes the one run directory. Under an
existing job (`mpiexec -n 17 anytimectl bandwidth ...`) it measures that job, and only rank 0 writes.
"""

from __future__ import annotations

import json
import os
import signal
import sys
import time
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Literal

import typer

from anytimectl.backends.tensorflow import MODEL_INPUT, MODELS
from anytimectl.cli.options import MpiOptions, ResultOptions, with_option_groups
from anytimectl.cli.ranges import parse_counts
from anytimectl.runtime.errors import UsageError

if TYPE_CHECKING:  # `bandwidth --help` imports neither numpy nor the protocol: the functions that measure do
    import numpy as np


COLUMNS = (
    "workers", "elements", "bytes", "layer", "reduce_time", "reduce_spread", "bcast_time", "bcast_spread",
    "round_time", "round_spread", "gbps", "ratio", "rounds", "model",
)
#: 2^28 float32 elements = 1 GiB per buffer; the master holds two
MAX_ELEMENTS = 2**28
#: each re-launched job writes its rows here (a JSON file in the run directory), for the parent to collect
ROWS_FILE_VARIABLE = "ANYTIMECTL_BANDWIDTH_ROWS"
#: "MODEL:ELEMENTS": which of the sizes a re-launched job measures is the model's buffer (the parent counted it)
MODEL_VARIABLE = "ANYTIMECTL_BANDWIDTH_MODEL"


def model_elements(model: str) -> int:
    """Floats a worker sends per step for `model`: trainable values, batch-norm statistics, count and loss.

    This is the flat buffer of `TensorFlowEngine.compute` (the master broadcasts two fewer); the Keras model is
    built to count them, which imports TensorFlow (a few seconds).
    """
    import numpy as np

    from anytimectl.backends.tensorflow.models import build_model
    from anytimectl.backends.tensorflow.quiet_import import native_stderr_silenced

    with native_stderr_silenced():  # building the model starts TensorFlow, which probes for CUDA aloud
        network = build_model(model, MODEL_INPUT[model], 10)
    trainable = sum(int(np.prod(v.shape)) for v in network.trainable_variables)
    statistics_ = sum(int(np.prod(v.shape)) for v in network.non_trainable_variables if "float" in str(v.dtype))
    return trainable + statistics_ + 2


def _stats(values: list[float]) -> tuple[float, float]:
    """Median and interquartile range."""
    import numpy as np

    ordered = np.asarray(values)
    q1, median, q3 = np.percentile(ordered, [25, 50, 75])
    return float(median), float(q3 - q1)


def _round(comm: Any, layer: str, send: np.ndarray, recv: np.ndarray | None, model: np.ndarray) -> tuple[float, float]:
    """One reduce + broadcast, the seconds of each: through the calls a training step makes (`Comm.collect`,
    `Comm.distribute`, with their small stats and header messages), or raw blocking MPI.

    The broadcast ends at a closing barrier, the same for both layers: a rank's own part of a broadcast can end
    when its data is handed to TCP (the master's, or a middle host's in the host chain), long before the last
    rank has the buffer, and a round that ended there would credit a layer with bandwidth the link never gave.
    """
    import numpy as np
    from mpi4py import MPI

    from anytimectl.protocols.master_worker import HEADER_SIZE, LAYOUT

    start = time.perf_counter()
    if layer == "ours":
        stats = np.zeros(len(LAYOUT))  # the per-worker stats vector a training step gathers beside the gradients
        comm.collect(send, recv, stats, np.zeros((comm.size, len(LAYOUT))) if comm.rank == 0 else None)
    else:
        comm.mpi.Reduce(send, recv, op=MPI.SUM, root=0)
    middle = time.perf_counter()
    if layer == "ours":
        comm.distribute(np.zeros(HEADER_SIZE), model)
    else:
        comm.mpi.Bcast(model, root=0)
    comm.barrier(latency_share=0.01)  # sleep-polled, each sleep at most 1% of the wait: no core spins
    return middle - start, time.perf_counter() - middle


def _stop_request() -> Any:
    """A rank's stop signals during a measurement: the run shell's Stopper, already running (a signal during
    start-up is remembered, not fatal): the first signal asks every rank to stop after the current round (the
    ranks agree on it, so none is left waiting in a collective), a second one stops at once."""
    from anytimectl.runtime.shell import Stopper

    stop = Stopper()
    stop.running = True
    return stop


def _agree_to_stop(comm: Any, stop: Any | None) -> bool:
    """Whether any rank was asked to stop: a tiny all-reduce every rank makes at the same point of the loop."""
    import numpy as np

    if stop is None:
        return False
    from mpi4py import MPI

    from anytimectl.comm import Pending

    local = np.array([0 if stop.signum is None else 1], dtype=np.int32)
    agreed = np.zeros(1, dtype=np.int32)
    Pending().add(comm.mpi.Iallreduce(local, agreed, op=MPI.MAX)).wait()
    return bool(agreed[0])


def measure_job(comm: Any, sizes: list[int], rounds: int, warmup: int, model_sizes: dict[int, str],
                stop: Any | None = None) -> tuple[list[dict], bool]:
    """Every rank calls this; rank 0 gets the rows (others an empty list), and every rank whether it stopped early.

    For each size: `warmup` untimed rounds, then `rounds` rounds alternating which layer goes first, each round
    preceded by a barrier so that every rank starts together. With `stop`, the ranks check before each round
    whether one of them was signalled, and then all return the rows of the sizes finished so far.
    """
    import numpy as np

    workers = comm.size - 1
    rows: list[dict] = []
    for elements in sizes:
        send = np.full(elements, float(comm.rank), dtype=np.float32)
        recv = np.zeros(elements, dtype=np.float32) if comm.rank == 0 else None
        model = np.ones(elements, dtype=np.float32)
        times: dict[str, list[tuple[float, float]]] = {"ours": [], "raw": []}

        for index in range(warmup + rounds):
            if _agree_to_stop(comm, stop):
                return rows, True
            for layer in ("ours", "raw") if index % 2 == 0 else ("raw", "ours"):
                comm.barrier()
                measured = _round(comm, layer, send, recv, model)
                if index >= warmup:
                    times[layer].append(measured)
        if comm.rank != 0:
            continue
        expected = float(sum(range(comm.size)))
        if recv is not None and not np.allclose(recv[:4], expected):  # pragma: no cover - an MPI bug
            raise RuntimeError(f"reduce of {elements} elements gave {recv[0]}, expected {expected}")
        medians = {}
        for layer in ("ours", "raw"):
            reduce_time, reduce_spread = _stats([r for r, _ in times[layer]])
            bcast_time, bcast_spread = _stats([b for _, b in times[layer]])
            round_time, round_spread = _stats([r + b for r, b in times[layer]])
            medians[layer] = round_time
            moved = 2 * workers * elements * 4  # every worker's buffer in, and the model out to every worker
            rows.append({
                "workers": workers, "elements": elements, "bytes": elements * 4, "layer": layer,
                "reduce_time": reduce_time, "reduce_spread": reduce_spread, "bcast_time": bcast_time,
                "bcast_spread": bcast_spread, "round_time": round_time, "round_spread": round_spread,
                "gbps": moved / round_time / 1e9 if round_time > 0 else None, "ratio": None, "rounds": rounds,
                "model": model_sizes.get(elements, ""),
            })
        for row in rows[-2:]:
            row["ratio"] = medians["raw"] / medians[row["layer"]] if medians[row["layer"]] > 0 else None
    return rows, False


def ratio_table(rows: list[dict]) -> list[dict]:
    """One line per (workers, elements): our round time, raw round time, and raw/ours (1.0 = as fast as raw)."""
    by_key: dict[tuple[int, int], dict] = {}
    for row in rows:
        entry = by_key.setdefault((int(row["workers"]), int(row["elements"])), {
            "workers": int(row["workers"]), "elements": int(row["elements"]), "bytes": int(row["bytes"]),
            "model": row.get("model") or ""})
        entry[row["layer"]] = float(row["round_time"])
    out = []
    for key in sorted(by_key):
        entry = by_key[key]
        if "ours" in entry and "raw" in entry and entry["ours"] > 0:
            entry["ratio"] = entry["raw"] / entry["ours"]
            out.append(entry)
    return out


def target_met(rows: list[dict], min_bytes: int = 2**20, target: float = 0.9) -> bool | None:
    """Whether our layer reaches `target` of raw throughput for every message of `min_bytes` or more."""
    checked = [r["ratio"] for r in ratio_table(rows) if r["bytes"] >= min_bytes]
    return None if not checked else min(checked) >= target


def format_rows(rows: list[dict]) -> str:
    lines = [f"{'workers':>7} {'elements':>10} {'MiB':>8} {'ours ms':>9} {'raw ms':>9} {'raw/ours':>8} "
             f"{'GB/s':>7}  model"]
    gbps = {(r["workers"], r["elements"]): r["gbps"] for r in rows if r["layer"] == "ours"}
    for entry in ratio_table(rows):
        rate = gbps.get((entry["workers"], entry["elements"]))
        lines.append(f"{entry['workers']:>7} {entry['elements']:>10} {entry['bytes'] / 2**20:>8.3f} "
                     f"{entry['ours'] * 1e3:>9.3f} {entry['raw'] * 1e3:>9.3f} {entry['ratio']:>8.2f} "
                     f"{rate if rate is not None else float('nan'):>7.2f}  {entry['model']}")
    return "\n".join(lines)


def model_report(rows: list[dict], model: str) -> list[str]:
    lines = []
    for entry in ratio_table(rows):
        if entry["model"] == model:
            lines.append(f"{model} ({entry['elements']:,} floats, {entry['bytes'] / 2**20:.1f} MiB) with "
                         f"{entry['workers']} worker(s): {entry['ours'] * 1e3:.2f} ms of communication per step "
                         f"(reduce + broadcast at the master; raw MPI {entry['raw'] * 1e3:.2f} ms)")
    return lines


Pattern = Literal["master", "allreduce"]


@with_option_groups()
def bandwidth(
    result: ResultOptions,
    job: MpiOptions,
    workers: Annotated[str | None, typer.Option(
        metavar="COUNTS", show_default=False,
        help="Worker counts to launch on this machine, e.g. 1,2,4 or 1..16 (powers of two); each runs as its own "
             "job (mpiexec -n N+1 for --pattern master, -n N for allreduce). Leave out under mpiexec/srun.")] = None,
    pattern: Annotated[Pattern, typer.Option(
        help="master: reduce to rank 0 + broadcast (train amb|fmb's step); allreduce: every rank sums every "
             "rank's buffer (the peer methods' step).")] = "master",
    sizes: Annotated[str, typer.Option(metavar="SIZES", help="Message sizes in float32 elements: 2^10..2^22 "
                                                             "(powers of two), a list 1024,2^20, or one size.")]
    = "2^10..2^22",
    rounds: Annotated[int, typer.Option(metavar="N", min=1, help="Timed rounds per size and layer.")] = 100,
    warmup: Annotated[int, typer.Option(metavar="N", min=0, help="Untimed rounds per size first.")] = 5,
    model: Annotated[Literal[MODELS] | None, typer.Option(
        metavar="MODEL", show_default=False,
        help="Also measure this model's flat gradient buffer and report its communication time per step.")] = None,
) -> None:
    """Master reduce + broadcast time against the number of workers and the message size.

    For each worker count N and size S, N workers and one master run --rounds rounds of reduce (every worker's
    S floats summed into the master) then broadcast (S floats from the master to every worker), through the
    communication layer that training uses and, interleaved in the same job, through raw blocking mpi4py
    Reduce/Bcast. Reports median and interquartile range of the master's times, GB/s moved through the master
    (2 x N x S x 4 bytes per round) and raw/ours (1.0 = our layer as fast as raw MPI). Writes a run directory
    with bandwidth.csv; plot it with `anytimectl plot RUN --type master_bandwidth`.

    With --pattern allreduce, N ranks all-reduce the buffer instead (every rank a worker, as in train dynamic,
    gossip's allreduce and compress --method none), through Comm.allreduce_sum and raw Allreduce.

    \b
    Examples:
      anytimectl bandwidth --workers 1,2,4 --sizes 2^10..2^22 --rounds 100
      anytimectl bandwidth --workers 1..8 --sizes 2^20 --model cifar10
      anytimectl bandwidth --pattern allreduce --workers 2,4 --sizes 2^18..2^22
      mpiexec -n 17 anytimectl bandwidth --sizes 2^20 --rounds 50
    """
    from anytimectl.runtime.launch import in_mpi_job

    size_list = parse_counts(sizes, "--sizes", maximum=MAX_ELEMENTS)
    worker_counts = parse_counts(workers, "--workers", maximum=1024) if workers is not None else None
    out, name, json_output = result.out, result.name, result.json
    if in_mpi_job():
        code = _in_job(size_list, rounds, warmup, model, out, name, json_output, worker_counts, pattern)
    else:
        if not worker_counts:
            raise UsageError("give --workers N (or a list 1,2,4) to launch jobs on this machine, or start the "
                             "command under mpiexec")
        code = _launch_each(worker_counts, size_list, rounds, warmup, model, out, name, job.mpiexec, job.hosts,
                            json_output, pattern)
    if code:
        raise typer.Exit(code)


def _stem(pattern: str) -> str:
    return "" if pattern == "master" else f"-{pattern}"


def _metadata(path: Path, sizes: list[int], rounds: int, warmup: int, model: str | None, worker_counts,
              pattern: str = "master") -> dict:
    import mpi4py

    from anytimectl import __version__
    from anytimectl.runtime.launch import mpi_library_version

    return {
        "run_id": path.name, "command": "bandwidth", "method": "bandwidth",
        "config": {"workers": worker_counts, "pattern": pattern, "sizes": sizes, "rounds": rounds, "warmup": warmup,
                   "model": model, "dtype": "float32"},
        "versions": {"anytimectl": __version__, "python": sys.version.split()[0], "mpi4py": mpi4py.__version__,
                     "mpi_library": mpi_library_version()},
        "argv": sys.argv[1:], "summary": {},
    }


def _summary(rows: list[dict], model: str | None) -> dict:
    table = ratio_table(rows)
    large = [r["ratio"] for r in table if r["bytes"] >= 2**20]
    summary: dict[str, Any] = {"rows": len(rows), "min_ratio_at_1MiB_or_more": min(large) if large else None,
                               "target_0.9_met": target_met(rows)}
    if model:
        summary["model"] = {str(r["workers"]): {"elements": r["elements"], "round_time": r["ours"]}
                            for r in table if r["model"] == model}
    return summary


def _report(path: Path, rows: list[dict], model: str | None, json_output: bool) -> None:
    if json_output:
        typer.echo(json.dumps({"run_dir": str(path), "rows": rows, "summary": _summary(rows, model)}))
        return
    typer.echo(format_rows(rows))
    for line in model_report(rows, model) if model else []:
        typer.echo(line)
    met = target_met(rows)
    if met is not None:
        worst = min(r["ratio"] for r in ratio_table(rows) if r["bytes"] >= 2**20)
        typer.echo(f"our layer reaches {worst:.2f} of raw MPI throughput at 1 MiB or more "
                   f"(target 0.9: {'met' if met else 'NOT met'})")
    typer.echo(f"run directory: {path}")


def _launch_each(worker_counts: list[int], sizes: list[int], rounds: int, warmup: int, model: str | None, out: Path,
                 name: str | None, mpiexec: str | None, hosts: str | None, json_output: bool,
                 pattern: str = "master") -> int:
    """On a laptop: one MPI job per worker count, each handing its rows back through a file.

    A stop signal (Ctrl-C, SIGTERM, SIGHUP) during a job is passed on to it by `relaunch`: the job hands back the
    sizes it finished, the run is marked `interrupted` and we exit 130. One between jobs stops before the next.
    """
    from anytimectl.runtime.launch import find_mpiexec, relaunch
    from anytimectl.runtime.rundir import RunDirectory, release, reserve

    find_mpiexec(mpiexec)  # a missing mpiexec is a usage error before anything is created
    path = reserve(out, name, f"bandwidth{_stem(pattern)}-{datetime.now().strftime('%Y%m%d-%H%M%S')}")
    env = {}
    between = _stop_request()
    between.install()
    try:
        try:
            if model:
                elements = model_elements(model)  # builds the model: seconds, in which a Ctrl-C may come
                sizes = sorted(set(sizes) | {elements})
                env[MODEL_VARIABLE] = f"{model}:{elements}"
        except KeyboardInterrupt:  # a second signal while counting
            pass
        if between.signum is not None:
            between.restore()
            release(path)  # stopped before anything was measured: leave no run directory behind
            return 130
        run = RunDirectory(path, _metadata(path, sizes, rounds, warmup, model, worker_counts, pattern),
                           {"bandwidth": COLUMNS})
    except BaseException:
        between.restore()
        release(path)  # nothing was measured: leave no empty run directory behind
        raise
    rows: list[dict] = []
    argv = ["bandwidth", "--pattern", pattern, "--sizes", ",".join(map(str, sizes)), "--rounds", str(rounds),
            "--warmup", str(warmup)]
    say = (lambda m: None) if json_output else (lambda m: typer.echo(m, err=True))
    say(f"run directory: {path}")
    try:
        for count in worker_counts:
            if between.signum is not None:
                return _interrupted(run, rows, model, between.signum, say)
            ranks = count + 1 if pattern == "master" else count
            say(f"{count} worker(s): mpiexec -n {ranks}")
            rows_file = path / f".rows-w{count}.json"
            end = relaunch(ranks - 1, argv, mpiexec, hosts, {**env, ROWS_FILE_VARIABLE: str(rows_file)})
            job_rows = json.loads(rows_file.read_text()) if rows_file.is_file() else None
            rows_file.unlink(missing_ok=True)
            if job_rows:
                run.tables["bandwidth"].write([[row[c] for c in COLUMNS] for row in job_rows])
                run.events.log("worker count measured", workers=count, rows=len(job_rows))
                rows.extend(job_rows)
            if end.signal is not None:
                return _interrupted(run, rows, model, end.signal, say)
            if end.code != 0 or job_rows is None:
                reason = f"the MPI job with {count} worker(s) ended with exit code {end.exit_code}"
                run.finish("failed", reason, summary=_summary(rows, model))
                typer.echo(f"anytimectl: error: {reason}", err=True)
                return end.exit_code or 1
    except KeyboardInterrupt:  # a second signal between jobs
        return _interrupted(run, rows, model, between.signum or signal.SIGINT, say)
    finally:
        between.restore()
    run.finish("completed", summary=_summary(rows, model))
    _report(path, rows, model, json_output)
    return 0


def _interrupted(run: Any, rows: list[dict], model: str | None, signum: int, say: Any) -> int:
    from anytimectl.runtime.shell import signal_words

    reason = f"interrupted by {signal_words(signum)}"
    run.finish("interrupted", reason, summary=_summary(rows, model))
    say(f"{reason}; {len(rows)} row(s) kept in {run.path}")
    return 130


def _in_job(sizes: list[int], rounds: int, warmup: int, model: str | None, out: Path, name: str | None,
            json_output: bool, worker_counts: list[int] | None, pattern: str = "master") -> int:
    stop = _stop_request()  # first: a stop signal during start-up is then remembered, not fatal
    stop.install()
    try:
        return _measure_in_job(stop, sizes, rounds, warmup, model, out, name, json_output, worker_counts, pattern)
    finally:
        stop.restore()


def _measure_in_job(stop: Any, sizes: list[int], rounds: int, warmup: int, model: str | None, out: Path,
                    name: str | None, json_output: bool, worker_counts: list[int] | None,
                    pattern: str = "master") -> int:
    import numpy as np

    from anytimectl.runtime.launch import start_rank
    from anytimectl.runtime.rundir import RunDirectory, reserve

    rank = start_rank(1)
    workers = rank.size - 1 if pattern == "master" else rank.size
    if rank.size < 2:
        raise UsageError("bandwidth needs at least two ranks: start it with mpiexec -n 2 or more, or without "
                         "mpiexec and --workers N")
    if worker_counts and not os.environ.get(ROWS_FILE_VARIABLE) and worker_counts != [workers]:
        raise UsageError(f"--workers {','.join(map(str, worker_counts))} disagrees with this MPI job of "
                         f"{rank.size} ranks ({workers} workers); drop --workers under mpiexec")
    model_sizes: dict[int, str] = {}
    rows_file = os.environ.get(ROWS_FILE_VARIABLE)
    if os.environ.get(MODEL_VARIABLE):  # one of our re-launched jobs: the parent counted the model's floats
        label, _, elements = os.environ[MODEL_VARIABLE].rpartition(":")
        model_sizes[int(elements)] = label
    elif model:  # a user's job: rank 0 counts the model's floats, everyone learns the count
        count = np.array([model_elements(model) if rank.rank == 0 else 0], dtype=np.int64)
        rank.comm.broadcast(count).wait()
        sizes = sorted(set(sizes) | {int(count[0])})
        model_sizes[int(count[0])] = model
    run = None
    if rank.rank == 0 and not rows_file:
        path = reserve(out, name, f"bandwidth{_stem(pattern)}-w{workers}-{datetime.now().strftime('%Y%m%d-%H%M%S')}")
        run = RunDirectory(path, _metadata(path, sizes, rounds, warmup, model, [workers], pattern),
                           {"bandwidth": COLUMNS})
    try:
        if pattern == "allreduce":
            from anytimectl.studies.bandwidth_allreduce import measure_allreduce_job

            rows, stopped = measure_allreduce_job(rank.comm, sizes, rounds, warmup, model_sizes, stop)
        else:
            rows, stopped = measure_job(rank.comm, sizes, rounds, warmup, model_sizes, stop)
    except KeyboardInterrupt:  # a second signal: no agreement, every rank leaves now
        if run is not None:
            from anytimectl.runtime.shell import signal_words

            run.finish("interrupted", f"interrupted by {signal_words(stop.signum or signal.SIGINT)}, twice")
        return 130
    code = 130 if stopped else 0
    if rank.rank != 0:
        return code
    if rows_file:
        Path(rows_file).write_text(json.dumps(rows))
        return code
    assert run is not None
    run.tables["bandwidth"].write([[row[c] for c in COLUMNS] for row in rows])
    run.metadata["world_size"] = rank.size
    if stopped:
        assert stop.signum is not None
        return _interrupted(run, rows, model, stop.signum, lambda m: typer.echo(m, err=True))
    run.finish("completed", summary=_summary(rows, model))
    _report(run.path, rows, model, json_output)
    return 0
