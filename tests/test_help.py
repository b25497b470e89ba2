"""`--help` of every command: readable at 80 columns, its options under their panels, examples shown, and fast
(no framework imported)."""

from __future__ import annotations

import contextlib
import io
import json
import subprocess
import sys

import pytest

from anytimectl.cli.app import COMMANDS as SUMMARIES
from anytimectl.cli.app import TRAIN_COMMANDS, command, main


def _commands(group, path=()):
    """Every command, loading the lazy ones (`LazyGroup`) as `--help` of each would."""
    yield path, group
    for name in getattr(group, "list_commands", lambda ctx: [])(None):
        sub = group.get_command(None, name)
        if sub is not None and not sub.hidden:
            yield from _commands(sub, (*path, name))


COMMANDS = list(_commands(command()))
LEAVES = [(path, command) for path, command in COMMANDS if not getattr(command, "commands", None)]


def _ids(items):
    return [" ".join(path) or "anytimectl" for path, _ in items]


def help_text(path: tuple[str, ...], monkeypatch: pytest.MonkeyPatch, columns: int = 80) -> str:
    """What `anytimectl PATH --help` prints in a terminal of `columns` columns."""
    monkeypatch.setenv("COLUMNS", str(columns))
    out = io.StringIO()
    with contextlib.redirect_stdout(out), pytest.raises(SystemExit) as done:
        main([*path, "--help"])
    assert done.value.code == 0
    return out.getvalue()


@pytest.mark.parametrize(("path", "command"), COMMANDS, ids=_ids(COMMANDS))
def test_help_fits_80_columns(path, command, monkeypatch):
    text = help_text(path, monkeypatch)
    wide = [line for line in text.splitlines() if len(line) > 80]
    assert not wide, f"{' '.join(path)} --help: lines over 80 columns: {wide}"


@pytest.mark.parametrize(("path", "command"), COMMANDS, ids=_ids(COMMANDS))
def test_options_show_under_their_panels(path, command, monkeypatch):
    """Every option with a `rich_help_panel` is listed in the section of that name, and nowhere else."""
    text = help_text(path, monkeypatch, columns=200)
    sections = _sections(text)
    for param in command.params:
        if param.param_type_name != "option" or param.hidden:
            continue
        panel = getattr(param, "rich_help_panel", None) or "Options"
        assert panel in sections, f"{' '.join(path)}: no section {panel!r} (sections: {list(sections)})"
        shown = [name for name, body in sections.items() if any(_lists(line, param.opts[0]) for line in body)]
        assert shown == [panel], f"{' '.join(path)}: {param.opts[0]} under {shown}, declared under {panel!r}"


def _sections(text: str) -> dict[str, list[str]]:
    sections: dict[str, list[str]] = {}
    current = None
    for line in text.splitlines():
        if line and not line.startswith(" ") and line.endswith(":") and not line.startswith("Usage"):
            current = line[:-1]
            sections[current] = []
        elif current is not None:
            sections[current].append(line)
    return sections


def _lists(line: str, flag: str) -> bool:
    """The line is the entry of `flag` (its names start the line), not a mention in another option's help."""
    names = line.strip().split("  ")[0]
    return line.startswith("  -") and flag in names.replace(",", " ").split()


def test_training_commands_share_their_panels(monkeypatch):
    """The option groups every training command takes show under the same headings in each."""
    for path in (("train", "amb"), ("train", "fmb"), ("train", "dynamic"), ("train", "gossip"),
                 ("compress", "train")):
        sections = _sections(help_text(path, monkeypatch))
        for panel in ("Launch", "Data and model", "Training", "Length and evaluation", "Stragglers", "Output"):
            assert panel in sections, f"{' '.join(path)}: no {panel!r} section"


@pytest.mark.parametrize(("path", "command"), LEAVES, ids=_ids(LEAVES))
def test_every_command_shows_examples(path, command, monkeypatch):
    text = help_text(path, monkeypatch)
    assert "Examples:" in text, f"{' '.join(path)} --help has no examples"
    examples = text.split("Examples:", 1)[1]
    assert f"anytimectl {' '.join(path)}" in examples or path[0] == "runs" and "anytimectl runs" in examples


def test_no_range_shown_that_refuses_its_bound(monkeypatch):
    """Help never shows `x>=0` for an option whose 0 is refused: such ranges show as `x>0` (and are refused by
    the parser, one line, exit 2: tests/test_cli_errors.py)."""
    for path in (("train", "amb"), ("train", "gossip"), ("train", "dynamic"), ("compress", "train")):
        text = help_text(path, monkeypatch)
        for flag, shown in (("--epochs", "x>0"), ("--target-accuracy", "0<x<=1"), ("--learning-rate", "x>0"),
                            ("--test-size", "-1 or x>=1")):
            entry = _entry(text, flag)
            assert shown in entry and "x>=0" not in entry and "0<=x" not in entry, f"{' '.join(path)}: {entry}"
    for path in (("train", "dynamic"), ("compress", "train"), ("compress", "bench")):
        assert "0<x<=1" in _entry(help_text(path, monkeypatch), "--ratio")
    assert "x>0" in _entry(help_text(("train", "amb"), monkeypatch), "--time-limit")
    assert "1 or 3" in _entry(help_text(("train", "dynamic"), monkeypatch), "--channels")


def test_batch_size_is_one_option_with_one_meaning(monkeypatch):
    """`--batch-size` is declared once (`options.batch_size_option`): per worker in every command that has it,
    `N`, at least 1; each command says what differs (a ceiling in `train amb`, the start in `train dynamic`)."""
    having = [(path, command) for path, command in LEAVES
              if any(p.name == "batch_size" for p in command.params)]
    assert {" ".join(path) for path, _ in having} >= {"train amb", "train fmb", "train dynamic", "train gossip",
                                                       "compress train", "compress bench"}
    for path, leaf in having:
        param = next(p for p in leaf.params if p.name == "batch_size")
        assert param.opts == ["--batch-size"] and param.metavar == "N" and param.min == 1, path
        entry = _entry(help_text(path, monkeypatch), "--batch-size")
        assert "x>=1" in entry and ("per worker" in entry or path == ("compress", "bench")), entry
    assert "ceiling" in _entry(help_text(("train", "amb"), monkeypatch), "--batch-size")
    assert "at the start" in _entry(help_text(("train", "dynamic"), monkeypatch), "--batch-size")


def _entry(text: str, flag: str) -> str:
    """The help entry of `flag`: its line and the more indented lines that continue it, joined."""
    lines = text.splitlines()
    start = next(i for i, line in enumerate(lines) if _lists(line, flag))
    entry = [lines[start]]
    for line in lines[start + 1:]:
        if not line.startswith("   "):
            break
        entry.append(line.strip())
    return " ".join(entry)


def test_help_imports_no_framework():
    """`--help` of a training command imports neither TensorFlow nor torch (nor rich: plain help is enough)."""
    paths = [["train", "amb"], ["train", "gossip"], ["compress", "train"], ["train", "dynamic"]]
    loaded = _after_help(paths, "sorted(m for m in ('tensorflow', 'torch', 'rich.console') if m in sys.modules)")
    assert loaded == "[]", loaded


def _after_help(paths: list[list[str]], report: str) -> str:
    """In a fresh interpreter, run `anytimectl PATH --help` for each path (its output discarded), then print the
    Python expression `report` (which may use sys and json); returns what it printed."""
    code = ("import json, sys, contextlib, io\n"
            "from anytimectl.cli.app import main\n"
            "with contextlib.redirect_stdout(io.StringIO()):\n"
            f"    for path in {paths!r}:\n"
            "        try:\n"
            "            main([*path, '--help'])\n"
            "        except SystemExit:\n"
            "            pass\n"
            f"print({report})\n")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    return result.stdout.strip()


def test_every_command_is_listed_by_its_own_summary():
    """`anytimectl --help` and `anytimectl train --help` list the commands from app.py's summaries without
    importing them: each summary is the command's own short help."""
    root = command()
    names = [path for path, _ in COMMANDS if len(path) == 1]
    assert [p[0] for p in names] == ["plot", "bandwidth", "doctor", "train", "partitions", "compress", "runs"]
    for table, prefix in ((SUMMARIES, ()), (TRAIN_COMMANDS, ("train",))):
        for name, (_, summary) in table.items():
            loaded = dict(COMMANDS)[(*prefix, name)]
            assert loaded.get_short_help_str(limit=10**6) == summary, name
    assert root.get_command(None, "nonexistent") is None


#: The command module each `--help` may import (besides common.py and resume.py, which the training commands use).
OWN_MODULE = {("train", "gossip"): "train_gossip", ("train", "dynamic"): "train_dynamic",
              ("train", "amb"): "train_amb_fmb", ("compress", "train"): "compress", ("runs",): "runs"}


@pytest.mark.parametrize("path", [(), ("train",), ("train", "gossip"), ("train", "dynamic"), ("train", "amb"),
                                  ("compress", "train"), ("bandwidth",), ("partitions", "eval"), ("runs",), ("plot",)],
                         ids=lambda p: " ".join(p) or "anytimectl")
def test_help_imports_only_its_own_command(path):
    """`anytimectl --help` imports no command module, and a command's `--help` only its own: never numpy, MPI,
    pandas, matplotlib, a protocol's step or the run shell (each command imports them when it runs)."""
    heavy = ("numpy", "mpi4py", "pandas", "matplotlib", "anytimectl.protocols.peer",
             "anytimectl.protocols.master_worker", "anytimectl.runtime.shell", "anytimectl.comm.mpi")
    report = (f"json.dumps([[m for m in {heavy!r} if m in sys.modules], "
              "[m.rsplit('.', 1)[1] for m in sys.modules if m.startswith('anytimectl.cli.commands.')]])")
    heavy, commands = json.loads(_after_help([list(path)], report))
    assert heavy == []
    own = {OWN_MODULE[path], "common", "resume"} if path in OWN_MODULE else set()
    assert set(commands) <= own and (path not in OWN_MODULE or OWN_MODULE[path] in commands), commands
