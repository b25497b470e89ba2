"""The `anytimectl` command line: one Typer app, every experiment a subcommand.

Importing this module must stay cheap: `anytimectl --help` may not import TensorFlow or torch, so backends
are imported inside the commands that use them. Every bad input becomes one line on stderr and exit code 2.
"""

from __future__ import annotations

import inspect
import sys
from pathlib import Path
from typing import Annotated, Any

import typer
from typer.exceptions import TyperException

from anytimectl import __version__
from anytimectl.bandwidth import bandwidth
from anytimectl.errors import UsageError
from anytimectl.partitions import partitions_app
from anytimectl.plots.command import plot

app = typer.Typer(
    name="anytimectl",
    help="Straggler-aware distributed training experiments: AMB vs FMB under one MPI launcher.\n\n"
         "Run `anytimectl COMMAND --help` for the options and examples of each command.",
    no_args_is_help=True,
    add_completion=False,
    context_settings={"help_option_names": ["-h", "--help"]},
    rich_markup_mode="rich",
)
train_app = typer.Typer(
    help="Train a model with master-worker SGD: Anytime Mini-Batch (amb) or Fixed Mini-Batch (fmb).",
    no_args_is_help=True,
)
app.add_typer(train_app, name="train")


def _version(value: bool) -> None:
    if value:
        print(f"anytimectl {__version__}")
        raise typer.Exit()


@app.callback()
def root(
    version: Annotated[bool, typer.Option("--version", callback=_version, is_eager=True,
                                          help="Print the version and exit.")] = False,
) -> None:
    """Straggler-aware distributed training experiments."""


# --- train amb / train fmb ---------------------------------------------------------------------------------------
# Both commands share almost every option; they are declared once here and given to each command's signature.
_TRAIN_OPTIONS: list[tuple[str, Any, Any, dict[str, Any]]] = [
    # name, type, default, typer.Option keyword arguments
    ("dataset", str, "digits", dict(help="digits (built in, default), iris, toy, mnist, fashion-mnist, cifar10.")),
    ("data_dir", Path | None, None, dict(help="Folder with the MNIST idx files or CIFAR-10 python batches.")),
    ("model", str | None, None, dict(help="digits-cnn, mlp, mnist, cifar10, toy-conv, toy-fc "
                                          "(default: the dataset's own).")),
    ("workers", int | None, None, dict(help="Workers to launch on this machine (re-launches under mpiexec); "
                                            "0 runs in one process. Leave out under mpiexec/srun.")),
    ("batch_size", int, None, dict(help="Per-worker batch. AMB: the most a worker may process in one round.")),
    ("optimizer", str, "rms", dict(help="rms, adam, sgd or momentum (the original's adm/mom work too).")),
    ("learning_rate", float, 1e-3, dict(help="Base learning rate.")),
    ("lr_schedule", str, "const", dict(help="const, linear, exponential or epochs.")),
    ("lr_linear_end", float, 1e-4, dict(help="linear: the rate at the last step.")),
    ("lr_decay_steps", int, 50, dict(help="exponential: steps per decay.")),
    ("lr_decay_rate", float, 0.9, dict(help="exponential: factor per decay.")),
    ("lr_staircase", bool, True, dict(help="exponential: decay in whole steps.")),
    ("lr_epochs_every", float, 10.0, dict(help="epochs: epochs between decays.")),
    ("lr_epochs_frac", float, 0.5, dict(help="epochs: factor per decay.")),
    ("weight_decay", float, 5e-4, dict(help="L2 weight decay, applied once per update.")),
    ("steps", int | None, None, dict(help="Stop after this many master steps (default: 60 when no --epochs "
                                          "or --target-accuracy is given).")),
    ("epochs", float | None, None, dict(help="Stop after this many passes over the training set.")),
    ("target_accuracy", float | None, None, dict(help="Stop at the first evaluation reaching this test accuracy.")),
    ("test_size", int, 500, dict(help="Test examples the master evaluates (-1: the whole test split).")),
    ("log_every", int, 1, dict(help="Evaluate every N steps.")),
    ("seed", int, 0, dict(help="Seed for initialisation, data order and straggler delays.")),
    ("induce", str | None, None, dict(help="Straggler delays: niagara, cedar, NAME:SCALE (niagara:0.1), "
                                           "'mix:MEAN,STD,WEIGHT;...' (quoted) or @FILE.json.")),
    ("slow", list[str] | None, None, dict(help="Persistent slow rank RANK:FACTOR (2:3 = rank 2 computes 3x "
                                               "slower); repeatable.")),
    ("threads", int | None, None, dict(help="Threads per rank (default: cores / ranks on the host).")),
    ("device", str, "cpu", dict(help="cpu, gpu (every rank), gpu-workers (master on CPU) or gpu-master.")),
    ("gpus_per_node", int | None, None, dict(help="GPUs per host for --device gpu* (default: detected).")),
    ("out", Path, Path("runs"), dict(help="Folder that receives the run directory.")),
    ("name", str | None, None, dict(help="Run directory name (default: METHOD-DATASET-wN-TIME); must be new.")),
    ("mpiexec", str | None, None, dict(help="mpiexec to re-launch with (default: the one next to this Python).")),
    ("hosts", str | None, None, dict(help="Host list passed to mpiexec -hosts when re-launching.")),
    ("quiet", bool, False, dict(help="No live view; print only the run directory at the end.")),
    ("json", bool, False, dict(help="No live view; print a JSON summary on stdout at the end.")),
]
_AMB_OPTIONS: list[tuple[str, Any, Any, dict[str, Any]]] = [
    ("partitions", int, 6, dict(help="Micro-batches the AMB batch is split into (the original's "
                                      "amb_num_partitions).")),
    ("time_limit", str, "auto", dict(help="Seconds of compute per round, or auto: calibrate so the expected "
                                          "batch equals --match-batch.")),
    ("match_batch", int | None, None, dict(help="auto: the expected batch to match (default: 2/3 of "
                                                "--batch-size, the original's 242-of-356 headroom).")),
]
_DEFAULT_BATCH = {"amb": 192, "fmb": 128}


def _signature(options: list[tuple[str, Any, Any, dict[str, Any]]], method: str) -> inspect.Signature:
    parameters = []
    for name, kind, default, option in options:
        if name == "batch_size":
            default = _DEFAULT_BATCH[method]
        flag = "--" + name.replace("_", "-")
        names = [flag]
        if kind is bool and default is True:
            names = [f"{flag}/--no-{flag[2:]}"]
        annotation = Annotated[kind, typer.Option(*names, **option, show_default=default is not None)]
        parameters.append(inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, default=default,
                                            annotation=annotation))
    return inspect.Signature(parameters)


def _make_train_command(method: str, doc: str) -> Any:
    def command(**values: Any) -> None:
        from anytimectl.trainer import train

        options = _resolve_train_options(method, values)
        code = train(options, sys.argv[1:])
        if code:
            raise typer.Exit(code)

    command.__signature__ = _signature(_TRAIN_OPTIONS + (_AMB_OPTIONS if method == "amb" else []), method)
    command.__doc__ = doc
    command.__name__ = method
    return command


_AMB_DOC = """Anytime Mini-Batch: every worker computes for a fixed time; its batch is whatever it finished.

Each round a worker sleeps its induced straggler delay, then processes micro-batches (--batch-size /
--partitions examples each) until --time-limit seconds have passed since the round began (always at least
one), and sends the sum of its gradients and its example count. The master averages per example.

\b
Examples:
  anytimectl train amb --workers 4 --induce niagara:0.03
  anytimectl train amb --workers 4 --induce niagara:0.03 --time-limit 0.25 --partitions 16
  mpiexec -n 5 anytimectl train amb --dataset mnist --data-dir ~/data/mnist --batch-size 256 \\
      --time-limit 2.5 --partitions 8 --optimizer rms --test-size 100
"""
_FMB_DOC = """Fixed Mini-Batch: every worker computes a fixed batch; each step waits for the slowest.

\b
Examples:
  anytimectl train fmb --workers 4 --induce niagara:0.03
  anytimectl train fmb --workers 4 --slow 2:3 --steps 50 --json
  mpiexec -n 11 anytimectl train fmb --dataset cifar10 --data-dir ~/data/cifar-10-batches-py --batch-size 242
"""
train_app.command("amb")(_make_train_command("amb", _AMB_DOC))
train_app.command("fmb")(_make_train_command("fmb", _FMB_DOC))
app.command(name="plot")(plot)
app.add_typer(partitions_app, name="partitions")
app.command(name="bandwidth")(bandwidth)


def _choice(value: str, allowed: tuple[str, ...] | list[str], flag: str) -> str:
    if value not in allowed:
        raise UsageError(f"{flag} {value!r} is not one of: {', '.join(allowed)}")
    return value


def _resolve_train_options(method: str, v: dict[str, Any]) -> Any:
    """Check every value a user can get wrong before anything is launched, so errors appear once."""
    from anytimectl.backends.tensorflow import DEFAULT_MODEL, MODELS
    from anytimectl.data import DATASETS
    from anytimectl.schedules import SCHEDULES
    from anytimectl.stragglers import parse_induce, parse_slow
    from anytimectl.trainer import TrainOptions

    dataset = {"fashion_mnist": "fashion-mnist"}.get(v["dataset"], v["dataset"])
    _choice(dataset, DATASETS, "--dataset")
    model = v["model"] or DEFAULT_MODEL[dataset]
    _choice(model, MODELS, "--model")
    optimizer = {"adm": "adam", "mom": "momentum", "rmsprop": "rms"}.get(v["optimizer"], v["optimizer"])
    _choice(optimizer, ("rms", "adam", "sgd", "momentum"), "--optimizer")
    _choice(v["lr_schedule"], SCHEDULES, "--lr-schedule")
    _choice(v["device"], ("cpu", "gpu", "gpu-workers", "gpu-master"), "--device")
    if dataset in ("mnist", "fashion-mnist", "cifar10"):
        if v["data_dir"] is None:
            raise UsageError(f"--dataset {dataset} reads local files: pass --data-dir DIR "
                             "(see `anytimectl train amb --help` and the README's data section)")
    if v["data_dir"] is not None and not Path(v["data_dir"]).expanduser().is_dir():
        raise UsageError(f"--data-dir {v['data_dir']}: no such folder")
    workers = v["workers"]
    if workers is not None and workers < 0:
        raise UsageError(f"--workers {workers}: must be 0 (one process) or more")
    positive = {"batch_size": v["batch_size"], "log_every": v["log_every"], "learning_rate": v["learning_rate"]}
    if method == "amb":
        positive["partitions"] = v["partitions"]
    for name, value in positive.items():
        if value is None or value <= 0:
            raise UsageError(f"--{name.replace('_', '-')} {value}: must be positive")
    for name in ("steps", "epochs", "threads", "gpus_per_node"):
        if v[name] is not None and v[name] <= 0:
            raise UsageError(f"--{name.replace('_', '-')} {v[name]}: must be positive")
    if v["target_accuracy"] is not None and not 0 < v["target_accuracy"] <= 1:
        raise UsageError(f"--target-accuracy {v['target_accuracy']}: must be in (0, 1]")
    if v["test_size"] == 0 or v["test_size"] < -1:
        raise UsageError(f"--test-size {v['test_size']}: must be positive, or -1 for the whole test split")
    if v["weight_decay"] < 0:
        raise UsageError(f"--weight-decay {v['weight_decay']}: must be 0 or more")
    if v["quiet"] and v["json"]:
        raise UsageError("--quiet and --json exclude each other; pick one")
    steps = v["steps"]
    if steps is None and v["epochs"] is None and v["target_accuracy"] is None:
        steps = 60
    parse_induce(v["induce"])
    slow = parse_slow(v["slow"])
    if workers is not None and workers > 0:
        too_high = [rank for rank in slow if rank > workers]
        if too_high:
            raise UsageError(f"--slow names rank {too_high[0]} but there are only {workers} workers "
                             f"(ranks 1..{workers})")
    time_limit = None
    time_limit_requested = None
    partitions, match_batch = 1, None
    if method == "amb":
        partitions = v["partitions"]
        if partitions > v["batch_size"]:
            raise UsageError(f"--partitions {partitions} exceeds --batch-size {v['batch_size']}: a micro-batch "
                             "needs at least one example; lower --partitions or raise --batch-size")
        time_limit_requested = v["time_limit"]
        if time_limit_requested != "auto":
            try:
                time_limit = float(time_limit_requested)
            except ValueError:
                raise UsageError(f"--time-limit {time_limit_requested!r}: give seconds (e.g. 0.5) or auto") from None
            if not time_limit > 0:
                raise UsageError(f"--time-limit {time_limit_requested}: must be positive seconds, or auto")
        match_batch = v["match_batch"] or max(1, round(v["batch_size"] * 2 / 3))
        if match_batch <= 0 or match_batch > v["batch_size"]:
            raise UsageError(f"--match-batch {match_batch}: must be between 1 and --batch-size {v['batch_size']}")
    output = "json" if v["json"] else "quiet" if v["quiet"] else "auto"
    return TrainOptions(
        method=method, dataset=dataset, data_dir=str(Path(v["data_dir"]).expanduser()) if v["data_dir"] else None,
        model=model, workers=workers, batch_size=v["batch_size"], partitions=partitions, time_limit=time_limit,
        time_limit_requested=time_limit_requested, match_batch=match_batch, optimizer=optimizer,
        learning_rate=v["learning_rate"], lr_schedule=v["lr_schedule"], lr_linear_end=v["lr_linear_end"],
        lr_decay_steps=v["lr_decay_steps"], lr_decay_rate=v["lr_decay_rate"], lr_staircase=v["lr_staircase"],
        lr_epochs_every=v["lr_epochs_every"], lr_epochs_frac=v["lr_epochs_frac"], weight_decay=v["weight_decay"],
        steps=steps, epochs=v["epochs"], target_accuracy=v["target_accuracy"], test_size=v["test_size"],
        log_every=v["log_every"], seed=v["seed"], induce=v["induce"], slow=slow, threads=v["threads"],
        device=v["device"], gpus_per_node=v["gpus_per_node"], out=str(v["out"]), name=v["name"],
        mpiexec=v["mpiexec"], hosts=v["hosts"], output=output,
    )


def main(argv: list[str] | None = None) -> None:
    """Run the CLI; usage errors of any origin end as one line and exit code 2."""
    from anytimectl.launch import abort_job_if_ranked, end_rank, is_rank_zero

    command = typer.main.get_command(app)
    try:
        result = command.main(args=argv, prog_name="anytimectl", standalone_mode=False)
    except UsageError as error:  # raised alike on every rank of a job: each leaves with 2, rank 0 says why
        if is_rank_zero():
            print(f"anytimectl: error: {error}", file=sys.stderr)
        end_rank()
        sys.exit(error.exit_code)
    except TyperException as error:  # typer's own usage errors: no such option, bad value, missing argument
        context = getattr(error, "ctx", None)
        hint = f" (see `{context.command_path} --help`)" if context is not None else ""
        print(f"anytimectl: error: {error.format_message()}{hint}", file=sys.stderr)
        sys.exit(error.exit_code)
    except typer.Exit as done:
        if done.exit_code:
            end_rank()
        sys.exit(done.exit_code)
    except typer.Abort:
        print("anytimectl: aborted", file=sys.stderr)
        sys.exit(130)
    except BaseException:
        abort_job_if_ranked()  # the other ranks would wait for this one forever
        raise
    code = result if isinstance(result, int) else 0
    if code:
        end_rank()
    sys.exit(code)
