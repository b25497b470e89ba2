"""File permissions as an ordinary user meets them: --out folders one cannot write, runs written by someone else.

The suite runs as root here, and root ignores file permissions. Becoming `nobody` is not possible for these
tests: the Python interpreter lives under /root (mode 0700), which nobody may enter. Instead each command runs as
root without the two capabilities that bypass permission checks (CAP_DAC_OVERRIDE, CAP_DAC_READ_SEARCH, dropped
from the bounding set before exec): it still owns its own files, but obeys the mode bits of everyone else's,
exactly as another user would. As a non-root user the commands simply run as that user.
"""

from __future__ import annotations

import ctypes
import json
import os
import stat
import subprocess
import sys
from pathlib import Path

import plot_fixtures as fx
import pytest
from test_cli_errors import assert_one_line_error

from anytimectl.runtime.rundir import write_json_atomic

_PR_CAPBSET_DROP = 24
_CAP_DAC_OVERRIDE, _CAP_DAC_READ_SEARCH = 1, 2
NOBODY = 65534


def _can_drop() -> bool:
    probe = subprocess.run([sys.executable, "-c", "import os; os.listdir('/root')"], preexec_fn=_drop,
                           capture_output=True, timeout=30)
    return probe.returncode == 0  # root keeps reading its own files


def _drop() -> None:
    if os.geteuid() != 0:
        return
    libc = ctypes.CDLL(None, use_errno=True)
    for cap in (_CAP_DAC_OVERRIDE, _CAP_DAC_READ_SEARCH):
        if libc.prctl(_PR_CAPBSET_DROP, cap, 0, 0, 0) != 0:
            os._exit(97)


pytestmark = [
    pytest.mark.skipif(not sys.platform.startswith("linux"), reason="capabilities are Linux's"),
    pytest.mark.skipif(os.geteuid() == 0 and not _can_drop(),
                       reason="running as root without the right to drop capabilities (CAP_SETPCAP)"),
]


def as_user(*args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    """The real CLI, with file permissions enforced."""
    return subprocess.run([sys.executable, "-m", "anytimectl", *args], capture_output=True, text=True,
                          timeout=timeout, stdin=subprocess.DEVNULL, preexec_fn=_drop,
                          env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", "MPLCONFIGDIR": os.environ.get(
                              "MPLCONFIGDIR", str(Path.home() / ".config" / "matplotlib"))})


@pytest.fixture
def locked(tmp_path) -> Path:
    """A folder the user may read but not write."""
    folder = tmp_path / "locked"
    folder.mkdir()
    if os.geteuid() == 0:
        os.chown(folder, NOBODY, NOBODY)  # someone else's, mode 0755
    folder.chmod(0o555 if os.geteuid() != 0 else 0o755)
    yield folder
    folder.chmod(0o755)


@pytest.mark.parametrize("where", ["inside", "itself"])
def test_partitions_out_that_cannot_be_written(locked, where):
    out = locked / "runs" if where == "inside" else locked
    result = as_user("partitions", "eval", "--model", "toy-fc", "--batch-size", "4", "--partitions", "2",
                     "--out", str(out))
    assert_one_line_error(result, f"--out {out}", "Permission denied", "writable folder")
    assert not list(locked.iterdir())


def test_bandwidth_out_that_cannot_be_written(locked):
    result = as_user("bandwidth", "--workers", "1", "--sizes", "2^10", "--rounds", "1", "--out", str(locked))
    assert_one_line_error(result, f"--out {locked}", "Permission denied")
    assert not list(locked.iterdir())


@pytest.fixture
def shared_run(tmp_path) -> Path:
    """A training run written by another user, with the modes our writer gives its files."""
    root = tmp_path / "shared"
    root.mkdir()
    run = fx.make_run(root, "amb", steps=40, name="amb")
    meta = (run / "metadata.json").read_text()
    (run / "metadata.json").unlink()
    write_json_atomic(run / "metadata.json", json.loads(meta))  # the writer's mode, not the fixture's
    if os.geteuid() == 0:
        for path in (root, run, *run.iterdir()):
            os.chown(path, NOBODY, NOBODY)
    return run


def test_a_run_written_by_another_user_can_be_plotted(shared_run, tmp_path):
    modes = {p.name: stat.S_IMODE(p.stat().st_mode) for p in shared_run.iterdir()}
    assert modes["metadata.json"] == modes["master_stats.csv"]
    result = as_user("plot", str(shared_run), "--type", "loss_vs_step", "--out", str(tmp_path / "figs"))
    assert result.returncode == 0, result.stderr
    assert list((tmp_path / "figs").glob("loss_vs_step__*.png"))


def test_a_private_metadata_file_is_reported_not_called_corrupt(shared_run, tmp_path):
    (shared_run / "metadata.json").chmod(0o600)
    result = as_user("plot", str(shared_run), "--type", "loss_vs_step", "--out", str(tmp_path / "figs"))
    assert_one_line_error(result, "cannot read", "metadata.json", "Permission denied")
    assert "corrupt" not in result.stderr


@pytest.mark.parametrize("where", ["inside", "itself"])
def test_plot_out_that_cannot_be_written(shared_run, locked, where):
    out = locked / "figs" if where == "inside" else locked
    result = as_user("plot", str(shared_run), "--type", "loss_vs_step", "--out", str(out))
    assert_one_line_error(result, f"--out {out}", "Permission denied", "writable folder")
    assert not list(locked.iterdir())



@pytest.mark.parametrize("command", [["train", "fmb"], ["train", "dynamic"]], ids=["fmb", "dynamic"])
def test_train_out_that_cannot_be_written(locked, command):
    """Refused before any rank starts, for a method with a master and one without."""
    result = as_user(*command, "--workers", "1", "--steps", "2", "--out", str(locked / "runs"))
    assert_one_line_error(result, f"--out {locked / 'runs'}", "Permission denied")
    assert not list(locked.iterdir())
