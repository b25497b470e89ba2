"""Shared fixtures, and the rule that TensorFlow and torch never share a test process.

`import tensorflow` followed by `import torchvision` segfaults (docs/platform-facts.md). Tests that import torch
in-process live in tests/torch/; when a run collects both kinds (plain `python -m pytest`), that folder is left out
of this process and run afterwards in a pytest process of its own, whose result counts in the exit status. A guard
fails any test after which both frameworks are loaded.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from helpers import anytimectl

from anytimectl.runtime import leftovers

REAL_RUN_STEPS = 6


def _act_on_stop_signals_as_from_a_terminal() -> None:
    """A suite started with `nohup` or `&` inherits SIGHUP or SIGINT ignored, and every run it starts would inherit
    that too and rightly ignore them (README, "How runs end"): the tests that press Ctrl-C or close a terminal
    would then fail. The tests stand for a user at a terminal, so the suite acts on both again; tests of the
    ignored case set it for their own child."""
    if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
        signal.signal(signal.SIGINT, signal.default_int_handler)
    if signal.getsignal(signal.SIGHUP) is signal.SIG_IGN:
        signal.signal(signal.SIGHUP, signal.SIG_DFL)


_act_on_stop_signals_as_from_a_terminal()
TORCH_DIR = Path(__file__).parent / "torch"
_CHILD = "ANYTIMECTL_TORCH_TESTS"


def _targets(config: pytest.Config) -> list[Path]:
    return [Path(arg.split("::")[0]).resolve() for arg in config.args if not arg.startswith("-")]


def _torch_only(config: pytest.Config) -> bool:
    targets = _targets(config)
    return bool(targets) and all(t == TORCH_DIR or TORCH_DIR in t.parents for t in targets)


def _torch_dir_targeted(config: pytest.Config) -> bool:
    """The run asked for the torch tests, by naming tests/torch or a folder above it."""
    return any(t == TORCH_DIR or t in TORCH_DIR.parents for t in _targets(config) or [config.rootpath])


def pytest_ignore_collect(collection_path: Path, config: pytest.Config) -> bool | None:
    if os.environ.get(_CHILD) or _torch_only(config):
        return None
    if collection_path == TORCH_DIR:
        if _torch_dir_targeted(config):
            config.stash[_RUN_TORCH] = True
        return True
    return None


_RUN_TORCH = pytest.StashKey[bool]()


def _xdist_worker(config: pytest.Config) -> bool:
    return hasattr(config, "workerinput")


def _xdist_controller(config: pytest.Config) -> bool:
    return getattr(config.option, "dist", "no") != "no" and not _xdist_worker(config)


def pytest_configure(config: pytest.Config) -> None:
    """With pytest-xdist (`-n 2`), each worker takes whole modules (`--dist loadfile`) in place of xdist's default
    of single tests (`load`), which would start a module's fixture, often a set of real runs, in every worker
    that got one of its tests; the runs several modules share are started once for all workers (`_once`)."""
    if getattr(config.option, "dist", "no") == "load":
        config.option.dist = "loadfile"
        config.option.loadscopereorder = False  # the order of pytest_collection_modifyitems below


def _torch_follows(config: pytest.Config) -> bool:
    """Whether this process starts the torch tests' own process when it is done: the one that collected the tests
    (which saw tests/torch/ and left it out), or, with pytest-xdist, the controller (its workers collect)."""
    if _xdist_worker(config):
        return False
    if _xdist_controller(config):
        return not os.environ.get(_CHILD) and not _torch_only(config) and _torch_dir_targeted(config)
    return config.stash.get(_RUN_TORCH, False)


def _torch_args(config: pytest.Config, workers: bool) -> list[str]:
    args = [sys.executable, "-m", "pytest", "-q", str(TORCH_DIR)]
    if config.option.maxfail == 1:
        args.append("-x")
    if config.option.keyword:
        args += ["-k", config.option.keyword]
    if config.option.markexpr:
        args += ["-m", config.option.markexpr]
    if config.option.collectonly:
        args.append("--collect-only")
    if config.option.durations is not None:
        args.append(f"--durations={config.option.durations}")
    if workers and config.option.numprocesses:
        args += ["-n", str(config.option.numprocesses)]
    return args


_TORCH_BESIDE = pytest.StashKey[tuple[subprocess.Popen, object]]()
_LEFTOVERS_BEFORE = pytest.StashKey[set[Path]]()


def pytest_sessionstart(session: pytest.Session) -> None:
    """With pytest-xdist, the torch tests' process runs beside the workers from the start (one process, its
    output shown at the end), filling the cores while the workers wait for their MPI jobs; with `-x` it still
    waits for the others to pass first. Every session but a worker's notes the leftover-like files that exist
    now, which its end leaves alone (`_remove_leftovers`)."""
    config = session.config
    if not _xdist_worker(config):
        config.stash[_LEFTOVERS_BEFORE] = leftovers.snapshot()
    if not (_xdist_controller(config) and _torch_follows(config)) or config.option.maxfail == 1 \
            or config.option.collectonly:
        return
    import tempfile

    output = tempfile.TemporaryFile(mode="w+")
    child = subprocess.Popen(_torch_args(config, workers=False), env={**os.environ, _CHILD: "1"},
                             cwd=config.rootpath, stdout=output, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    config.stash[_TORCH_BESIDE] = child, output


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    config = session.config
    try:
        _finish_torch_tests(session, exitstatus)
    finally:
        _remove_leftovers(config)


def _remove_leftovers(config: pytest.Config) -> None:
    """What the session's killed ranks and bare `mpiexec` jobs left (MPICH's shared-memory segments, 3 MB of RAM
    each in /dev/shm, and TensorFlow's autograph files), removed once the session is over, by the same rules as
    the launcher's clean-up after a failed job (anytimectl.runtime.leftovers: files in use by a live process,
    another suite's, or written in the last seconds stay). Each full run used to leave about a dozen segments."""
    before = config.stash.get(_LEFTOVERS_BEFORE, None)
    if before is not None:
        leftovers.clean(before)


def _finish_torch_tests(session: pytest.Session, exitstatus: int) -> None:
    config = session.config
    if not _torch_follows(config):
        return
    reporter = config.pluginmanager.get_plugin("terminalreporter")
    if reporter is not None:
        reporter.ensure_newline()
        reporter.write_sep("=", "torch tests (their own process: TensorFlow and torch never share one)")
    beside = config.stash.get(_TORCH_BESIDE, None)
    if beside is not None:
        child, output = beside
        returncode = child.wait()
        output.seek(0)
        text = output.read()
        output.close()
        if reporter is not None:
            reporter.write(text)
        else:
            sys.stdout.write(text)
    else:
        if exitstatus not in (0, 5) and config.option.maxfail == 1:
            return
        returncode = subprocess.run(_torch_args(config, workers=True), env={**os.environ, _CHILD: "1"},
                                    cwd=config.rootpath).returncode
    if returncode not in (0, 5):
        session.exitstatus = returncode


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Every test under tests/torch/ imports torch: it carries the `torch` marker without each file saying so.
    With pytest-xdist, the modules with the most `slow` tests go first (the workers take modules in this order), so
    that the long ones are not left for the end, when one worker would run them alone."""
    for item in items:
        if TORCH_DIR in Path(str(item.path)).parents:
            item.add_marker(pytest.mark.torch)
    if _xdist_worker(config):
        slow = Counter(item.path for item in items if item.get_closest_marker("slow"))
        items.sort(key=lambda item: -slow[item.path])


@pytest.fixture(autouse=True)
def _one_framework_per_process():
    yield
    if "tensorflow" in sys.modules and "torch" in sys.modules:
        pytest.fail("TensorFlow and torch were both imported in one test process; torch tests belong in tests/torch/")


def _session_folder(tmp_path_factory) -> Path:
    """A folder of this test session that every pytest-xdist worker sees: each worker's temporary folder is one of
    the session's (`popen-gw0`, ...); without xdist, this process's own."""
    base = tmp_path_factory.getbasetemp()
    if os.environ.get("PYTEST_XDIST_WORKER"):
        base = base.parent
    folder = base / "session"
    folder.mkdir(exist_ok=True)
    return folder


@contextmanager
def _locked(path: Path) -> Iterator[None]:
    with open(path, "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def _once(tmp_path_factory, name: str, make: Callable[[Path], None]) -> Path:
    """The folder `name` of this session, made by `make(folder)` the first time any process of the session (with
    pytest-xdist, any worker) asks for it; later ones wait for it to be made and get the same folder. A `make`
    that fails leaves it to the next one to ask."""
    shared = _session_folder(tmp_path_factory)
    folder = shared / name
    with _locked(shared / f"{name}.lock"):
        made = shared / f"{name}.made"
        if not made.is_file():
            if folder.exists():
                shutil.rmtree(folder)
            folder.mkdir()
            make(folder)
            made.touch()
    return folder


@pytest.fixture(scope="session")
def real_runs(tmp_path_factory) -> dict[str, Path]:
    """One short 2-worker run of each method on the built-in digits data."""
    def make(out: Path) -> None:
        common = ["--workers", "2", "--induce", "cedar:0.2", "--steps", str(REAL_RUN_STEPS), "--test-size", "100",
                  "--out", str(out), "--quiet"]
        anytimectl("train", "amb", "--batch-size", "32", "--partitions", "4", "--name", "amb", *common)
        anytimectl("train", "fmb", "--batch-size", "32", "--name", "fmb", *common)

    out = _once(tmp_path_factory, "real-runs", make)
    return {"amb": out / "amb", "fmb": out / "fmb"}


def _fingerprint(run: Path) -> list[list[str | int]]:
    return sorted([str(path.relative_to(run)), path.stat().st_size, path.stat().st_mtime_ns]
                  for path in run.rglob("*") if path.is_file())


@pytest.fixture(scope="session")
def shared_run(tmp_path_factory) -> Callable[..., Path]:
    """`shared_run(*argv)`: the run directory of `anytimectl *argv --out ... --name ...`, started the first time a
    test of this session (with pytest-xdist, of any worker) asks for that command line and handed to every later
    one, so that modules reading the same tiny run (the figures, the exchanges, the compressor labels) share one
    run instead of each starting its own. Only for tests that read a run: one that resumes, stops or writes into
    a run starts its own. A test that changed a shared run anyway fails the next test that asks for it (files,
    sizes and times are compared)."""

    def run(*argv: str) -> Path:
        key = hashlib.sha256("\0".join(argv).encode()).hexdigest()[:16]

        def make(out: Path) -> None:
            anytimectl(*argv, "--out", str(out), "--name", "run")
            (out / "fingerprint.json").write_text(json.dumps({"argv": argv, "files": _fingerprint(out / "run")}))

        out = _once(tmp_path_factory, f"shared-run-{key}", make)
        record = json.loads((out / "fingerprint.json").read_text())
        assert record["argv"] == list(argv), "two command lines of one key"
        assert _fingerprint(out / "run") == record["files"], f"a test changed the shared run of {' '.join(argv)}"
        return out / "run"

    return run


@pytest.fixture(scope="session")
def sim_runs(tmp_path_factory) -> Path:
    """A small sweep made by the real tool on the simulated backend (no framework, seconds each): AMB and FMB with
    two seeds each in folders of their own, and an FMB run stopped by Ctrl-C (`interrupted`). For the commands that
    read many run directories (`runs`, TensorBoard export), which need real directories, not a real framework."""
    return _once(tmp_path_factory, "sim-sweep", _sim_sweep)


def _sim_sweep(out: Path) -> None:
    common = ["--backend", "sim", "--workers", "2", "--steps", "6", "--test-size", "200", "--quiet"]
    jobs = [
        subprocess.Popen([sys.executable, "-m", "anytimectl", "train", method, *common, "--seed", str(seed),
                          "--out", str(out / method), "--name", f"{method}-s{seed}"],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL, text=True)
        for method in ("amb", "fmb") for seed in (0, 1)
    ]
    for job in jobs:
        _, err = job.communicate(timeout=240)
        assert job.returncode == 0, err
    stopped = out / "fmb" / "stopped"
    job = subprocess.Popen([sys.executable, "-m", "anytimectl", "train", "fmb", "--backend", "sim", "--workers", "0",
                            "--steps", "100000", "--out", str(out / "fmb"), "--name", "stopped", "--quiet"],
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL, text=True,
                           start_new_session=True)
    try:
        table = stopped / "master_stats.csv"
        deadline = time.monotonic() + 120
        while not (table.is_file() and len(table.read_text().splitlines()) > 3):
            assert job.poll() is None and time.monotonic() < deadline, "the run to interrupt did not start"
            time.sleep(0.2)
        job.send_signal(signal.SIGINT)
        _, err = job.communicate(timeout=60)
    finally:
        if job.poll() is None:
            os.killpg(job.pid, signal.SIGKILL)
    assert job.returncode == 130, err
