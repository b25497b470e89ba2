"""`anytimectl partitions`: what splitting a batch into AMB micro-batches costs, on this model and this machine.

AMB workers process their batch as micro-batches (`--partitions`) so that they can stop at the time limit. The
smaller the micro-batch, the finer the stop, but the less efficient each gradient. This study times the very loop
`train amb` runs (`TensorFlowEngine.compute`, with no time limit) on random data of the model's input shape:
every partition count of a batch is timed in the same process, interleaved repetition by repetition, so the
overhead against one partition is a ratio of two numbers measured side by side.

`eval` measures one batch size in this process; `sweep` measures many (powers of two, as the original
`test_perf_partitions.py batch` did), each batch size in a fresh subprocess so that one size's memory and thread
pools do not colour the next. TensorFlow is imported only inside the functions that measure.
"""

from __future__ import annotations

import json
import math
import os
import statistics
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Annotated, Any, Literal

import typer

from anytimectl.backends.tensorflow import MODEL_INPUT, MODELS
from anytimectl.cli.options import ResultOptions, batch_size_option, with_option_groups
from anytimectl.cli.ranges import parse_counts
from anytimectl.runtime.errors import UsageError
from anytimectl.studies import available_memory

NUM_CLASSES = 10
DEFAULT_THRESHOLD = 0.10
COLUMNS = (
    "batch_size", "partitions", "partition_size", "time_per_step", "time_per_step_spread", "time_per_sample",
    "overhead", "overhead_spread", "threads", "steps", "repeats",
)


def check_model(model: str) -> tuple[int, ...]:
    if model not in MODELS:
        raise UsageError(f"--model {model!r} is not one of: {', '.join(MODELS)}")
    return MODEL_INPUT[model]


def batch_bytes(model: str, batch_size: int) -> int:
    """Memory the measurement holds for one batch before the model sees it: float32 inputs and int64 labels.
    (The model's activations come on top; they are per micro-batch.)"""
    return batch_size * (math.prod(MODEL_INPUT[model]) * 4 + 8)


def check_memory(model: str, batch_size: int, flag: str = "--batch-size") -> None:
    """Refuse a batch whose inputs alone exceed the memory available, before anything starts."""
    needed = batch_bytes(model, batch_size)
    free = available_memory()
    if free is not None and needed > free:
        raise UsageError(f"{flag} {batch_size}: a batch of {model} inputs needs {_size(needed)}, more than the "
                         f"{_size(free)} of memory available; lower {flag}")


def _size(count: int) -> str:
    for unit, scale in (("TiB", 2**40), ("GiB", 2**30), ("MiB", 2**20)):
        if count >= scale:
            return f"{count / scale:.1f} {unit}"
    return f"{count / 2**10:.1f} KiB"


def _out_of_memory(spec: Spec) -> UsageError:
    return UsageError(f"batch {spec.batch_size} of {spec.model} ran out of memory while measuring; lower the batch "
                      "size (--batch-size or --batch-sizes)")


# --- the analysis: overhead and recommendation ---------------------------------------------------------------------
def overheads(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Fill `overhead` (time per sample against one partition of the same batch, minus 1) where it is missing.

    Rows measured by `measure_batch` already carry the median of per-repetition ratios, which is steadier than a
    ratio of medians; constructed or imported rows get the ratio of their times per step.
    """
    base = {r["batch_size"]: r["time_per_step"] for r in rows if r["partitions"] == 1}
    out = []
    for row in rows:
        row = dict(row)
        if row.get("overhead") is None or (isinstance(row["overhead"], float) and math.isnan(row["overhead"])):
            reference = base.get(row["batch_size"])
            row["overhead"] = row["time_per_step"] / reference - 1 if reference else None
        out.append(row)
    return out


@dataclass
class Recommendation:
    partition_size: int | None  # the smallest micro-batch whose overhead stays under the threshold everywhere
    threshold: float
    worst_overhead: float | None  # the largest overhead measured at that partition size
    checked: list[int] = field(default_factory=list)  # partition sizes measured (with at least one P > 1)

    def text(self, model: str) -> str:
        if self.partition_size is None:
            if not self.checked:
                return "no recommendation: measure at least one partition count above 1"
            return (f"every partition size measured costs more than {self.threshold:.0%} on {model} here; "
                    f"use the largest batch per micro-batch you can (smallest measured: {min(self.checked)})")
        return (f"recommendation: keep micro-batches at {self.partition_size} examples or more "
                f"(--partitions <= batch / {self.partition_size}); overhead at that size <= "
                f"{self.worst_overhead:+.1%} (threshold {self.threshold:.0%}) for {model} on this machine")


def recommend(rows: list[dict[str, Any]], threshold: float = DEFAULT_THRESHOLD) -> Recommendation:
    """The smallest partition size whose overhead stays under `threshold` at that size and every larger one.

    Sizes are compared across batch sizes: a size counts as safe only when every measured (batch, P) with that
    partition size, and every larger partition size, stays under the threshold. Rows with one partition are the
    baseline and do not vote.
    """
    rows = [r for r in overheads(rows) if r["partitions"] > 1 and r.get("overhead") is not None]
    worst: dict[int, float] = {}
    for row in rows:
        size = int(row["partition_size"])
        worst[size] = max(worst.get(size, -math.inf), float(row["overhead"]))
    sizes = sorted(worst)
    best = None
    for size in reversed(sizes):
        if worst[size] >= threshold:
            break
        best = size
    return Recommendation(best, threshold, worst.get(best) if best is not None else None, sizes)


# --- the measurement -----------------------------------------------------------------------------------------------
@dataclass
class Spec:
    """One batch size to measure; what a sweep sends to its subprocess."""

    model: str
    batch_size: int
    partitions: list[int]
    steps: int
    repeats: int
    warmup: int
    threads: int
    seed: int = 0


def measure_batch(spec: Spec, progress=None) -> list[dict[str, Any]]:
    """Time `engine.compute(x, y, P, inf)` for every P of one batch, interleaved, in this process.

    Running out of memory (numpy's MemoryError, TensorFlow's ResourceExhaustedError) is a UsageError: the batch
    is too large for this machine.
    """
    try:
        return _measure_batch(spec, progress)
    except MemoryError:
        raise _out_of_memory(spec) from None
    except Exception as error:
        if type(error).__name__ == "ResourceExhaustedError":  # tf.errors, without importing TensorFlow here
            raise _out_of_memory(spec) from None
        raise


def _measure_batch(spec: Spec, progress=None) -> list[dict[str, Any]]:
    from anytimectl.backends.tensorflow.engine import TensorFlowEngine, configure

    configure(spec.threads, spec.seed)
    shape = MODEL_INPUT[spec.model]
    engine = TensorFlowEngine(spec.model, shape, NUM_CLASSES, "adam", 1e-4, 0.0)
    import numpy as np

    rng = np.random.default_rng(spec.seed)
    x = rng.standard_normal((spec.batch_size, *shape), dtype=np.float32)
    y = rng.integers(0, NUM_CLASSES, spec.batch_size).astype(np.int64)
    counts = sorted(set([1, *spec.partitions]))
    for p in counts:  # the first call traces the graph; later ones settle the thread pools and allocator
        for _ in range(spec.warmup):
            engine.compute(x, y, p, math.inf)
    per_step: dict[int, list[float]] = {p: [] for p in counts}
    for repeat in range(spec.repeats):
        order = counts if repeat % 2 == 0 else counts[::-1]  # no count always runs first (or right after another)
        for p in order:
            start = time.perf_counter()
            for _ in range(spec.steps):
                _, examples, done = engine.compute(x, y, p, math.inf)
            per_step[p].append((time.perf_counter() - start) / spec.steps)
            if done != p or examples != spec.batch_size:  # pragma: no cover - would be an engine bug
                raise RuntimeError(f"compute ran {done} of {p} micro-batches ({examples} examples)")
        if progress is not None:
            progress(f"batch {spec.batch_size}: repetition {repeat + 1}/{spec.repeats} done")
    rows = []
    for p in counts:
        times = per_step[p]
        ratios = [t / b for t, b in zip(times, per_step[1], strict=True)]
        median = statistics.median(times)
        rows.append({
            "batch_size": spec.batch_size, "partitions": p, "partition_size": spec.batch_size // p,
            "time_per_step": median, "time_per_step_spread": max(times) - min(times),
            "time_per_sample": median / spec.batch_size, "overhead": statistics.median(ratios) - 1,
            "overhead_spread": max(ratios) - min(ratios), "threads": spec.threads, "steps": spec.steps,
            "repeats": spec.repeats,
        })
    return rows


def measure_in_subprocess(spec: Spec, timeout: float | None = None) -> list[dict[str, Any]]:
    """The same measurement in a fresh Python: its own TF runtime, thread pools and memory."""
    from anytimectl.runtime.launch import child_python

    command = [*child_python(), "-m", "anytimectl.studies.partitions", json.dumps(asdict(spec))]
    result = subprocess.run(command, capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL)
    if result.returncode == UsageError.exit_code:  # the measurement's own one-line verdict (e.g. out of memory)
        lines = result.stderr.strip().splitlines()
        raise UsageError(lines[-1] if lines else str(_out_of_memory(spec)))
    if result.returncode != 0:
        tail = result.stderr.strip().splitlines()[-1:] or [f"exit {result.returncode}"]
        raise RuntimeError(f"measuring batch {spec.batch_size} failed: {tail[0]}")
    return json.loads(result.stdout.strip().splitlines()[-1])


# --- the commands --------------------------------------------------------------------------------------------------
partitions_app = typer.Typer(
    help="Cost of splitting a batch into AMB micro-batches: time per step and per sample against partitions.",
    no_args_is_help=True,
    rich_markup_mode=None,
    add_completion=False,  # a subcommand of anytimectl, which has the completion options
)

_Model = Annotated[Literal[MODELS], typer.Option(metavar="MODEL", help="The network to time: "
                                                 f"{', '.join(MODELS)}.")]
_Steps = Annotated[int, typer.Option(metavar="N", min=1, help="Steps timed per repetition (the original's "
                                                              "--last_step).")]
_Repeats = Annotated[int, typer.Option(metavar="N", min=1, help="Repetitions; the median and spread are over "
                                                                "these.")]
_Warmup = Annotated[int, typer.Option(metavar="N", min=0, help="Untimed steps per partition count first.")]
_Threads = Annotated[int | None, typer.Option(metavar="N", min=1, show_default=False,
                                              help="TensorFlow threads (default: every core, as `train --workers 0` "
                                                   "gets; a rank sharing the host with others gets cores / ranks).")]
_Threshold = Annotated[float, typer.Option(metavar="F", min=0, max=10,
                                           help="Overhead allowed by the recommendation (0.10 = 10%).")]


def _threads(threads: int | None, threshold: float) -> int:
    from anytimectl.runtime.launch import threads_per_rank

    if threshold <= 0:
        raise UsageError(f"--threshold {threshold}: give a positive fraction such as 0.1 (10%)")
    return threads_per_rank(1, threads)


def _default_partitions(batch_size: int) -> list[int]:
    """Like the original sweep: P = 1, 2, 4, ... while P < B (every micro-batch at least 2 examples)."""
    counts, p = [], 1
    while p < batch_size or p == 1:
        counts.append(p)
        p *= 2
    return counts


@with_option_groups()
def eval_command(
    result: ResultOptions,
    model: _Model = "cifar10",
    batch_size: Annotated[int, batch_size_option(
        "Examples per worker per step: the batch split into each of --partitions' counts.", panel=None)] = 512,
    partitions: Annotated[str, typer.Option(metavar="COUNTS", help="Partition counts to compare with 1: N, a list "
                                                                   "1,4,16 or a range 2..64 (powers of two).")] = "16",
    steps: _Steps = 10,
    repeats: _Repeats = 3,
    warmup: _Warmup = 2,
    threads: _Threads = None,
    threshold: _Threshold = DEFAULT_THRESHOLD,
) -> None:
    """Time one batch size split into 1 and P micro-batches, in this process.

    Runs the AMB micro-batch loop of `train amb` with no time limit on random data of the model's input shape:
    --warmup untimed steps per count, then --repeats repetitions of --steps steps, counts interleaved. Reports
    the median time per step and per sample, the spread (max - min over repetitions) and the overhead against
    one partition (median of the per-repetition ratios, minus 1). Writes a run directory with partitions.csv.

    \b
    Examples:
      anytimectl partitions eval --model cifar10 --batch-size 512 --partitions 16
      anytimectl partitions eval --model mnist --batch-size 256 \\
          --partitions 2..64 --threads 1
      anytimectl partitions eval --model toy-fc --batch-size 64 \\
          --partitions 4,16 --steps 3 --repeats 2 --json
    """
    threads_used = _threads(threads, threshold)
    counts = parse_counts(partitions, "--partitions")
    if max(counts) > batch_size:
        raise UsageError(f"--partitions {max(counts)} exceeds --batch-size {batch_size}: a micro-batch needs at "
                         "least one example; lower --partitions or raise --batch-size")
    check_memory(model, batch_size)
    spec = Spec(model, batch_size, counts, steps, repeats, warmup, threads_used)
    _run("eval", model, [spec], threshold, result, isolate=False)


@with_option_groups()
def sweep_command(
    result: ResultOptions,
    model: _Model = "toy-fc",
    batch_sizes: Annotated[str, typer.Option(metavar="SIZES", help="Batch sizes: A..B (powers of two from A), or a "
                                                                   "list 64,512.")] = "4..4096",
    partitions: Annotated[str | None, typer.Option(metavar="COUNTS", show_default=False,
                                                   help="Partition counts (default: 1, 2, 4, ... below each batch "
                                                        "size, as the original); counts above a batch are skipped.")]
    = None,
    steps: _Steps = 10,
    repeats: _Repeats = 3,
    warmup: _Warmup = 2,
    threads: _Threads = None,
    threshold: _Threshold = DEFAULT_THRESHOLD,
    isolate: Annotated[bool, typer.Option(help="Each batch size in a fresh subprocess (default), or all in this "
                                               "one.")] = True,
    save_plot: Annotated[bool, typer.Option("--save-plot", help="Also draw the partitions figure into "
                                                                "RUN_DIR/figures.")] = False,
) -> None:
    """Sweep batch sizes and partition counts (powers of two), as the original test_perf_partitions.py batch.

    Each batch size is measured like `partitions eval`, by default in its own subprocess. Prints the table and
    the smallest micro-batch size whose overhead stays under --threshold at that size and every larger one.

    \b
    Examples:
      anytimectl partitions sweep --model toy-fc --batch-sizes 4..4096 --save-plot
      anytimectl partitions sweep --model cifar10 --batch-sizes 128..1024 \\
          --partitions 1..64 --steps 3
      anytimectl plot runs/partitions-toy-fc-* --type partitions
    """
    threads_used = _threads(threads, threshold)
    sizes = parse_counts(batch_sizes, "--batch-sizes")
    counts = parse_counts(partitions, "--partitions") if partitions else None
    if counts is not None and min(counts) > max(sizes):
        raise UsageError(f"--partitions {min(counts)} exceeds every --batch-sizes value (largest {max(sizes)})")
    check_memory(model, max(sizes), "--batch-sizes")
    specs = []
    for size in sizes:
        chosen = [p for p in counts if p <= size] if counts is not None else _default_partitions(size)
        specs.append(Spec(model, size, chosen, steps, repeats, warmup, threads_used))
    path = _run("sweep", model, specs, threshold, result, isolate=isolate)
    if save_plot:
        import matplotlib

        from anytimectl.plots.render import build_figures, save_figures

        matplotlib.use("Agg")
        figures, _ = build_figures([path], kind="partitions")
        for written in save_figures(figures, path / "figures", ["png"]):
            typer.echo(str(written))


def _run(mode: str, model: str, specs: list[Spec], threshold: float, result: ResultOptions, isolate: bool) -> Path:
    from anytimectl import __version__
    from anytimectl.studies import Study

    json_output = result.json
    first = specs[0]
    metadata = {
        "command": "partitions", "method": "partitions", "mode": mode,
        "config": {"model": model, "batch_sizes": [s.batch_size for s in specs],
                   "partitions": {s.batch_size: s.partitions for s in specs}, "steps": first.steps,
                   "repeats": first.repeats, "warmup": first.warmup, "threads": first.threads,
                   "threshold": threshold, "isolate": isolate, "input_shape": MODEL_INPUT[model]},
        "versions": {"anytimectl": __version__, "python": sys.version.split()[0]},
        "argv": sys.argv[1:], "summary": {},
    }
    rows: list[dict[str, Any]] = []
    with Study(result.out, result.name, f"partitions-{model}-{datetime.now().strftime('%Y%m%d-%H%M%S')}", metadata,
               {"partitions": COLUMNS}, partial=lambda: _summary(rows, threshold)) as study:
        path, run = study.path, study.run
        say = (lambda m: None) if json_output else (lambda m: typer.echo(m, err=True))
        say(f"run directory: {path}")
        if not isolate:
            from anytimectl.runtime.launch import limit_threads

            limit_threads(first.threads)
        for spec in specs:
            started = time.time()
            say(f"batch {spec.batch_size}: partitions {', '.join(map(str, sorted(set([1, *spec.partitions]))))}")
            # a child measures in its own Python; a stop signal here unwinds subprocess.run, which kills it
            batch_rows = measure_in_subprocess(spec) if isolate else measure_batch(spec, progress=say)
            study.write("partitions", [[row[c] for c in COLUMNS] for row in batch_rows])
            run.events.log("batch measured", batch_size=spec.batch_size, seconds=round(time.time() - started, 2))
            rows.extend(batch_rows)
        if not isolate or mode == "eval":
            _record_tensorflow_version(run)
        advice = recommend(rows, threshold)
        summary = _summary(rows, threshold)
        study.complete(summary)
    if json_output:
        typer.echo(json.dumps({"run_dir": str(path), "rows": rows, "recommendation": summary["recommendation"]}))
    else:
        typer.echo(format_table(rows))
        typer.echo(advice.text(model))
        typer.echo(f"run directory: {path}")
    return path


def _record_tensorflow_version(run) -> None:
    tf = sys.modules.get("tensorflow")
    if tf is not None:
        run.metadata["versions"]["tensorflow"] = tf.__version__


def _summary(rows: list[dict[str, Any]], threshold: float) -> dict[str, Any]:
    advice = recommend(rows, threshold) if rows else Recommendation(None, threshold, None)
    return {"rows": len(rows), "recommendation": {"partition_size": advice.partition_size, "threshold": threshold,
                                                  "worst_overhead": advice.worst_overhead}}


def format_table(rows: list[dict[str, Any]]) -> str:
    header = f"{'batch':>6} {'P':>5} {'size':>6} {'ms/step':>10} {'spread':>8} {'us/sample':>10} {'overhead':>9}"
    lines = [header]
    for r in rows:
        lines.append(f"{r['batch_size']:>6} {r['partitions']:>5} {r['partition_size']:>6} "
                     f"{r['time_per_step'] * 1e3:>10.2f} {r['time_per_step_spread'] * 1e3:>8.2f} "
                     f"{r['time_per_sample'] * 1e6:>10.1f} {r['overhead']:>+9.1%}")
    return "\n".join(lines)


partitions_app.command("eval")(eval_command)
partitions_app.command("sweep")(sweep_command)


def _subprocess_main(argument: str) -> None:
    """`python -m anytimectl.studies.partitions SPEC_JSON`: measure one batch and print its rows as one JSON line."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    spec = Spec(**json.loads(argument))
    from anytimectl.runtime.launch import limit_threads

    limit_threads(spec.threads)
    try:
        rows = measure_batch(spec)
    except UsageError as error:
        sys.stderr.write(f"{error}\n")
        sys.exit(error.exit_code)
    sys.stdout.write(json.dumps(rows) + "\n")


if __name__ == "__main__":
    _subprocess_main(sys.argv[1])
