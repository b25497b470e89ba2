"""`anytimectl train dynamic`: all-reduce SGD with no master whose per-worker batches adapt (dynamic batching)."""

from __future__ import annotations

from dataclasses import asdict
from typing import Annotated, Literal

import typer

from anytimectl.batch_policies import PolicyOptions, make_policy
from anytimectl.commands.common import (
    check_devices,
    check_stragglers,
    common_config,
    exit_with,
    resolve_model,
    run_request,
)
from anytimectl.errors import UsageError
from anytimectl.exchange.options import ExchangeOptions
from anytimectl.input_transform import InputTransform
from anytimectl.options import (
    DataOptions,
    LaunchOptions,
    LengthOptions,
    OptimizerOptions,
    OutputOptions,
    StragglerOptions,
    with_option_groups,
)

DEFAULT_EPOCHS = 10.0
PANEL_POLICY = "Batch policy"
PANEL_INPUT = "Input images"
_DEFAULTS = PolicyOptions()


def _option(text: str, metavar: str = "N", panel: str = PANEL_POLICY, **extra) -> typer.models.OptionInfo:
    return typer.Option(metavar=metavar, rich_help_panel=panel, help=text, **extra)


Policy = Literal["static", "increasing", "decreasing", "loss", "progress", "probe", "dbs"]


@with_option_groups()
def dynamic(
    launch: LaunchOptions, data: DataOptions, optimizer: OptimizerOptions, length: LengthOptions,
    stragglers: StragglerOptions, output: OutputOptions, exchange: ExchangeOptions,
    policy: Annotated[Policy, typer.Option(
        rich_help_panel=PANEL_POLICY,
        help="How the batches change: static, increasing, decreasing, loss, progress, probe or dbs "
             "(the rules are above).")] = "dbs",
    batch_size: Annotated[int, _option("Examples per worker per step at the start.", min=1)] = 32,
    min_batch: Annotated[int, _option("Smallest per-worker batch a policy may choose.", min=1)]
    = _DEFAULTS.min_batch,
    max_batch: Annotated[int, _option("Largest per-worker batch (not for dbs, whose global batch is "
                                      "fixed).", min=1)] = _DEFAULTS.max_batch,
    every: Annotated[int, _option("increasing, decreasing: epochs between changes; probe: epochs per size.",
                                  "E", min=1)] = _DEFAULTS.every,
    loss_weight: Annotated[float, _option("loss: weight of the mean epoch loss in the score.", "W")]
    = _DEFAULTS.loss_weight,
    time_weight: Annotated[float, _option("loss: weight of the mean epoch time (s) in the score.", "W")]
    = _DEFAULTS.time_weight,
    tolerance: Annotated[float, _option("loss: score change that counts (the original's 10 was for summed "
                                        "losses and 500 s epochs).", "T", min=0)] = _DEFAULTS.tolerance,
    progress_k: Annotated[int, _option("progress: epochs in Prechelt's strip.", "K", min=1)] = _DEFAULTS.progress_k,
    progress_threshold: Annotated[float, _option("progress: double when P_k (per mille) is below this.", "P",
                                                 min=0)] = _DEFAULTS.progress_threshold,
    target_epoch_time: Annotated[float, _option("progress: double when an epoch takes longer (s).", "S")]
    = _DEFAULTS.target_epoch_time,
    probe_sizes: Annotated[int, _option("probe: sizes to try (b, 2b, 4b, ...).", min=1)] = _DEFAULTS.probe_sizes,
    window: Annotated[int | None, _option("dbs: re-balance every N steps (default: every epoch).", min=1,
                                          show_default=False)] = None,
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
    resize: Annotated[int | None, _option("Resize images to N x N (bilinear; the original used 224).",
                                          panel=PANEL_INPUT, min=1, show_default=False)] = None,
    channels: Annotated[int | None, _option("Convert images to 1 or 3 channels (grayscale replicated).",
                                            "C", panel=PANEL_INPUT, min=1, max=3, show_default=False)] = None,
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
    """
    from anytimectl.data import describe_dataset

    workers = launch.workers
    exchange.check(backend)
    if transport == "torch" and backend != "torch":
        raise UsageError("--transport torch needs --backend torch (TensorFlow and torch never share a process)")
    if min_batch > max_batch and policy != "dbs":  # dbs has no per-worker ceiling (its global batch is fixed)
        raise UsageError(f"--min-batch {min_batch} exceeds --max-batch {max_batch}")
    if channels not in (None, 1, 3):
        raise UsageError(f"--channels {channels}: give 1 or 3")
    options = PolicyOptions(min_batch=min_batch, max_batch=max_batch, every=every, loss_weight=loss_weight,
                            time_weight=time_weight, tolerance=tolerance, progress_k=progress_k,
                            progress_threshold=progress_threshold, target_epoch_time=target_epoch_time,
                            probe_sizes=probe_sizes, window=window)
    make_policy(policy, max(1, workers or 1), batch_size, options)  # every bad combination fails here, once
    model = resolve_model(data, backend)
    check_stragglers(stragglers, list(range(1, workers + 1)) if workers else [])
    check_devices(launch)
    info = describe_dataset(data.dataset, data.data_dir)
    InputTransform(resize, channels, normalize).check(tuple(info.input_shape))
    if workers and workers * batch_size > info.n_train:
        raise UsageError(f"--batch-size {batch_size} x {workers} workers is more than the {info.n_train} "
                         f"training examples of {data.dataset}; lower --batch-size")
    config = common_config(launch, data, length, stragglers, optimizer)
    epochs = length.epochs
    if length.steps is None and length.epochs is None and length.target_accuracy is None:
        epochs = DEFAULT_EPOCHS
    config.update(asdict(options))
    config.update(exchange.config())
    config.update(model=model, backend=backend, policy=policy, batch_size=batch_size, epochs=epochs,
                  lr_scaling=lr_scaling, transport=transport, resize=resize, channels=channels, normalize=normalize)
    exit_with(run_request(command="train", method="dynamic", protocol="dynamic", backend=backend,
                          dataset=data.dataset, model=model, config=config, launch=launch, output=output,
                          seed=stragglers.seed))
