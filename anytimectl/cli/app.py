"""The `anytimectl` command line: one Typer app, every experiment a subcommand.

Importing this module must stay cheap, and so must `--help`: each command's module is imported only when that
command (or its `--help`) runs, through `LazyGroup`; `anytimectl --help` lists the commands from the one-line
summaries below and imports none of them. Backends are imported inside the commands that use them. Every bad
input becomes one line on stderr and exit code 2.
"""

from __future__ import annotations

import importlib
import sys
from typing import Annotated, ClassVar

import typer

try:  # the Click that Typer runs on: its own copy since typer 0.25, the click package before
    from typer._click import Command, Context, HelpFormatter
    from typer._click.utils import make_default_short_help
except ImportError:  # pragma: no cover - older typer
    from click import Command, Context, HelpFormatter
    from click.utils import make_default_short_help
from typer.core import TyperGroup
from typer.exceptions import TyperException

from anytimectl.runtime.errors import OutputError, UsageError

#: Each command: where it is defined (`module:attribute`, a command function or a Typer app of subcommands) and
#: the line `--help` lists it by (its own short help: tests/test_help.py checks that they agree), in help order.
COMMANDS: dict[str, tuple[str, str]] = {
    "plot": ("anytimectl.plots.command:plot", "Draw figures from run directories (never re-runs anything)."),
    "bandwidth": ("anytimectl.studies.bandwidth:bandwidth",
                  "Master reduce + broadcast time against the number of workers and the message size."),
    "doctor": ("anytimectl.cli.commands.doctor:doctor",
               "Report the installed frameworks and their builds (CUDA or CPU), whether a GPU is usable, the MPI "
               "library, and whether the MPI launcher starts a job."),
    "partitions": ("anytimectl.studies.partitions:partitions_app",
                   "Cost of splitting a batch into AMB micro-batches: time per step and per sample against "
                   "partitions."),
    "compress": ("anytimectl.cli.commands.compress:compress_app",
                 "Training with compressed gradients that are really compressed on the wire (train), and the "
                 "per-method bytes, error and speed study (bench)."),
    "runs": ("anytimectl.cli.commands.runs:runs_app",
             "Compare run directories: one row per run (`anytimectl runs [PATHS]`), or one run in full (`anytimectl "
             "runs show RUN`), or TensorBoard files (`anytimectl runs export`)."),
}
TRAIN_COMMANDS: dict[str, tuple[str, str]] = {
    "amb": ("anytimectl.cli.commands.train_amb_fmb:amb",
            "Anytime Mini-Batch: every worker computes for a fixed time; its batch is whatever it finished."),
    "fmb": ("anytimectl.cli.commands.train_amb_fmb:fmb",
            "Fixed Mini-Batch: every worker computes a fixed batch; each step waits for the slowest."),
    "gossip": ("anytimectl.cli.commands.train_gossip:gossip",
               "Decentralised SGD: workers average models with partners (gossip) or all."),
    "dynamic": ("anytimectl.cli.commands.train_dynamic:dynamic",
                "Synchronous data-parallel SGD with no master; per-worker batches adapt."),
}


def load_command(name: str, where: str) -> Command:
    """The Click command `where` names, built as Typer builds a subcommand: a command function through a Typer
    app of its own, a Typer app of subcommands as it is (each declares `rich_markup_mode=None` and
    `add_completion=False`, as the root's subcommands have plain help and no completion options)."""
    module, _, attribute = where.partition(":")
    target = getattr(importlib.import_module(module), attribute)
    if not isinstance(target, typer.Typer):
        holder = typer.Typer(rich_markup_mode=None, add_completion=False)
        holder.command(name)(target)
        target = holder
    command = typer.main.get_command(target)
    command.name = name
    return command


class LazyGroup(TyperGroup):
    """A group whose commands (`lazy`: name -> (where, summary)) are imported when one is asked for: running it,
    its `--help`, or shell completion. Listing them (`--help` of the group) shows the summaries."""

    lazy: ClassVar[dict[str, tuple[str, str]]] = {}

    def list_commands(self, ctx: Context) -> list[str]:
        eager = [name for name in super().list_commands(ctx) if name not in self.lazy]
        names = list(self.lazy)
        return [*names[:3], *eager, *names[3:]]  # the root: plot, bandwidth, doctor, then train, as before

    def get_command(self, ctx: Context, name: str) -> Command | None:
        if name in self.lazy and name not in self.commands:
            self.commands[name] = load_command(name, self.lazy[name][0])
        return super().get_command(ctx, name)

    def format_commands(self, ctx: Context, formatter: HelpFormatter) -> None:
        names = self.list_commands(ctx)
        if not names:
            return
        limit = formatter.width - 6 - max(len(name) for name in names)
        rows = []
        for name in names:
            if name in self.lazy and name not in self.commands:
                rows.append((name, make_default_short_help(self.lazy[name][1], limit)))
                continue
            command = self.get_command(ctx, name)
            if command is not None and not command.hidden:
                rows.append((name, command.get_short_help_str(limit)))
        with formatter.section("Commands"):
            formatter.write_dl(rows)


class RootGroup(LazyGroup):
    lazy = COMMANDS


class TrainGroup(LazyGroup):
    lazy = TRAIN_COMMANDS

# rich_markup_mode=None: Click's plain help, which re-flows paragraphs to the terminal's width and keeps `\b`
# blocks (the examples) as written. The options still show under their `rich_help_panel` headings: options.py
# formats them panel by panel (`format_options_in_panels`) without importing rich, which costs about a second.
app = typer.Typer(
    name="anytimectl",
    help="Straggler-aware distributed training experiments under one MPI launcher.\n\n"
         "Run `anytimectl COMMAND --help` for the options and examples of each command.",
    no_args_is_help=True,
    context_settings={"help_option_names": ["-h", "--help"]},
    rich_markup_mode=None,
    cls=RootGroup,
)
train_app = typer.Typer(
    help="Train a model: master-worker SGD (amb, fmb), dynamic batch sizing (dynamic), gossip averaging (gossip).",
    no_args_is_help=True,
    rich_markup_mode=None,
    cls=TrainGroup,
)
app.add_typer(train_app, name="train")


def _version(value: bool) -> None:
    if value:
        from anytimectl.runtime.doctor import version_text

        print(version_text())  # package metadata only: no framework imported
        raise typer.Exit()


@app.callback()
def root(
    version: Annotated[bool, typer.Option("--version", callback=_version, is_eager=True,
                                          help="Print the version (and the installed frameworks') and exit.")] = False,
) -> None:
    """Straggler-aware distributed training experiments."""




def command() -> Command:
    """The whole command line as one Click group (its commands load when asked for)."""
    return typer.main.get_command(app)


def main(argv: list[str] | None = None) -> None:
    """Run the CLI; usage errors of any origin end as one line and exit code 2.

    The console script and `python -m anytimectl` call it without `argv`: they own the process, so a finished
    command leaves it at once (`launch.leave_process`, which skips TensorFlow's and torch's slow teardown with
    `os._exit`). A caller that passes `argv` (a test, a program that embeds anytimectl) gets `SystemExit` as from
    any Click command, and its process goes on."""
    from anytimectl.runtime.launch import abort_job_if_ranked, end_rank, is_rank_zero
    from anytimectl.runtime.launch import leave_process as leave_fast

    leave_process = leave_fast if argv is None else sys.exit
    root = command()
    try:
        result = root.main(args=argv, prog_name="anytimectl", standalone_mode=False)
    except UsageError as error:  # raised alike on every rank of a job: each leaves with 2, rank 0 says why
        if is_rank_zero():
            print(f"anytimectl: error: {error}", file=sys.stderr)
        end_rank()
        leave_process(error.exit_code)
    except TyperException as error:  # typer's own usage errors: no such option, bad value, missing argument
        context = getattr(error, "ctx", None)
        hint = f" (see `{context.command_path} --help`)" if context is not None else ""
        print(f"anytimectl: error: {_bad_value_message(error, argv)}{hint}", file=sys.stderr)
        sys.exit(error.exit_code)
    except OutputError as error:  # the run's output cannot be written (a full disk, a removed folder)
        if not getattr(error, "reported", False):
            print(f"anytimectl: error: {error}", file=sys.stderr)
        end_rank()
        sys.exit(error.exit_code)
    except typer.Exit as done:
        if done.exit_code:
            end_rank()
        leave_process(done.exit_code or 0)
    except (typer.Abort, KeyboardInterrupt) as stop:  # the run, if any, has recorded it
        print(f"anytimectl: {stop or 'interrupted'}", file=sys.stderr)
        sys.exit(130)
    except BaseException:
        abort_job_if_ranked()  # the other ranks would wait for this one forever
        raise
    code = result if isinstance(result, int) else 0
    if code:
        end_rank()
    leave_process(code)


def _bad_value_message(error: TyperException, argv: list[str] | None) -> str:
    """"--steps 0: input should be greater than or equal to 1" rather than typer's "Invalid value for '--steps':
    ...": the line names the flag and the value the user gave, as every other error of ours does."""
    param = getattr(error, "param", None)
    message = getattr(error, "message", None)
    names = [n for n in getattr(param, "opts", []) if n.startswith("--")]
    if type(error).__name__ != "BadParameter" or not names or not message:
        return error.format_message()
    args = list(sys.argv[1:] if argv is None else argv)
    value = None
    for index, arg in enumerate(args):
        for name in getattr(param, "opts", []):  # short spellings too (-K 1.5 is --ratio 1.5)
            if arg == name and index + 1 < len(args):
                value = args[index + 1]
            elif arg.startswith(name + "="):
                value = arg[len(name) + 1:]
    text = message.removeprefix("Value error, ").rstrip(".")
    text = text[:1].lower() + text[1:]
    return f"{names[0]} {value}: {text}" if value is not None else f"{names[0]}: {text}"
