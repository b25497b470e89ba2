"""Bad input ends with one line on stderr naming the problem, exit code 2, and no traceback."""

from __future__ import annotations

import subprocess
import sys

import pytest
from helpers import anytimectl, anytimectl_each, selected_argvs


def assert_one_line_error(result: subprocess.CompletedProcess[str], *fragments: str) -> None:
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert "Traceback" not in result.stderr
    for fragment in fragments:
        assert fragment in lines[0], lines[0]


BAD_INPUTS = [
    (["train", "amb", "--partitions", "300", "--batch-size", "256"], ["--partitions 300", "--batch-size 256"]),
    (["train", "amb", "--time-limit", "0"], ["--time-limit 0", "positive"]),
    (["train", "amb", "--time-limit", "-1.5"], ["--time-limit -1.5"]),
    (["train", "amb", "--time-limit", "soon"], ["'soon'", "auto"]),
    (["train", "fmb", "--dataset", "imagenet"], ["--dataset", "'imagenet'", "digits"]),
    (["train", "fmb", "--dataset", "mnist"], ["--data-dir"]),
    (["train", "fmb", "--dataset", "mnist", "--data-dir", "/no/such/dir"], ["/no/such/dir"]),
    (["train", "fmb", "--induce", "tornado"], ["tornado", "niagara"]),
    (["train", "fmb", "--slow", "2x3"], ["2x3", "WORKER:FACTOR"]),
    (["train", "fmb", "--workers", "2", "--slow", "5:2"], ["worker 5", "1..2"]),
    (["train", "fmb", "--optimizer", "lbfgs"], ["lbfgs", "rms"]),
    (["train", "fmb", "--test-size", "0"], ["--test-size 0"]),
    (["train", "fmb", "--quiet", "--json"], ["--quiet", "--json"]),
    (["train", "fmb", "--no-such-flag"], ["--no-such-flag"]),
    (["train", "fmb", "--batch-size", "many"], ["--batch-size", "integer"]),
    (["train", "fmb", "--model", "resnet"], ["resnet", "digits-cnn"]),
    (["train", "fmb", "--learning-rate", "nan"], ["--learning-rate"]),
    (["train", "fmb", "--learning-rate", "inf"], ["--learning-rate", "finite"]),
    (["train", "amb", "--time-limit", "inf"], ["--time-limit inf"]),
    (["train", "amb", "--time-limit", "nan"], ["--time-limit nan"]),
    (["train", "fmb", "--lr-decay-steps", "0"], ["--lr-decay-steps"]),
    (["train", "fmb", "--lr-epochs-every", "0"], ["--lr-epochs-every 0"]),
    (["train", "fmb", "--epochs", "0"], ["--epochs 0", "greater than 0"]),
    (["train", "fmb", "--test-size", "-2"], ["--test-size -2", "-1 for the whole test split"]),
    (["train", "amb", "--protocol", "async", "--async-time-limit", "0"], ["--async-time-limit 0", "greater than 0"]),
    (["train", "dynamic", "--channels", "2"], ["--channels 2", "1 or 3"]),
    (["train", "gossip", "--learning-rate", "0"], ["--learning-rate 0", "greater than 0"]),
    (["compress", "train", "--learning-rate", "0"], ["--learning-rate 0", "greater than 0"]),
    (["compress", "train", "--augment", "mixup"], ["--augment", "'mixup'", "crop-flip-cutout"]),
    (["train", "fmb", "--target-accuracy", "2"], ["--target-accuracy"]),
    (["train", "fmb", "--device", "tpu"], ["--device", "'tpu'"]),
    (["train", "fmb", "--backend", "jax"], ["--backend", "'jax'"]),
    (["train", "fmb", "--induce", "mix:1,2"], ["--induce"]),
]


@pytest.fixture(scope="module")
def bad_input_results(request) -> dict[tuple[str, ...], subprocess.CompletedProcess[str]]:
    """The selected cases' real CLI, each in a fresh interpreter, started two at a time (helpers.anytimectl_each)."""
    return anytimectl_each(selected_argvs(request, {"test_bad_input_is_one_line_and_exit_2": lambda args, **_: args}))


@pytest.mark.parametrize(("args", "fragments"), BAD_INPUTS)
def test_bad_input_is_one_line_and_exit_2(bad_input_results, args, fragments):
    assert_one_line_error(bad_input_results[tuple(args)], *fragments)


def test_existing_run_directory_is_never_overwritten(tmp_path):
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "keep.txt").write_text("precious")
    result = anytimectl("train", "fmb", "--out", str(tmp_path), "--name", "mine", "--steps", "1", check=False)
    assert_one_line_error(result, "already exists")
    assert (tmp_path / "mine" / "keep.txt").read_text() == "precious"


def test_existing_run_directory_is_refused_before_launching_workers(tmp_path):
    (tmp_path / "mine").mkdir()
    result = anytimectl("train", "fmb", "--workers", "2", "--out", str(tmp_path), "--name", "mine", check=False)
    assert_one_line_error(result, "already exists")


def test_help_imports_neither_tensorflow_nor_torch():
    code = (
        "import sys\n"
        "from anytimectl.cli.app import main\n"
        "for argv in (['--help'], ['train', 'amb', '--help'], ['train', 'fmb', '--help']):\n"
        "    try:\n"
        "        main(argv)\n"
        "    except SystemExit as done:\n"
        "        assert done.code == 0, done.code\n"
        "assert 'tensorflow' not in sys.modules and 'torch' not in sys.modules, 'framework imported'\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert "Examples" in result.stdout


def test_a_caller_that_passes_argv_keeps_its_process_even_with_a_framework_loaded():
    """The console script leaves at once after a command (skipping TensorFlow's and torch's slow teardown); a
    program that calls `main(argv)` (this test suite among them) must get SystemExit back and go on, even once a
    framework is loaded: the fast exit ended the suite's own process silently, with status 0, before."""
    code = (
        "import sys, types\n"
        "sys.modules.setdefault('torch', types.ModuleType('torch'))  # a loaded framework, as far as the exit sees\n"
        "from anytimectl.cli.app import main\n"
        "try:\n"
        "    main(['--version'])\n"
        "except SystemExit as done:\n"
        "    print('returned', done.code)\n"
        "print('still here')\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert "still here" in result.stdout and "returned 0" in result.stdout
