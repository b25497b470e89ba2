"""`anytimectl train amb` and `anytimectl train fmb`: master-worker SGD on TensorFlow, PyTorch or the simulated
backend, synchronous (the original's default) or asynchronous (the original's Async-Timed `--dist_sgy async`)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated, Any, Literal

import typer

from anytimectl.cli import options as opt
from anytimectl.cli.commands.common import Batch, default_steps, exit_with, prepare, run_request
from anytimectl.cli.options import (
    PANEL_TRAINING,
    CheckpointOptions,
    with_option_groups,
)
from anytimectl.runtime.errors import UsageError

DEFAULT_STEPS = 60
PANEL_PROTOCOL = "Protocol"
PANEL_SIM = "Simulated backend (--backend sim)"
Backend = Annotated[Literal["tensorflow", "torch", "sim"], typer.Option(
    rich_help_panel=PANEL_TRAINING,
    help="The framework that computes the gradients; sim: no framework, compute is sleeping (see --sim-*).")]
#: what the async options mean when left out (the original's defaults)
ASYNC_DEFAULTS = {"async_master": "batch", "async_batch_min": 4, "async_time_limit": 0.1, "async_delay_std": None}
SIM_DEFAULTS = {"sim_example_time": 1e-3, "sim_params": 1 << 16, "sim_examples": 60_000, "sim_half_examples": 20_000}


def _seconds_or_auto(value: str) -> str:
    """--time-limit: `auto`, or a positive number of seconds (kept as given, for metadata's time_limit_requested)."""
    if value is None or value == "auto":
        return value
    try:
        seconds = float(value)
    except ValueError:
        raise typer.BadParameter(f"{value!r} is neither seconds (e.g. 0.5) nor auto") from None
    if not (0 < seconds < float("inf")):
        raise typer.BadParameter("must be a positive number of seconds, or auto")
    return value


@dataclass
class ProtocolOptions:
    """Synchronous or asynchronous master-worker SGD, and the asynchronous master's rule."""

    protocol: Annotated[Literal["sync", "async"], typer.Option(
        rich_help_panel=PANEL_PROTOCOL,
        help="sync: every step waits for every worker (the original's syncr); async: workers never wait, the "
             "master updates by --async-master (the original's Async-Timed).")] = "sync"
    async_master: Annotated[Literal["batch", "time"] | None, typer.Option(
        rich_help_panel=PANEL_PROTOCOL, show_default=False,
        help="async: update after --async-batch-min contributions (batch, the default) or every "
             "--async-time-limit seconds (time).")] = None
    async_batch_min: Annotated[int | None, typer.Option(
        metavar="N", min=1, rich_help_panel=PANEL_PROTOCOL, show_default=False,
        help="async batch: contributions per update (default 4).")] = None
    async_time_limit: Annotated[float | None, opt.option(
        "async time: seconds between updates, with at least one contribution (default 0.1).", metavar="SECONDS",
        panel=PANEL_PROTOCOL, above=0, show_default=False)] = None
    async_delay_std: Annotated[float | None, typer.Option(
        metavar="SECONDS", min=0, rich_help_panel=PANEL_PROTOCOL, show_default=False,
        help="async: simulated communication delay |N(0, S)| on every message (default: none).")] = None

    def resolve(self, workers: int | None) -> dict[str, Any]:
        """Config entries; the async options only with --protocol async."""
        given = {name: getattr(self, name) for name in ASYNC_DEFAULTS if getattr(self, name) is not None}
        if self.protocol == "sync":
            if given:
                name = next(iter(given))
                raise UsageError(f"--{name.replace('_', '-')} applies to --protocol async only")
            return {"protocol": "sync"}
        if workers == 0:
            raise UsageError("--protocol async needs workers: use --workers 1 or more")
        values = {**ASYNC_DEFAULTS, **given}
        if values["async_delay_std"] == 0:
            values["async_delay_std"] = None
        return {"protocol": "async", **values}


@dataclass
class SimOptions:
    """The simulated backend: compute is a sleep, parameters are a buffer, the loss a documented curve."""

    sim_example_time: Annotated[float | None, typer.Option(
        metavar="SECONDS", min=0, rich_help_panel=PANEL_SIM, show_default=False,
        help="Compute time per example (default 0.001).")] = None
    sim_params: Annotated[int | None, typer.Option(
        metavar="N", min=3, rich_help_panel=PANEL_SIM, show_default=False,
        help="float32 parameters moved per step (default 65536 = 256 KiB).")] = None
    sim_examples: Annotated[int | None, typer.Option(
        metavar="N", min=1, rich_help_panel=PANEL_SIM, show_default=False,
        help="Training examples (sets epochs and shards; default 60000).")] = None
    sim_half_examples: Annotated[float | None, typer.Option(
        metavar="N", min=1, rich_help_panel=PANEL_SIM, show_default=False,
        help="Examples after which loss and accuracy are halfway to their final values (default 20000).")] = None

    def resolve(self, backend: str, data: opt.DataOptions) -> dict[str, Any]:
        given = {name: getattr(self, name) for name in SIM_DEFAULTS if getattr(self, name) is not None}
        if backend != "sim":
            if given:
                raise UsageError(f"--{next(iter(given)).replace('_', '-')} applies to --backend sim only")
            return {}
        if data.dataset != "digits" or data.data_dir is not None:
            raise UsageError("--backend sim trains on no data: drop --dataset/--data-dir (--sim-examples sets the "
                             "training-set size)")
        values = {**SIM_DEFAULTS, **given}
        return {"backend_options": {"params": values["sim_params"], "example_time": values["sim_example_time"],
                                    "half_examples": values["sim_half_examples"],
                                    "examples": values["sim_examples"]}}


@with_option_groups()
def amb(
    ctx: typer.Context,
    launch: opt.LaunchOptions, data: opt.DataOptions, optimizer: opt.OptimizerOptions, length: opt.LengthOptions,
    stragglers: opt.StragglerOptions, output: opt.OutputOptions, protocol: ProtocolOptions, sim: SimOptions,
    checkpoints: CheckpointOptions,
    backend: Backend = "tensorflow",
    batch_size: Annotated[int, opt.batch_size_option(
        "Examples per worker per round, at most: a ceiling (a worker stops at --time-limit, so its batch is what it "
        "computed by then, up to N).")] = 192,
    partitions: Annotated[int, typer.Option(
        metavar="P", min=1, rich_help_panel=PANEL_TRAINING,
        help="Micro-batches the batch is split into (the original's amb_num_partitions).")] = 6,
    time_limit: Annotated[str, opt.option(
        "Seconds of compute per round, or auto: calibrated so that the expected batch is --match-batch.",
        metavar="SECONDS|auto", panel=PANEL_TRAINING, parser=_seconds_or_auto,
        shown_range="x>0")] = "auto",
    match_batch: Annotated[int | None, typer.Option(
        metavar="N", min=1, rich_help_panel=PANEL_TRAINING, show_default=False,
        help="auto: the expected batch to match (default: 2/3 of --batch-size, the original's 242-of-356 "
             "headroom).")] = None,
) -> None:
    """Anytime Mini-Batch: every worker computes for a fixed time; its batch is whatever it finished.

    Each round a worker sleeps its induced straggler delay, then processes micro-batches (--batch-size /
    --partitions examples each) until --time-limit seconds have passed since the round began (always at least
    one), and sends the sum of its gradients and its example count. The master averages per example.

    \b
    Examples:
      anytimectl train amb --workers 4 --induce niagara:0.03
      anytimectl train amb --workers 4 --induce niagara:0.03 --time-limit 0.25 \\
          --partitions 16
      anytimectl train amb --backend torch --workers 4 --induce niagara:0.03
      mpiexec -n 5 anytimectl train amb --dataset mnist --data-dir ~/data/mnist \\
          --batch-size 256 --time-limit 2.5 --partitions 8 --test-size 100
      anytimectl train amb --workers 4 --checkpoint-every 100 --name a1
      anytimectl train amb --resume runs/a1 --steps 2000
    """
    if checkpoints.resume is not None:
        exit_with(_resume("amb", ctx, checkpoints, launch, length, output))
        return
    if partitions > batch_size:
        raise UsageError(f"--partitions {partitions} exceeds --batch-size {batch_size}: a micro-batch needs at least "
                         "one example; lower --partitions or raise --batch-size")
    limit = None if time_limit == "auto" else float(time_limit)
    match = match_batch or max(1, round(batch_size * 2 / 3))
    if match > batch_size:
        raise UsageError(f"--match-batch {match}: must be between 1 and --batch-size {batch_size}")
    exit_with(_train("amb", launch, data, optimizer, length, stragglers, output, protocol, sim, checkpoints, backend,
                     batch_size,
                     {"partitions": partitions, "time_limit": limit, "time_limit_requested": time_limit,
                      "match_batch": match}))


@with_option_groups()
def fmb(
    ctx: typer.Context,
    launch: opt.LaunchOptions, data: opt.DataOptions, optimizer: opt.OptimizerOptions, length: opt.LengthOptions,
    stragglers: opt.StragglerOptions, output: opt.OutputOptions, protocol: ProtocolOptions, sim: SimOptions,
    checkpoints: CheckpointOptions,
    backend: Backend = "tensorflow",
    batch_size: Annotated[int, opt.batch_size_option("Examples per worker per step.")] = 128,
) -> None:
    """Fixed Mini-Batch: every worker computes a fixed batch; each step waits for the slowest.

    \b
    Examples:
      anytimectl train fmb --workers 4 --induce niagara:0.03
      anytimectl train fmb --workers 4 --slow 2:3 --steps 50 --json
      anytimectl train fmb --backend torch --workers 2 --optimizer sgd \\
          --learning-rate 0.05
      mpiexec -n 11 anytimectl train fmb --dataset cifar10 --data-dir ~/data \\
          --batch-size 242
      anytimectl train fmb --resume runs/f1 --steps 2000
    """
    if checkpoints.resume is not None:
        exit_with(_resume("fmb", ctx, checkpoints, launch, length, output))
        return
    exit_with(_train("fmb", launch, data, optimizer, length, stragglers, output, protocol, sim, checkpoints, backend,
                     batch_size,
                     {"partitions": 1, "time_limit": None, "time_limit_requested": None, "match_batch": None}))


def _train(method: str, launch: opt.LaunchOptions, data: opt.DataOptions, optimizer: opt.OptimizerOptions,
           length: opt.LengthOptions, stragglers: opt.StragglerOptions, output: opt.OutputOptions,
           protocol: ProtocolOptions, sim: SimOptions, checkpoints: CheckpointOptions, backend: str, batch_size: int,
           amb: dict[str, Any]) -> int:
    sim_config = sim.resolve(backend, data)
    protocol_config = protocol.resolve(launch.workers)
    # the simulated backend allocates no inputs: no batch to guard
    config = prepare(launch, data, length, stragglers, optimizer, checkpoints, backend=backend, has_master=True,
                     batch=None if sim_config else Batch(batch_size),
                     simulated=_sim_examples(sim_config) if sim_config else None)
    config.update(batch_size=batch_size, steps=default_steps(length, DEFAULT_STEPS), **amb, **sim_config,
                  **protocol_config)
    from anytimectl.runtime.run_config import AsyncMasterWorkerConfig, MasterWorkerConfig

    typed = (AsyncMasterWorkerConfig if protocol.protocol == "async" else MasterWorkerConfig)(**config)
    return run_request(command="train", method=method,
                       protocol="async_master_worker" if protocol.protocol == "async" else "master_worker",
                       backend=backend, dataset=typed.dataset, model=typed.model, config=typed,
                       launch=launch, output=output, seed=stragglers.seed)


def _resume(method: str, ctx: typer.Context, checkpoints: CheckpointOptions, launch: opt.LaunchOptions,
            length: opt.LengthOptions, output: opt.OutputOptions) -> int:
    """Continue a recorded run through the one resume path (commands/resume.py), with the protocol it ran."""
    from anytimectl.cli.commands.resume import ResumeRules, given_options, resume_run
    from anytimectl.runtime.checkpoints import read_metadata

    recorded = read_metadata(checkpoints.resume)["config"]
    values = dict(ctx.params)
    # --time-limit auto is recorded as the limit it calibrated to: the same request repeated is no change
    if values.get("time_limit") is not None and values["time_limit"] == recorded.get("time_limit_requested"):
        values["time_limit"] = recorded.get("time_limit")
    protocol = "async_master_worker" if recorded.get("protocol") == "async" else "master_worker"
    return resume_run(ResumeRules(command="train", method=method, protocol=protocol), given_options(ctx), values,
                      checkpoints, launch, length, output)


def _sim_examples(sim_config: dict[str, Any]) -> Any:
    """The simulated backend's training set, as `describe_dataset` describes a real one (nothing to read)."""
    from anytimectl.backends.sim import MODEL_INPUT, NUM_CLASSES, TEST_EXAMPLES
    from anytimectl.data import DatasetInfo

    return DatasetInfo(sim_config["backend_options"]["examples"], TEST_EXAMPLES, tuple(MODEL_INPUT["sim"]),
                       NUM_CLASSES)
