"""`anytimectl --version` and `anytimectl doctor`: what is installed, and whether it runs here."""

from __future__ import annotations

import json
import subprocess
import sys
from importlib import metadata

import pytest
from helpers import anytimectl

from anytimectl.runtime import doctor


def test_version_names_the_installed_frameworks_without_importing_them():
    result = subprocess.run([sys.executable, "-X", "importtime", "-m", "anytimectl", "--version"],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0
    line = result.stdout.strip()
    assert line.startswith("anytimectl 0.1.0 (Python ") and len(result.stdout.splitlines()) == 1
    for name in ("tensorflow", "torch", "mpi4py"):
        assert f"{name} {metadata.version(name)}" in line
    imported = {row.rsplit("|", 1)[-1].strip().split(".")[0] for row in result.stderr.splitlines() if "|" in row}
    assert not imported & {"tensorflow", "torch"}


@pytest.mark.mpi
@pytest.mark.slow
def test_doctor_reports_each_framework_s_build_the_mpi_library_and_a_launcher_that_runs():
    result = anytimectl("doctor", "--json", timeout=600)
    checks = {c["name"]: c for c in json.loads(result.stdout)}
    assert list(checks) == ["anytimectl", "packages", "tensorflow", "torch", "mpi", "mpiexec"]
    assert all(c["ok"] for c in checks.values()), result.stdout
    for name in ("tensorflow", "torch"):
        data = checks[name]["data"]
        assert data["version"].split("+")[0] == metadata.version(name).split("+")[0]
        assert isinstance(data["cuda_build"], bool) and isinstance(data["gpus"], list)
        assert ("GPU(s) usable" in checks[name]["detail"]) == bool(data["gpus"])
    assert checks["torch"]["data"]["gloo"] is True
    assert checks["mpi"]["data"]["mpi4py"] == metadata.version("mpi4py") and "MPICH" in checks["mpi"]["detail"]
    assert checks["mpiexec"]["detail"].endswith("a 2-rank job ran")
    text = anytimectl("doctor", timeout=600).stdout.splitlines()
    assert [line.split()[0] for line in text] == ["ok"] * 6 and text[-1].split()[1] == "mpiexec"


def test_a_launcher_that_is_missing_or_broken_is_a_failed_check(monkeypatch, tmp_path):
    from anytimectl.runtime import launch
    from anytimectl.runtime.errors import UsageError

    def missing(override=None):
        raise UsageError("no mpiexec found next to this Python or on PATH")

    monkeypatch.setattr(launch, "find_mpiexec", missing)
    check = doctor._launcher()
    assert not check.ok and "no mpiexec found" in check.detail
    broken = tmp_path / "mpiexec"
    broken.write_text("#!/bin/sh\necho 'cannot reach the process manager' >&2\nexit 3\n")
    broken.chmod(0o755)
    monkeypatch.setattr(launch, "find_mpiexec", lambda override=None: str(broken))
    check = doctor._launcher()
    assert not check.ok and "2-rank job failed: cannot reach the process manager" in check.detail
