"""Command-line options, declared once: typed choices, ranges and defaults, in groups every command reuses.

Each group is a dataclass whose fields are `Annotated` Typer options. A command names the groups it takes as
parameters (`launch: LaunchOptions`), and `@with_option_groups` spreads their fields into the command's
signature for Typer, then hands the command the filled dataclasses. So a shared option (`--workers`, `--out`,
`--induce`, ...) is declared in exactly one place with its one default, shows under the same `--help` panel in
every command, and reaches the run shell as a typed object that goes into metadata.json whole.

Choices are `Literal` types, so `--help` lists them and shells complete them; where the original systems spelled a
choice differently (`adm`, `elasticGossip`, `Topk`), `aliased_choice` accepts those spellings too and maps them to
the canonical name, while `--help` lists only the canonical ones.
"""

from __future__ import annotations

import dataclasses
import inspect
import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal, get_type_hints

import typer
import typer.core

from anytimectl.runtime.errors import UsageError

# --- help layout ---------------------------------------------------------------------------------------------------
#: Seeds go to numpy and torch generators, which take 0 <= seed < 2**32.
SEED_MAX = 2**32 - 1
PANEL_LAUNCH = "Launch"
PANEL_DATA = "Data and model"
PANEL_TRAINING = "Training"
PANEL_LENGTH = "Length and evaluation"
PANEL_STRAGGLERS = "Stragglers"
PANEL_OUTPUT = "Output"


def _flags_without_metavar() -> None:
    """Typer shows `<bool>` beside every on/off flag in rich help, where no value is ever given; drop it."""
    original = typer.core.TyperOption.display_type_rich
    if getattr(original, "_anytimectl", False):
        return

    def display_type_rich(self: typer.core.TyperOption, ctx: Any) -> str | None:
        if self.is_flag:
            return None
        return original(self, ctx)

    display_type_rich._anytimectl = True  # type: ignore[attr-defined]
    typer.core.TyperOption.display_type_rich = display_type_rich  # type: ignore[method-assign]


_flags_without_metavar()

#: the section of the options no panel names (`--help`, a command without panels), printed after the panels
PANEL_OTHER = "Options"


def format_options_in_panels(command: Any, ctx: Any, formatter: Any) -> None:
    """`--help`'s options grouped under their `rich_help_panel` headings, in the order the command declares them.

    Typer draws panels only through rich (`rich_markup_mode`), which costs a second or more of imports on every
    `--help` here and squeezes the help column to a few words at 80 columns. This keeps Click's plain layout
    (paragraphs re-flowed to the terminal, `\\b` blocks kept, options and help side by side) and prints one section
    per panel instead of one "Options" section."""
    arguments: list[tuple[str, str]] = []
    panels: dict[str, list[tuple[str, str]]] = {}
    for param in command.get_params(ctx):
        record = param.get_help_record(ctx)
        if record is None:
            continue
        if param.param_type_name == "argument":
            arguments.append(record)
        else:
            panels.setdefault(getattr(param, "rich_help_panel", None) or PANEL_OTHER, []).append(record)
    if arguments:
        with formatter.section("Arguments"):
            formatter.write_dl(arguments)
    other = panels.pop(PANEL_OTHER, [])
    for name, records in [*panels.items(), *([(PANEL_OTHER, other)] if other else [])]:
        with formatter.section(name):
            formatter.write_dl(records)


def _panels_in_plain_help() -> None:
    """Every Typer command and group formats its options with `format_options_in_panels`."""
    command, group = typer.core.TyperCommand, typer.core.TyperGroup
    if getattr(command.format_options, "_anytimectl", False):
        return

    def command_options(self: Any, ctx: Any, formatter: Any) -> None:
        format_options_in_panels(self, ctx, formatter)

    def group_options(self: Any, ctx: Any, formatter: Any) -> None:
        format_options_in_panels(self, ctx, formatter)
        self.format_commands(ctx, formatter)

    command_options._anytimectl = group_options._anytimectl = True  # type: ignore[attr-defined]
    command.format_options = command_options  # type: ignore[method-assign]
    group.format_options = group_options  # type: ignore[method-assign]


_panels_in_plain_help()


# --- declaring an option ---------------------------------------------------------------------------------------------
def option(help: str, *names: str, metavar: str | None = None, panel: str | None = None,
           above: float | None = None, parser: Callable[[str], Any] | None = None, shown_range: str | None = None,
           **extra: Any) -> Any:
    """The one way a command declares an option: `typer.Option` with its help first and its `--help` panel.

    Ranges go through Typer as its `min`/`max` (inclusive, shown as `[x>=1]`). `above` is an exclusive minimum
    for a value where the bound itself is refused (`above=0`: a positive number, shown as `[x>0]`; with `max`:
    `[0<x<=1]`). `parser` with `shown_range`: another rule checked while parsing (`--test-size`: -1 or x>=1).
    A value out of range ends as one line naming the flag and the value, exit 2, like every parse error."""
    if above is not None:
        high = extra.pop("max", None)
        parser = exclusive_range(above, high)
        shown_range = f"x>{above:g}" if high is None else f"{above:g}<x<={high:g}"
    info = typer.Option(*names, metavar=metavar, rich_help_panel=panel, help=help, parser=parser, **extra)
    info.shown_range = shown_range
    return info


def batch_size_option(help: str, *, panel: str | None = PANEL_TRAINING, **extra: Any) -> Any:
    """`--batch-size`, declared once for every command: the examples one worker computes per step (never the
    total across workers: that is `train gossip --global-batch-size`), a whole number >= 1. Each command gives its
    own help, default and panel: a starting value in `train dynamic`, a ceiling in `train amb`, the batch that is
    split into micro-batches in `partitions eval`, one backward pass in `compress bench`."""
    return option(help, "--batch-size", metavar="N", min=1, panel=panel, **extra)


def _number(value: Any) -> float:
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise typer.BadParameter(f"{value!r} is not a number") from None
    if not math.isfinite(number):
        raise typer.BadParameter("must be a finite number")
    return number


def exclusive_range(low: float, high: float | None = None) -> Callable[[Any], float | None]:
    """A parser for a number that must exceed `low` (and be at most `high`)."""

    def parse(value: Any) -> float | None:
        if value is None:
            return None
        number = _number(value)
        if high is None and not number > low:
            raise typer.BadParameter(f"must be greater than {low:g}")
        if high is not None and not low < number <= high:
            raise typer.BadParameter(f"must be in ({low:g}, {high:g}]")
        return number

    return parse


def _ranges_in_help() -> None:
    """`--help` shows an option's `shown_range` (set by `option`) where Typer would show its `min`/`max`."""
    original = typer.core.TyperOption._get_number_range_help_str
    if getattr(original, "_anytimectl", False):
        return

    def range_help(self: typer.core.TyperOption) -> str | None:
        shown = getattr(self.type_descriptor.parameter_info, "shown_range", None)
        return shown or original(self)

    range_help._anytimectl = True  # type: ignore[attr-defined]
    typer.core.TyperOption._get_number_range_help_str = range_help  # type: ignore[method-assign]


_ranges_in_help()


def aliased_choice(choices: Iterable[str], aliases: dict[str, str] | None = None, **option: Any) -> Any:
    """A `typer.Option` taking one of `choices`, or an alias of one (case-insensitive), as its canonical name."""
    canonical = tuple(choices)
    lookup = {name.lower(): name for name in canonical}
    lookup.update({alias.lower(): name for alias, name in (aliases or {}).items()})

    def parse(value: str) -> str:
        if value is None or value in canonical:
            return value
        found = lookup.get(str(value).lower())
        if found is None:
            raise typer.BadParameter(f"{value!r} is not one of {', '.join(canonical)}")
        return found

    def complete(incomplete: str) -> list[str]:
        return [name for name in canonical if name.startswith(incomplete)]

    return typer.Option(parser=parse, metavar="[" + "|".join(canonical) + "]", autocompletion=complete, **option)


# --- option groups ---------------------------------------------------------------------------------------------------
Device = Literal["cpu", "gpu", "gpu-workers", "gpu-master"]
LiveMode = Literal["auto", "table", "lines", "off"]


@dataclass
class MpiOptions:
    """Which launcher starts a job on this machine, and on which hosts."""

    mpiexec: Annotated[str | None, typer.Option(
        metavar="PATH",
        rich_help_panel=PANEL_LAUNCH, show_default=False,
        help="The mpiexec used with --workers (default: the one next to this Python).")] = None
    hosts: Annotated[str | None, typer.Option(
        metavar="HOST,...",
        rich_help_panel=PANEL_LAUNCH, show_default=False,
        help="Hosts for --workers: HOST[:RANKS],... (mpiexec -hosts) or @FILE, a hostfile with one HOST[:RANKS] "
             "per line (mpiexec -f). MPICH's HYDRA_IFACE, HYDRA_LAUNCHER and HYDRA_LAUNCHER_EXEC pass through.")] = None


@dataclass
class LaunchOptions(MpiOptions):
    """How a training job is started and what each rank may use."""

    workers: Annotated[int | None, typer.Option(
        metavar="N", min=0, rich_help_panel=PANEL_LAUNCH, show_default=False,
        help="Workers to start on this machine (anytimectl re-launches itself under mpiexec); 0 runs in one "
             "process. Leave it out under your own mpiexec/srun.")] = None
    threads: Annotated[int | None, typer.Option(
        metavar="N", min=1, rich_help_panel=PANEL_LAUNCH, show_default=False,
        help="Threads per rank (default: the host's cores divided among the ranks on it).")] = None
    device: Annotated[Device, typer.Option(
        rich_help_panel=PANEL_LAUNCH,
        help="cpu; gpu (every rank); gpu-workers (the master on CPU); gpu-master (only the master on a GPU). "
             "Without a master (dynamic, gossip, compress): gpu-workers is gpu; gpu-master is refused.")] = "cpu"
    gpus_per_node: Annotated[int | None, typer.Option(
        metavar="N", min=1, rich_help_panel=PANEL_LAUNCH, show_default=False,
        help="GPUs per host for --device gpu* (default: detected).")] = None


@dataclass
class StragglerOptions:
    """Induced delays, drawn per rank per step from a generator seeded by (--seed, rank, step)."""

    induce: Annotated[str | None, typer.Option(
        metavar="MODEL",
        rich_help_panel=PANEL_STRAGGLERS, show_default=False,
        help="Delay model: niagara, cedar, NAME:SCALE (niagara:0.1), 'mix:MEAN,STD,WEIGHT;...' (quoted) or "
             "@FILE.json.")] = None
    slow: Annotated[list[str] | None, typer.Option(
        metavar="WORKER:FACTOR",
        rich_help_panel=PANEL_STRAGGLERS, show_default=False,
        help="Persistent straggler WORKER:FACTOR (2:3 = worker 2 computes 3x slower; workers are numbered "
             "1..N as in the live table); repeatable.")] = None
    seed: Annotated[int, typer.Option(
        metavar="N", min=0, max=SEED_MAX,
        rich_help_panel=PANEL_STRAGGLERS,
        help="Seed for initialisation, data order and straggler delays.")] = 0


@dataclass
class ResultOptions:
    """Where a run directory goes, and whether the summary is JSON: every command that writes one."""

    out: Annotated[Path, typer.Option(
        metavar="DIR",
        rich_help_panel=PANEL_OUTPUT, help="Folder that receives the run directory.")] = Path("runs")
    name: Annotated[str | None, typer.Option(
        metavar="NAME",
        rich_help_panel=PANEL_OUTPUT, show_default=False,
        help="Run directory name (default: COMMAND-...-TIME); must be new.")] = None
    json: Annotated[bool, typer.Option(
        "--json",
        rich_help_panel=PANEL_OUTPUT, help="Print the summary as one JSON object on stdout.")] = False


@dataclass
class OutputOptions(ResultOptions):
    """A training run's: also what the terminal shows while it runs."""

    live: Annotated[LiveMode, typer.Option(
        rich_help_panel=PANEL_OUTPUT,
        help="Live view: auto (the table on a terminal, plain lines otherwise), table, lines or off.")] = "auto"
    quiet: Annotated[bool, typer.Option(
        "--quiet",
        rich_help_panel=PANEL_OUTPUT, help="No live view; print only the run directory at the end (--json: no "
                                           "live view either).")] = False
    tensorboard: Annotated[Path | None, typer.Option(
        metavar="DIR", rich_help_panel=PANEL_OUTPUT, show_default=False,
        help="Also write TensorBoard scalars into DIR/<run name>/ as the run goes (tensorboard --logdir DIR).")] = None

    def __post_init__(self) -> None:
        if self.quiet and self.json:
            raise UsageError("--quiet and --json exclude each other; pick one")

    @property
    def view_mode(self) -> str:
        return "off" if self.quiet or self.json else self.live

    @property
    def report(self) -> str:
        return "json" if self.json else "quiet" if self.quiet else "text"


def _test_size(value: Any) -> int:
    """--test-size: a positive count, or -1 for the whole test split."""
    try:
        size = int(value)
    except (TypeError, ValueError):
        raise typer.BadParameter(f"{value!r} is not an integer") from None
    if size < 1 and size != -1:
        raise typer.BadParameter("must be positive, or -1 for the whole test split")
    return size


@dataclass
class LengthOptions:
    """When a run stops (the first condition met) and how often it evaluates."""

    steps: Annotated[int | None, typer.Option(
        metavar="N", min=1, rich_help_panel=PANEL_LENGTH, show_default=False,
        help="Stop after this many steps (updates).")] = None
    epochs: Annotated[float | None, option(
        "Stop after this many passes over the training set.", metavar="E", panel=PANEL_LENGTH, above=0,
        show_default=False)] = None
    target_accuracy: Annotated[float | None, option(
        "Stop at the first evaluation that reaches this test accuracy.", metavar="ACC", panel=PANEL_LENGTH,
        above=0, max=1, show_default=False)] = None
    log_every: Annotated[int, typer.Option(
        metavar="N", min=1, rich_help_panel=PANEL_LENGTH, help="Evaluate every N steps.")] = 1
    test_size: Annotated[int, option(
        "Test examples to evaluate on (-1: the whole test split).", metavar="N", panel=PANEL_LENGTH,
        parser=_test_size, shown_range="-1 or x>=1")] = 500


DATASET_ALIASES = {"fashion_mnist": "fashion-mnist", "fashionmnist": "fashion-mnist"}
OPTIMIZERS = ("rms", "adam", "sgd", "momentum")
OPTIMIZER_ALIASES = {"adm": "adam", "mom": "momentum", "rmsprop": "rms"}
SCHEDULES = ("const", "linear", "exponential", "epochs", "milestones")


def _datasets() -> tuple[str, ...]:
    from anytimectl.data import DATASETS

    return DATASETS


@dataclass
class DataOptions:
    """What to train on, and which network."""

    dataset: Annotated[str, aliased_choice(
        _datasets(), DATASET_ALIASES, rich_help_panel=PANEL_DATA,
        help="digits (built in), iris (built in), toy (random, for timing), mnist, fashion-mnist, cifar10 "
             "(from --data-dir).")] = "digits"
    data_dir: Annotated[Path | None, typer.Option(
        metavar="DIR",
        rich_help_panel=PANEL_DATA, show_default=False,
        help="Folder with the MNIST idx files or the CIFAR-10 python batches.")] = None
    model: Annotated[str | None, typer.Option(
        metavar="NAME",
        rich_help_panel=PANEL_DATA, show_default=False,
        help="A network by name (see the README's model list), or your own: path/to/file.py:build "
             "(default: the dataset's own).")] = None

    def __post_init__(self) -> None:
        if self.dataset in ("mnist", "fashion-mnist", "cifar10") and self.data_dir is None:
            raise UsageError(f"--dataset {self.dataset} reads local files: pass --data-dir DIR (the README's "
                             "Data section says which files)")
        if self.data_dir is not None:
            self.data_dir = self.data_dir.expanduser()
            if not self.data_dir.is_dir():
                raise UsageError(f"--data-dir {self.data_dir}: no such folder")


@dataclass
class RateOptions:
    """The learning rate and the weight decay, the same two options in every training command (a command may
    change their defaults: `with_option_groups(learning_rate=...)`; None: the command's own, e.g. the dataset's)."""

    learning_rate: Annotated[float, option(
        "The base rate the schedule scales (compress train: the peak of 0 -> LR -> 0, per example; train "
        "gossip: the dataset's by default).",
        metavar="LR", panel=PANEL_TRAINING, above=0)] = 1e-3
    weight_decay: Annotated[float, option(
        "L2 weight decay, applied once per update.", metavar="WD", panel=PANEL_TRAINING, min=0)] = 5e-4


@dataclass
class OptimizerOptions(RateOptions):
    """The optimizer and its learning-rate schedule (the original's names in the README)."""

    optimizer: Annotated[str, aliased_choice(
        OPTIMIZERS, OPTIMIZER_ALIASES, rich_help_panel=PANEL_TRAINING,
        help="rms, adam, sgd or momentum (SGD, momentum 0.9); the original's adm and mom work too.")] = "rms"
    lr_schedule: Annotated[Literal["const", "linear", "exponential", "epochs", "milestones"], typer.Option(
        rich_help_panel=PANEL_TRAINING,
        help="const; linear (to --lr-linear-end); exponential (--lr-decay-*); epochs (--lr-epochs-*); "
             "milestones (x --lr-anneal at each of --lr-milestones epochs).")] = "const"
    lr_linear_end: Annotated[float, typer.Option(
        metavar="LR", min=0, rich_help_panel=PANEL_TRAINING, help="linear: the rate at the last step.")] = 1e-4
    lr_decay_steps: Annotated[int, typer.Option(
        metavar="N", min=1, rich_help_panel=PANEL_TRAINING, help="exponential: steps per decay.")] = 50
    lr_decay_rate: Annotated[float, typer.Option(
        metavar="F", min=0, rich_help_panel=PANEL_TRAINING, help="exponential: factor per decay.")] = 0.9
    lr_staircase: Annotated[bool, typer.Option(
        rich_help_panel=PANEL_TRAINING, help="exponential: decay in whole steps.")] = True
    lr_epochs_every: Annotated[float, option(
        "epochs: epochs between decays.", metavar="E", panel=PANEL_TRAINING, above=0)] = 10.0
    lr_epochs_frac: Annotated[float, typer.Option(
        metavar="F", min=0, rich_help_panel=PANEL_TRAINING, help="epochs: factor per decay.")] = 0.5
    lr_milestones: Annotated[list[float] | None, typer.Option(
        metavar="EPOCH",
        rich_help_panel=PANEL_TRAINING, show_default=False,
        help="milestones: epochs at which the rate is multiplied by --lr-anneal; repeatable.")] = None
    lr_anneal: Annotated[float, typer.Option(
        metavar="F", min=0, rich_help_panel=PANEL_TRAINING, help="milestones: factor per milestone.")] = 0.1

    def __post_init__(self) -> None:
        if self.lr_schedule == "milestones" and not self.lr_milestones:
            raise UsageError("--lr-schedule milestones needs at least one --lr-milestones EPOCH")
        if self.lr_milestones and any(not math.isfinite(m) or m <= 0 for m in self.lr_milestones):
            raise UsageError("--lr-milestones: epochs must be positive, finite numbers")


#: --augment, the same names in every command that augments (the protocols' `augment` values, peer.AUGMENTATIONS)
AUGMENTS = ("auto", "none", "crop-flip", "crop-flip-cutout")
AUGMENT_ALIASES = {"cifar": "crop-flip-cutout"}


def augment_option(auto: str) -> Any:
    """--augment, declared once; `auto`: what the command's recipe uses on cifar10 (none on other data)."""
    return aliased_choice(
        AUGMENTS, AUGMENT_ALIASES, rich_help_panel=PANEL_TRAINING,
        help="Training-batch augmentation: crop-flip (reflect-pad 4, random crop, horizontal flip), "
             "crop-flip-cutout (and one 8x8 square of zeros: cifar10-fast's; the former `cifar` works too) or "
             f"none; auto: {auto} on cifar10, none on other data.")


def resolve_augment(augment: str, dataset: str, auto: str) -> str | None:
    """The augmentation a run applies (None: none), `auto` resolved for `dataset`."""
    if augment == "auto":
        return auto if dataset == "cifar10" else None
    return None if augment == "none" else augment


# --- spreading groups into a command's signature ---------------------------------------------------------------------
# --- checkpoints ----------------------------------------------------------------------------------------------------
PANEL_CHECKPOINTS = "Checkpoints"


@dataclass
class CheckpointOptions:
    """When to write checkpoints, and which run to continue (anytimectl/runtime/checkpoints.py writes and reads
    them)."""

    checkpoint_every: Annotated[int | None, typer.Option(
        metavar="N", min=1, rich_help_panel=PANEL_CHECKPOINTS, show_default=False,
        help="Write every rank's training state after every N-th step and after the last one, into "
             "RUN_DIR/checkpoints/ (the original's --checkpoint-interval).")] = None
    keep_checkpoints: Annotated[int, typer.Option(
        metavar="K", min=1, rich_help_panel=PANEL_CHECKPOINTS,
        help="Keep the K latest complete checkpoints; older ones are removed.")] = 2
    checkpoint_on_signal: Annotated[str, typer.Option(
        metavar="SIG", rich_help_panel=PANEL_CHECKPOINTS,
        help="This signal (USR1, USR2, TERM, INT or HUP) writes a checkpoint at the end of the current step and "
             "ends the run 'interrupted', exit 130, even without --checkpoint-every: a scheduler's warning before "
             "it kills the job (Slurm: --signal=B:USR1@120, or TERM at preemption). Ctrl-C, SIGTERM and SIGHUP "
             "still stop a run (and checkpoint it when --checkpoint-every is given).")] = "USR1"
    resume: Annotated[Path | None, typer.Option(
        metavar="RUN_DIR", rich_help_panel=PANEL_CHECKPOINTS, show_default=False,
        help="Continue this run from its latest checkpoint, with its recorded options, in the same run "
             "directory (the original's --from-checkpoint). --steps/--epochs may extend it.")] = None



def _is_group(hint: Any) -> bool:
    return isinstance(hint, type) and dataclasses.is_dataclass(hint)


def with_option_groups(**defaults: Any) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Give a command the fields of its dataclass-typed parameters as options; `defaults` overrides a group
    default for this command only (e.g. a method whose sensible batch differs)."""

    def decorate(function: Callable[..., Any]) -> Callable[..., Any]:
        hints = get_type_hints(function, include_extras=True)
        parameters: list[inspect.Parameter] = []
        groups: dict[str, type] = {}
        for parameter in inspect.signature(function).parameters.values():
            hint = hints.get(parameter.name, parameter.annotation)
            if _is_group(hint):
                groups[parameter.name] = hint
                field_hints = get_type_hints(hint, include_extras=True)
                for item in dataclasses.fields(hint):
                    default = defaults.get(item.name, item.default)
                    parameters.append(inspect.Parameter(item.name, inspect.Parameter.KEYWORD_ONLY,
                                                        default=default, annotation=field_hints[item.name]))
            else:
                parameters.append(parameter.replace(annotation=hint, kind=inspect.Parameter.KEYWORD_ONLY))
        names = [p.name for p in parameters]
        duplicated = {n for n in names if names.count(n) > 1}
        assert not duplicated, f"{function.__name__}: options declared twice: {duplicated}"
        unknown = set(defaults) - set(names)
        assert not unknown, f"{function.__name__}: defaults for unknown options {unknown}"

        def command(**values: Any) -> Any:
            check_finite(values)
            arguments = {name: group(**{f.name: values.pop(f.name) for f in dataclasses.fields(group)})
                         for name, group in groups.items()}
            return function(**arguments, **values)

        command.__signature__ = inspect.Signature(parameters)  # type: ignore[attr-defined]
        command.__doc__ = function.__doc__
        command.__name__ = function.__name__
        command.__module__ = function.__module__
        return command

    return decorate


def check_finite(values: dict[str, Any]) -> None:
    """Typer parses `nan` and `inf` as floats and range checks let NaN through: no option takes either."""
    for name, value in values.items():
        if isinstance(value, float) and not math.isfinite(value):
            raise UsageError(f"--{name.replace('_', '-')} {value}: must be a finite number")


def flag(name: str) -> str:
    """The command-line spelling of an option's parameter name, for error messages."""
    return "--" + name.replace("_", "-")
