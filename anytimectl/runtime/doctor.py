"""`anytimectl --version` and `anytimectl doctor`: what is installed, and whether it works here.

`--version` reads package metadata only (no framework is imported, so it answers at once). `doctor` goes further:
it imports each framework in a subprocess of its own (TensorFlow and torch must never share a process, and a
broken CUDA install should cost a subprocess, not the CLI) to report its build (CUDA or CPU) and whether a GPU is
usable, asks mpi4py which MPI library it was built against, and starts a real 2-rank job with the `mpiexec` that
`--workers` would use, so that "the launcher runs" is a fact, not a guess.
"""

from __future__ import annotations

import json
import platform
import subprocess
import sys
from dataclasses import asdict, dataclass
from importlib import metadata

from anytimectl import __version__

#: distributions whose versions `--version` and `doctor` report, in this order
PACKAGES = ("tensorflow", "torch", "torchvision", "tensorboard", "mpi4py", "mpich", "numpy", "pandas")
#: seconds a probe may take (TensorFlow's import alone takes 5-10 s on a busy 2-core machine)
PROBE_TIMEOUT = 180


def installed(name: str) -> str | None:
    """The installed version of a distribution, or None; reads metadata only, imports nothing."""
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None


def version_text() -> str:
    """One line for `anytimectl --version`: ours, Python's and the installed frameworks' versions."""
    parts = [f"Python {platform.python_version()}"]
    parts += [f"{name} {installed(name)}" for name in ("tensorflow", "torch", "mpi4py", "mpich") if installed(name)]
    return f"anytimectl {__version__} ({', '.join(parts)})"


@dataclass
class Check:
    """One line of the doctor's report."""

    name: str
    ok: bool  # False: something a command needs does not work
    detail: str
    data: dict | None = None


_TENSORFLOW = """
import json, os
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
import tensorflow as tf
info = tf.sysconfig.get_build_info()
print(json.dumps({"version": tf.__version__, "cuda_build": bool(tf.test.is_built_with_cuda()),
                  "cuda": info.get("cuda_version"), "cudnn": info.get("cudnn_version"),
                  "gpus": [d.name for d in tf.config.list_physical_devices("GPU")]}))
"""
_TORCH = """
import json
import torch
import torch.distributed as dist
gpu = torch.cuda.is_available()
print(json.dumps({"version": torch.__version__, "cuda_build": torch.version.cuda is not None,
                  "cuda": torch.version.cuda, "gpus": [torch.cuda.get_device_name(i)
                                                       for i in range(torch.cuda.device_count())] if gpu else [],
                  "distributed": dist.is_available(),
                  "gloo": dist.is_available() and dist.is_gloo_available(),
                  "nccl": dist.is_available() and dist.is_nccl_available()}))
"""
_MPI = """
import json
import mpi4py
from mpi4py import MPI
print(json.dumps({"mpi4py": mpi4py.__version__,
                  "library": " ".join(MPI.Get_library_version().strip().splitlines()[0].split()),
                  "standard": "%d.%d" % MPI.Get_version()}))
"""
#: one write per rank (a pipe keeps a write this small whole; print's pieces would interleave between ranks)
_RANK = "import os; from mpi4py import MPI; c = MPI.COMM_WORLD; os.write(1, b'%d %d\\n' % (c.Get_rank(), c.Get_size()))"


def _probe(code: str, timeout: float = PROBE_TIMEOUT) -> tuple[dict | None, str]:
    """Run `code` in a fresh interpreter; (its JSON answer, or None and why it failed)."""
    try:
        result = subprocess.run([sys.executable, "-P", "-c", code], capture_output=True, text=True, timeout=timeout,
                                stdin=subprocess.DEVNULL)
    except subprocess.TimeoutExpired:
        return None, f"did not answer within {timeout:.0f} s"
    if result.returncode != 0:
        lines = [line for line in result.stderr.strip().splitlines() if line.strip()]
        return None, lines[-1] if lines else f"exit {result.returncode}"
    try:
        return json.loads(result.stdout.strip().splitlines()[-1]), ""
    except (ValueError, IndexError):
        return None, f"unexpected output: {result.stdout.strip()[-200:]!r}"


def _framework(name: str, code: str) -> Check:
    if installed(name) is None:
        return Check(name, False, "not installed (pip install anytimectl brings it)")
    data, error = _probe(code)
    if data is None:
        return Check(name, False, f"installed ({installed(name)}) but does not import: {error}")
    build = f"CUDA {data['cuda']} build" if data["cuda_build"] else "CPU build"
    gpus = data["gpus"]
    gpu = f"{len(gpus)} GPU(s) usable: {', '.join(gpus)}" if gpus else "no GPU usable (runs on the CPU)"
    extra = ""
    if name == "torch":
        backends = [b for b in ("gloo", "nccl") if data.get(b)]
        extra = f"; torch.distributed: {', '.join(backends) or 'unavailable'}"
    return Check(name, True, f"{data['version']}, {build}, {gpu}{extra}", data)


def _mpi() -> Check:
    if installed("mpi4py") is None:
        return Check("mpi", False, "mpi4py not installed")
    data, error = _probe(_MPI)
    if data is None:
        return Check("mpi", False, f"mpi4py {installed('mpi4py')} cannot start MPI: {error}")
    return Check("mpi", True, f"mpi4py {data['mpi4py']} on {data['library']} (MPI {data['standard']})", data)


def _launcher(ranks: int = 2) -> Check:
    """Start a real job of `ranks` ranks with the mpiexec `--workers` uses, and check every rank answered."""
    from anytimectl.runtime.errors import UsageError
    from anytimectl.runtime.launch import find_mpiexec

    try:
        mpiexec = find_mpiexec()
    except UsageError as error:
        return Check("mpiexec", False, str(error))
    command = [mpiexec, "-n", str(ranks), sys.executable, "-P", "-c", _RANK]
    try:
        result = subprocess.run(command, capture_output=True, text=True, timeout=PROBE_TIMEOUT,
                                stdin=subprocess.DEVNULL)
    except subprocess.TimeoutExpired:
        return Check("mpiexec", False, f"{mpiexec}: a {ranks}-rank job did not end within {PROBE_TIMEOUT} s")
    answers = sorted(line.split() for line in result.stdout.splitlines() if line.strip())
    if result.returncode != 0 or answers != [[str(r), str(ranks)] for r in range(ranks)]:
        tail = (result.stderr.strip().splitlines() or [f"exit {result.returncode}"])[-1]
        return Check("mpiexec", False, f"{mpiexec}: a {ranks}-rank job failed: {tail}")
    return Check("mpiexec", True, f"{mpiexec}: a {ranks}-rank job ran", {"path": mpiexec})


def checks() -> list[Check]:
    """Every check of `anytimectl doctor`, each framework in its own process."""
    found = {name: installed(name) for name in PACKAGES}
    report = [Check("anytimectl", True, f"{__version__} on Python {platform.python_version()} "
                                        f"({platform.system()} {platform.machine()})"),
              Check("packages", True, ", ".join(f"{n} {v}" for n, v in found.items() if v) or "-",
                    {n: v for n, v in found.items()})]
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(max_workers=4) as pool:  # each probe is a process of its own: run them side by side
        probes = [pool.submit(_framework, "tensorflow", _TENSORFLOW), pool.submit(_framework, "torch", _TORCH),
                  pool.submit(_mpi), pool.submit(_launcher)]
        report += [probe.result() for probe in probes]
    return report


def as_json(report: list[Check]) -> str:
    return json.dumps([asdict(c) for c in report], indent=2)
