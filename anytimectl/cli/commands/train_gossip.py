"""`anytimectl train gossip`: decentralised training (local, nocomm, allreduce, elastic gossip, pull gossip) on
PyTorch, the thesis code's methods and settings (protocols/gossip.py has the exact rules)."""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial
from typing import Annotated

import typer

from anytimectl.cli import options as opt
from anytimectl.cli.commands.common import Batch, check_augment, exit_with, prepare, run_request
from anytimectl.cli.commands.resume import ResumeRules, given_options, resume_run
from anytimectl.cli.options import (
    PANEL_TRAINING,
    aliased_choice,
    with_option_groups,
)
from anytimectl.exchange.options import ExchangeOptions
from anytimectl.protocols.gossip import METHOD_ALIASES, METHODS, VALIDATION_SIZES
from anytimectl.runtime.checkpoints import CheckpointOptions
from anytimectl.runtime.errors import UsageError

PANEL_GOSSIP = "Gossip"
BACKEND = "torch"


@dataclass(frozen=True)
class Experiment:
    """One row of the original's config table: what an option left out means for this dataset."""

    learning_rate: float
    momentum: float
    nesterov: bool
    epochs: float
    batch_size: int
    milestones: tuple[float, ...]
    anneal: float


#: The original's config.py (iris, mnist, cifar10), and a laptop default for the built-in digits (and toy) data:
#: 10 epochs of the digits CNN at an aggregate batch of 64 reach about 97% in under a minute on two cores.
EXPERIMENTS = {
    "iris": Experiment(0.01, 0.99, False, 3, 4, (2000,), 0.1),
    "mnist": Experiment(0.001, 0.99, True, 100, 128, (), 0.5),
    "fashion-mnist": Experiment(0.001, 0.99, True, 100, 128, (), 0.5),
    "cifar10": Experiment(0.01, 0.9, True, 50, 128, (15, 30, 40), 0.5),
    "digits": Experiment(0.05, 0.9, True, 10, 64, (), 0.5),
    "toy": Experiment(0.05, 0.9, True, 10, 64, (), 0.5),
}
#: The original's networks (the torch backend's names); other datasets get the backend's default model.
MODELS = {"iris": "iris-mlp", "mnist": "mnist-mlp", "fashion-mnist": "mnist-mlp", "cifar10": "preact-resnet18"}
#: --resume (commands/resume.py): a gossip run may be extended with --steps, --epochs, --target-accuracy.
RESUME = ResumeRules(command="train", method="gossip", protocol="gossip", option_fields=(("method", "rule"),))


_option = partial(opt.option, panel=PANEL_GOSSIP)


@with_option_groups(log_every=10, test_size=-1, learning_rate=None, weight_decay=0.0)
def gossip(
    ctx: typer.Context,
    launch: opt.LaunchOptions, data: opt.DataOptions, length: opt.LengthOptions, stragglers: opt.StragglerOptions,
    output: opt.OutputOptions, checkpoints: CheckpointOptions, exchange: ExchangeOptions, rates: opt.RateOptions,
    method: Annotated[str, aliased_choice(
        METHODS, METHOD_ALIASES, rich_help_panel=PANEL_GOSSIP,
        help="local (one process), nocomm (average at the end), allreduce (gradients every step), elastic "
             "(elastic gossip), gossip (pull gossip); the original's noComm, gradAllReduce, elasticGossip and "
             "gossipingSgd work too.")] = "elastic",
    agg_period: Annotated[int, _option("Attempt a gossip every N updates.", metavar="N", min=1)] = 1,
    agg_prob: Annotated[float, _option("Probability that a worker initiates a gossip in an attempt.", metavar="P",
                                       min=0, max=1)] = 1.0,
    weighted: Annotated[bool, _option("Pick peers by distance between random points on the unit square, with "
                                      "weight 1/(d + 1e-5)^penalty, instead of uniformly.",
                                      "--weighted", "--weighted-gossip")] = False,
    penalty: Annotated[float, _option("--weighted: the distance exponent.", metavar="F", min=0)] = 1.0,
    elastic_alpha: Annotated[float, _option("elastic: the pull towards the partners (0.5 with one partner: the "
                                            "midpoint).", metavar="A", min=0)] = 0.5,
    batch_size: Annotated[int | None, opt.option(
        "Examples per worker per step, as in every command (default: --global-batch-size's split).",
        metavar="N", min=1, panel=PANEL_TRAINING, show_default=False)] = None,
    global_batch_size: Annotated[int | None, opt.option(
        "Examples per step across all workers, each taking N // workers (the former --batch-size; default: the "
        "dataset's).", metavar="N", min=1, panel=PANEL_TRAINING, show_default=False)] = None,
    momentum: Annotated[float | None, typer.Option(
        metavar="M", min=0, max=1, rich_help_panel=PANEL_TRAINING, show_default=False,
        help="SGD momentum (default: the dataset's; 0 for none).")] = None,
    nesterov: Annotated[bool | None, typer.Option(
        "--nesterov/--no-nesterov", rich_help_panel=PANEL_TRAINING, show_default=False,
        help="Nesterov momentum (default: the dataset's).")] = None,
    lr_milestones: Annotated[list[float] | None, typer.Option(
        "--lr-milestones", "--anneal-milestones", metavar="EPOCH", rich_help_panel=PANEL_TRAINING,
        show_default=False,
        help="Epochs at which the rate is multiplied by --lr-anneal (MultiStepLR); repeatable (default: the "
             "dataset's).")] = None,
    lr_anneal: Annotated[float | None, typer.Option(
        "--lr-anneal", "--anneal-factor", metavar="F", min=0, rich_help_panel=PANEL_TRAINING, show_default=False,
        help="Factor per milestone (default: the dataset's; 1 turns the milestones off).")] = None,
    val_size: Annotated[int | None, typer.Option(
        metavar="N", min=0, rich_help_panel=PANEL_TRAINING, show_default=False,
        help="Training examples held out for the workers' validation (default: mnist 8800, cifar10 5200, iris "
             "25, digits 237; 0: none).")] = None,
    augment: Annotated[str, opt.augment_option(auto="crop-flip (the original's)")] = "auto",
) -> None:
    """Decentralised SGD: workers average models with partners (gossip) or all.

    Every worker trains on its own shard from the same initial model, with SGD
    (momentum, Nesterov, MultiStepLR). Every --agg-period updates each worker
    initiates a gossip with probability --agg-prob, with a peer drawn from a
    generator every rank seeds alike, so partners are known without asking and
    only partners talk. elastic: x_i <- step(x_i) - alpha * sum over partners
    of (x_i - x_j); gossip: the initiator x_i <- step(x_i) - (x_i - x_peer) / 2.
    Options left out take the dataset's settings from the original (iris,
    mnist, cifar10; digits for laptops). --workers 1 is local training.

    \b
    Examples:
      anytimectl train gossip --workers 4 --method elastic --agg-prob 0.125
      anytimectl train gossip --workers 4 --method gossip --agg-prob 0.125 \\
          --induce niagara:0.05
      anytimectl train gossip --workers 4 --method allreduce --dataset mnist \\
          --data-dir ~/data/mnist
      anytimectl train gossip --workers 4 --method allreduce --compressor topk \\
          --ratio 0.01 --error-feedback
      anytimectl train gossip --workers 8 --weighted --penalty 2 --json
      anytimectl train gossip --workers 4 --checkpoint-every 100 --name g1
      anytimectl train gossip --resume runs/g1 --epochs 20
      mpiexec -n 4 anytimectl train gossip --dataset cifar10 --data-dir ~/data
    """
    if checkpoints.resume is not None:
        exit_with(resume_run(RESUME, given_options(ctx), ctx.params, checkpoints, launch, length, output))
        return
    experiment = EXPERIMENTS[data.dataset]
    if data.model is None and data.dataset in MODELS:
        data.model = MODELS[data.dataset]
    workers = launch.workers
    exchange.check(BACKEND)
    if exchange.compressor != "none" and method != "allreduce":
        raise UsageError(f"--compressor {exchange.compressor} compresses the gradients that --method allreduce "
                         f"exchanges; --method {method} exchanges none: use --method allreduce or drop --compressor")
    if method == "local" and workers not in (None, 0, 1):
        raise UsageError(f"--method local runs one process; drop --workers {workers} (or use another method)")
    if workers == 1:
        method = "local"  # as the original: one worker trains locally
    if method == "local" and workers == 1:
        launch.workers = workers = 0  # one process, no MPI job to start
    ranks = workers if workers else 1
    per_worker, total = _batches(batch_size, global_batch_size, experiment, workers, ranks)
    moment = experiment.momentum if momentum is None else momentum
    # --momentum 0 means plain SGD: the dataset's Nesterov default then goes too; only an explicit --nesterov errs
    use_nesterov = (experiment.nesterov and moment > 0) if nesterov is None else nesterov
    if use_nesterov and moment <= 0:
        raise UsageError("--nesterov needs a positive --momentum; add --no-nesterov or set --momentum")
    milestones = tuple(lr_milestones) if lr_milestones is not None else experiment.milestones
    optimizer = opt.OptimizerOptions(
        optimizer="sgd", learning_rate=experiment.learning_rate if rates.learning_rate is None else
        rates.learning_rate, weight_decay=rates.weight_decay, lr_schedule="milestones" if milestones else "const",
        lr_milestones=list(milestones) or None,
        lr_anneal=experiment.anneal if lr_anneal is None else lr_anneal)
    config = prepare(launch, data, length, stragglers, optimizer, checkpoints, backend=BACKEND, has_master=False,
                     batch=Batch(per_worker or total // ranks))
    validation = VALIDATION_SIZES.get(data.dataset, 0) if val_size is None else val_size
    if validation >= config["train_examples"] - ranks + 1:
        raise UsageError(f"--val-size {validation}: --dataset {data.dataset} has {config['train_examples']} "
                         f"training examples; leave at least one per worker")
    epochs = length.epochs if length.epochs is not None or length.steps is not None else experiment.epochs
    config["augment"] = opt.resolve_augment(augment, data.dataset, auto="crop-flip")
    check_augment(config["augment"], config["input_shape"])
    config.update(rule=method, agg_period=agg_period, agg_prob=agg_prob,
                  weighted=weighted, penalty=penalty, elastic_alpha=elastic_alpha, batch_size=per_worker,
                  global_batch_size=total, momentum=moment, nesterov=use_nesterov, val_size=validation,
                  epochs=epochs, resume=None)
    config.update(exchange.config())
    from anytimectl.runtime.run_config import GossipConfig

    if batch_size is not None:  # once every check has passed: a refusal stays one line
        _note_batch_size_changed(batch_size)
    exit_with(run_request(command="train", method="gossip", protocol="gossip", backend=BACKEND,
                          dataset=data.dataset, model=config["model"], config=GossipConfig(**config), launch=launch,
                          output=output, seed=stragglers.seed))


def _batches(batch_size: int | None, global_batch_size: int | None, experiment: Experiment, workers: int | None,
             ranks: int) -> tuple[int | None, int | None]:
    """(per worker, across workers): --batch-size is per worker, as in every command; --global-batch-size (the
    dataset's by default) is split over the workers. Under your own mpiexec (no --workers) the job's size is
    known only to the ranks: the one not given is None here and the protocol resolves it."""
    if batch_size is not None and global_batch_size is not None:
        raise UsageError("--batch-size (per worker) and --global-batch-size (across workers) say the same; give one")
    if batch_size is not None:
        return batch_size, batch_size * workers if workers else (batch_size if workers is not None else None)
    total = global_batch_size if global_batch_size is not None else experiment.batch_size
    if total < ranks:
        raise UsageError(f"--global-batch-size {total} is split over {ranks} workers: it must be at least {ranks}")
    return (total // ranks if workers is not None else None), total


def _note_batch_size_changed(batch_size: int) -> None:
    """`train gossip --batch-size` meant the batch across workers before: say once, on the launching process, what
    it means now."""
    import os
    import sys

    from anytimectl.runtime.launch import RELAUNCHED, is_rank_zero

    if RELAUNCHED not in os.environ and is_rank_zero():
        print(f"anytimectl: note: train gossip --batch-size {batch_size} is per worker now, as in every command; "
              "the batch across workers (what --batch-size meant before) is --global-batch-size", file=sys.stderr)


__all__ = ["EXPERIMENTS", "MODELS", "gossip"]
