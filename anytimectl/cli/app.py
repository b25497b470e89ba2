"""The `anytimectl` command line: one Typer app, every experiment a subcommand.

Importing this module must stay cheap: `anytimectl --help` may not import TensorFlow or torch, so backends
are imported inside the commands that use them. Every bad input becomes one line on stderr and exit code 2.
"""

from __future__ import annotations

import sys
from typing import Annotated

import typer
from typer.exceptions import TyperException

from anytimectl.cli.commands.compress import compress_app
from anytimectl.cli.commands.doctor import doctor
from anytimectl.cli.commands.runs import runs_app
from anytimectl.cli.commands.train_amb_fmb import amb, fmb
from anytimectl.cli.commands.train_dynamic import dynamic
from anytimectl.cli.commands.train_gossip import gossip
from anytimectl.plots.command import plot
from anytimectl.runtime.errors import OutputError, UsageError
from anytimectl.studies.bandwidth import bandwidth
from anytimectl.studies.partitions import partitions_app

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
)
train_app = typer.Typer(
    help="Train a model: master-worker SGD (amb, fmb), dynamic batch sizing (dynamic), gossip averaging (gossip).",
    no_args_is_help=True,
    rich_markup_mode=None,
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


train_app.command("amb")(amb)
train_app.command("fmb")(fmb)
train_app.command("gossip")(gossip)
train_app.command("dynamic")(dynamic)
app.command(name="plot")(plot)
app.add_typer(partitions_app, name="partitions")
app.command(name="bandwidth")(bandwidth)
app.add_typer(compress_app, name="compress")
app.add_typer(runs_app, name="runs")
app.command(name="doctor")(doctor)


def main(argv: list[str] | None = None) -> None:
    """Run the CLI; usage errors of any origin end as one line and exit code 2.

    The console script and `python -m anytimectl` call it without `argv`: they own the process, so a finished
    command leaves it at once (`launch.leave_process`, which skips TensorFlow's and torch's slow teardown with
    `os._exit`). A caller that passes `argv` (a test, a program that embeds anytimectl) gets `SystemExit` as from
    any Click command, and its process goes on."""
    from anytimectl.runtime.launch import abort_job_if_ranked, end_rank, is_rank_zero
    from anytimectl.runtime.launch import leave_process as leave_fast

    leave_process = leave_fast if argv is None else sys.exit
    command = typer.main.get_command(app)
    try:
        result = command.main(args=argv, prog_name="anytimectl", standalone_mode=False)
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
