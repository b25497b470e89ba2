"""Inputs that used to end in a traceback on every rank, or were accepted and then ran wrong or for ever: each is
now refused before anything starts, in one line with exit code 2, or (a delay of minutes) cut short by a stop."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest
from helpers import anytimectl, anytimectl_each, selected_argvs

from anytimectl.runtime.records import RowLayout
from anytimectl.runtime.round_clock import RoundClock
from anytimectl.runtime.stragglers import make_model


def _seed_argv(command, seed):
    length = ("--steps", "1") if command[0] == "train" else ()
    return (*command, "--seed", seed, *length)


def _model_file_argv(source, words):
    folder = _MODEL_FILES[0] / _model_name(source)
    return ("train", "amb", "--model", str(folder / "model.py"), "--workers", "0", "--steps", "1", "--out",
            str(folder / "out"))


def _model_name(source: str) -> str:
    return f"m{abs(hash(source))}"


#: the folder the module fixture writes the model files into, one folder each
_MODEL_FILES: list[Path] = []
_MODEL_FILE_TEST = "test_a_model_file_that_exits_interrupts_or_does_not_fit_is_one_line"
#: each test's command line from its parameters, for the module fixture that starts them together
ARGV_OF = {
    "test_a_seed_outside_what_generators_take_is_one_line": _seed_argv,
    "test_compress_bench_refuses_an_endless_world_and_empty_lists": lambda args, **_: ("compress", "bench", *args),
    "test_absurd_induced_delays_are_refused": lambda spec: ("train", "amb", "--induce", spec, "--steps", "1"),
    _MODEL_FILE_TEST: _model_file_argv,
    "test_a_batch_that_cannot_fit_in_memory_is_refused_before_launch":
        lambda command: (*command, "--batch-size", "1000000000000", "--steps", "1"),
}


@pytest.fixture(scope="module")
def started(request, tmp_path_factory):
    """The selected tests' real CLI, each in a fresh interpreter, started two at a time (helpers.anytimectl_each);
    the model files are written first, each in a folder of its own."""
    _MODEL_FILES[:] = [tmp_path_factory.mktemp("model-files")]
    for item in request.session.items:
        if item.module is request.module and item.originalname == _MODEL_FILE_TEST:
            folder = _MODEL_FILES[0] / _model_name(item.callspec.params["source"])
            folder.mkdir()
            (folder / "model.py").write_text(item.callspec.params["source"])
    return anytimectl_each(selected_argvs(request, ARGV_OF))


def _refused(*args: str, result=None) -> str:
    if result is None:
        result = anytimectl(*args, check=False, timeout=120)
    assert result.returncode == 2, result.stderr[-2000:]
    assert "Traceback" not in result.stderr + result.stdout
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    return lines[0]


@pytest.mark.parametrize("command", [("train", "amb"), ("train", "gossip"), ("compress", "bench")])
@pytest.mark.parametrize("seed", ["-1", str(2**32)])
def test_a_seed_outside_what_generators_take_is_one_line(started, command, seed):
    assert "--seed" in _refused(result=started[_seed_argv(command, seed)])


def test_a_milestone_that_is_not_a_number_is_refused():
    assert "finite" in _refused("train", "amb", "--lr-schedule", "milestones", "--lr-milestones", "nan",
                                "--steps", "1")


@pytest.mark.parametrize("args, words", [
    (("--world", "100000000"), "--world"), (("--methods", ""), "names no method"), (("--methods", ","),
                                                                                   "names no method"),
    (("--modes", ""), "names no mode")])
def test_compress_bench_refuses_an_endless_world_and_empty_lists(started, args, words):
    assert words in _refused(result=started[("compress", "bench", *args)])


@pytest.mark.parametrize("spec", ["mix:1e308,0,1", "niagara:1e300", "mix:0,1e9,1"])
def test_absurd_induced_delays_are_refused(started, spec):
    assert "exceeds the 1024 s" in _refused(result=started[("train", "amb", "--induce", spec, "--steps", "1")])


def test_an_induced_delay_is_cut_short_when_the_rank_is_asked_to_stop():
    clock = RoundClock(RowLayout(()), rank=1, seed=0, delay=make_model("long", [(1000.0, 0.0, 1.0)]))
    asked = []

    def stopped() -> bool:
        asked.append(1)
        return len(asked) >= 3  # a signal arrives during the third slice

    clock.stopped = stopped
    clock.begin(1)  # without the check this sleeps 1000 s
    assert clock.induced == 1000.0 and len(asked) == 3


@pytest.mark.parametrize("source, words", [
    ("import sys\nsys.exit(3)\n", "SystemExit: 3"),
    ("raise KeyboardInterrupt\n", "failed: KeyboardInterrupt"),
    ("def build(shape, classes):\n    import keras\n    return keras.Sequential([keras.Input(shape), "
     "keras.layers.Flatten(), keras.layers.Dense(classes + 3)])\n", "gave (1, 13), not logits of shape (1, 10)"),
])
def test_a_model_file_that_exits_interrupts_or_does_not_fit_is_one_line(started, source, words):
    argv = _model_file_argv(source, words)
    line = _refused(result=started[argv])
    assert words in line
    assert not Path(argv[-1]).exists()  # nor an empty --out folder left behind


@pytest.mark.skipif(os.geteuid() != 0 or shutil.which("mount") is None, reason="mounting a read-only tmpfs needs root")
def test_plot_into_a_read_only_file_system_is_one_line(tmp_path):
    from plot_fixtures import make_run

    run = make_run(tmp_path, "amb", steps=20, name="r")
    target = tmp_path / "ro"
    target.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m,ro", "tmpfs", str(target)], check=True)
    try:
        line = _refused("plot", str(run), "-o", str(target))
        assert "Read-only file system" in line and str(target) in line
    finally:
        subprocess.run(["umount", str(target)], check=False)


@pytest.mark.parametrize("command", [("train", "amb"), ("train", "fmb", "--workers", "2"), ("train", "gossip"),
                                     ("train", "dynamic"), ("compress", "train", "--workers", "2")])
def test_a_batch_that_cannot_fit_in_memory_is_refused_before_launch(started, command):
    line = _refused(result=started[(*command, "--batch-size", "1000000000000", "--steps", "1")])
    assert "--batch-size 1000000000000" in line and "memory available" in line


@pytest.mark.slow
def test_a_run_whose_loss_is_nan_says_so(tmp_path):
    model = tmp_path / "nan.py"
    model.write_text("def build(shape, classes):\n    import keras\n    return keras.Sequential([keras.Input(shape), "
                     "keras.layers.Flatten(), keras.layers.Dense(classes), "
                     "keras.layers.Lambda(lambda t: t * float('nan'))])\n")
    result = anytimectl("train", "fmb", "--model", f"{model}:build", "--workers", "0", "--steps", "3",
                        "--test-size", "100", "--out", str(tmp_path), "--name", "n", "--json", check=False)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "warning: the training loss became NaN or infinite at step 1" in result.stderr
    from helpers import metadata

    summary = metadata(tmp_path / "n")["summary"]
    assert summary["diverged_at_step"] == 1 and "diverged" in summary["warnings"][0]
