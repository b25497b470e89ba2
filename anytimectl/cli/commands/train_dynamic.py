"""`anytimectl train dynamic`: all-reduce SGD with no master whose per-worker batches adapt (dynamic batching)."""

from __future__ import annotations

from functools import partial
from typing import Annotated, Literal

import typer

from anytimectl.cli import options as opt
from anytimectl.cli.commands.common import Batch, exit_with, prepare, run_request
from anytimectl.cli.commands.resume import ResumeRules, given_options, resume_run
from anytimectl.cli.options import (
    CheckpointOptions,
    with_option_groups,
)
from anytimectl.exchange.options import ExchangeOptions
from anytimectl.protocols.batch_policies import PANEL_POLICY, PolicyOptions
from anytimectl.runtime.errors import UsageError

DEFAULT_EPOCHS = 10.0
PANEL_INPUT = "Input images"
#: --resume (commands/resume.py): every policy's state and history is in the checkpoint; the run may be extended.
RESUME = ResumeRules(command="train", method="dynamic", protocol="dynamic")


_option = partial(opt.option, metavar="N", panel=PANEL_INPUT)


def _channels(value: str) -> int | None:
    """--channels: 1 or 3 (the conversions there are: to grayscale, or grayscale replicated)."""
    if value is None or isinstance(value, int):
        return value
    if str(value).strip() not in ("1", "3"):
        raise typer.BadParameter("give 1 or 3")
    return int(value)


@with_option_groups()
def dynamic(
    ctx: typer.Context,
    launch: opt.LaunchOptions, data: opt.DataOptions, optimizer: opt.OptimizerOptions, length: opt.LengthOptions,
    stragglers: opt.StragglerOptions, output: opt.OutputOptions, exchange: ExchangeOptions, batches: PolicyOptions,
    checkpoints: CheckpointOptions,
    batch_size: Annotated[int, opt.batch_size_option("Examples per worker per step at the start.", panel=PANEL_POLICY)]
    = 32,
    lr_scaling: Annotated[Literal["linear", "sqrt", "none"], typer.Option(
        rich_help_panel=PANEL_POLICY,
        help="Learning rate x (global batch / starting global batch), x its square root, or unchanged.")]
    = "linear",
    backend: Annotated[Literal["torch", "tensorflow"], typer.Option(
        rich_help_panel="Training", help="The framework that computes the gradients.")] = "torch",
    transport: Annotated[Literal["mpi", "torch"], typer.Option(
        rich_help_panel="Training",
        help="Gradient all-reduce over MPI (fastest on CPUs) or torch.distributed (NCCL on GPUs, gloo on "
             "CPUs; --backend torch).")] = "mpi",
    resize: Annotated[int | None, _option("Resize images to N x N (bilinear; the original used 224).", min=1,
                                          show_default=False)] = None,
    channels: Annotated[int | None, _option("Convert images to 1 or 3 channels (grayscale replicated).", metavar="C",
                                            parser=_channels, shown_range="1 or 3", show_default=False)] = None,
    normalize: Annotated[Literal["none", "imagenet"], typer.Option(
        rich_help_panel=PANEL_INPUT, help="imagenet: torchvision's ImageNet mean and std (3 channels).")]
    = "none",
) -> None:
    """Synchronous data-parallel SGD with no master; per-worker batches adapt.

    Every worker computes the sum of its gradients over its batch; one all-reduce sums them with the example
    counts, and every worker applies the same per-example mean. --compressor sends the gradients through any
    exchange of `compress train` instead (a cast, a sparsifier, a quantiser; with error feedback if asked).
    The policy decides after each epoch (one pass over the training set by all workers together); each
    worker's share of the data follows its batch. The learning rate follows the global batch (--lr-scaling).
    Workers are numbered 1..N: --slow 2:2 is the second worker.

    \b
    Policies (b = per-worker batch, kept within --min-batch..--max-batch):
      static      b fixed
      increasing  double b every --every epochs
      decreasing  halve b every --every epochs
      loss        score = --loss-weight x mean loss + --time-weight x epoch
                  time; halve if it rose by more than --tolerance, double
                  if it fell by more
      progress    Prechelt's P_k over the last --progress-k epoch losses:
                  double if P_k < --progress-threshold or an epoch took
                  over --target-epoch-time s, else halve
      probe       b, 2b, 4b, ... (--probe-sizes), --every epochs each, then
                  the size with the fastest epoch
      dbs         each worker's batch proportional to its throughput, the
                  global batch fixed; every epoch or every --window steps

    \b
    Examples:
      anytimectl train dynamic --workers 4 --policy dbs --slow 2:2
      anytimectl train dynamic --workers 4 --policy loss --induce niagara:0.05
      anytimectl train dynamic --workers 4 --policy static --batch-size 64 \\
          --epochs 5 --json
      anytimectl train dynamic --workers 4 --policy dbs --compressor topk \\
          --ratio 0.01 --error-feedback
      mpiexec -n 4 anytimectl train dynamic --dataset cifar10 --data-dir ~/data \\
          --model resnet18 --policy dbs
      anytimectl train dynamic --workers 2 --dataset mnist --data-dir ~/data \\
          --model resnet18 --resize 224 --channels 3 --normalize imagenet
      anytimectl train dynamic --workers 4 --checkpoint-every 100 --name d1
      anytimectl train dynamic --resume runs/d1 --epochs 20
    """
    if checkpoints.resume is not None:
        exit_with(resume_run(RESUME, given_options(ctx), ctx.params, checkpoints, launch, length, output))
        return
    from anytimectl.comm.transport import check_transport  # the comm package: not loaded for --help
    from anytimectl.data.input_transform import InputTransform  # numpy: not for --help

    workers = launch.workers
    exchange.check(backend)
    check_transport(transport, backend)
    if batches.min_batch > batches.max_batch and batches.policy != "dbs":  # dbs has no per-worker ceiling
        raise UsageError(f"--min-batch {batches.min_batch} exceeds --max-batch {batches.max_batch}")
    batches.make(max(1, workers or 1), batch_size)  # every bad combination fails here, once
    config = prepare(launch, data, length, stragglers, optimizer, batches, checkpoints, backend=backend,
                     has_master=False,
                     batch=Batch(batch_size, distinct=True), transform=InputTransform(resize, channels, normalize))
    epochs = length.epochs
    if length.steps is None and length.epochs is None and length.target_accuracy is None:
        epochs = DEFAULT_EPOCHS
    config.update(exchange.config())
    config.update(batch_size=batch_size, epochs=epochs, lr_scaling=lr_scaling, transport=transport, resize=resize,
                  channels=channels, normalize=normalize)
    from anytimectl.runtime.run_config import DynamicConfig

    exit_with(run_request(command="train", method="dynamic", protocol="dynamic", backend=backend,
                          dataset=data.dataset, model=config["model"], config=DynamicConfig(**config), launch=launch,
                          output=output, seed=stragglers.seed))
