"""`anytimectl train amb` and `anytimectl train fmb`: master-worker SGD on TensorFlow or PyTorch."""

from __future__ import annotations

from typing import Annotated, Any, Literal

import typer

from anytimectl.commands.common import (
    check_data,
    check_devices,
    check_stragglers,
    check_workers,
    common_config,
    default_steps,
    exit_with,
    resolve_model,
    run_request,
)
from anytimectl.errors import UsageError
from anytimectl.options import (
    PANEL_TRAINING,
    DataOptions,
    LaunchOptions,
    LengthOptions,
    OptimizerOptions,
    OutputOptions,
    StragglerOptions,
    with_option_groups,
)

DEFAULT_STEPS = 60
Backend = Annotated[Literal["tensorflow", "torch"], typer.Option(
    rich_help_panel=PANEL_TRAINING, help="The framework that computes the gradients.")]


def _batch_option(text: str) -> Any:
    return typer.Option(metavar="N", min=1, rich_help_panel=PANEL_TRAINING, help=text)


@with_option_groups()
def amb(
    launch: LaunchOptions, data: DataOptions, optimizer: OptimizerOptions, length: LengthOptions,
    stragglers: StragglerOptions, output: OutputOptions,
    backend: Backend = "tensorflow",
    batch_size: Annotated[int, _batch_option("The most examples a worker may process in one round.")] = 192,
    partitions: Annotated[int, typer.Option(
        metavar="P", min=1, rich_help_panel=PANEL_TRAINING,
        help="Micro-batches the batch is split into (the original's amb_num_partitions).")] = 6,
    time_limit: Annotated[str, typer.Option(
        metavar="SECONDS|auto",
        rich_help_panel=PANEL_TRAINING,
        help="Seconds of compute per round, or auto: calibrated so that the expected batch is --match-batch.")]
    = "auto",
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
      anytimectl train amb --workers 4 --induce niagara:0.03 --time-limit 0.25 --partitions 16
      anytimectl train amb --backend torch --workers 4 --induce niagara:0.03
      mpiexec -n 5 anytimectl train amb --dataset mnist --data-dir ~/data/mnist \\
          --batch-size 256 --time-limit 2.5 --partitions 8 --test-size 100
    """
    if partitions > batch_size:
        raise UsageError(f"--partitions {partitions} exceeds --batch-size {batch_size}: a micro-batch needs at least "
                         "one example; lower --partitions or raise --batch-size")
    limit: float | None = None
    if time_limit != "auto":
        try:
            limit = float(time_limit)
        except ValueError:
            raise UsageError(f"--time-limit {time_limit!r}: give seconds (e.g. 0.5) or auto") from None
        if not (limit > 0 and limit < float("inf")):
            raise UsageError(f"--time-limit {time_limit}: must be a positive number of seconds, or auto")
    match = match_batch or max(1, round(batch_size * 2 / 3))
    if match > batch_size:
        raise UsageError(f"--match-batch {match}: must be between 1 and --batch-size {batch_size}")
    exit_with(_train("amb", launch, data, optimizer, length, stragglers, output, backend, batch_size,
                     {"partitions": partitions, "time_limit": limit, "time_limit_requested": time_limit,
                      "match_batch": match}))


@with_option_groups()
def fmb(
    launch: LaunchOptions, data: DataOptions, optimizer: OptimizerOptions, length: LengthOptions,
    stragglers: StragglerOptions, output: OutputOptions,
    backend: Backend = "tensorflow",
    batch_size: Annotated[int, _batch_option("Examples every worker processes per step.")] = 128,
) -> None:
    """Fixed Mini-Batch: every worker computes a fixed batch; each step waits for the slowest.

    \b
    Examples:
      anytimectl train fmb --workers 4 --induce niagara:0.03
      anytimectl train fmb --workers 4 --slow 2:3 --steps 50 --json
      anytimectl train fmb --backend torch --workers 2 --optimizer sgd --learning-rate 0.05
      mpiexec -n 11 anytimectl train fmb --dataset cifar10 --data-dir ~/data --batch-size 242
    """
    exit_with(_train("fmb", launch, data, optimizer, length, stragglers, output, backend, batch_size,
                     {"partitions": 1, "time_limit": None, "time_limit_requested": None, "match_batch": None}))


def _train(method: str, launch: LaunchOptions, data: DataOptions, optimizer: OptimizerOptions,
           length: LengthOptions, stragglers: StragglerOptions, output: OutputOptions, backend: str,
           batch_size: int, amb: dict[str, Any]) -> int:
    model = resolve_model(data, backend)
    workers = launch.workers
    check_stragglers(stragglers, list(range(1, workers + 1)) if workers else [])
    check_devices(launch)
    check_workers(launch, backend, (workers or 0) + 1)
    config = common_config(launch, data, length, stragglers, optimizer)
    config.update(check_data(data, length, workers))
    config.update(model=model, backend=backend, batch_size=batch_size, steps=default_steps(length, DEFAULT_STEPS),
                  **amb)
    return run_request(command="train", method=method, protocol="master_worker", backend=backend,
                       dataset=data.dataset, model=model, config=config, launch=launch, output=output,
                       seed=stragglers.seed)
