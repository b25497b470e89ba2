"""The launching parent removes what killed ranks leave (anytimectl.runtime.leftovers): MPICH's /dev/shm segments and
TensorFlow's autograph files that appeared during the job and are no longer in use; a segment a live process
still maps, and anything that existed before, stay. The test suite applies the same rules to what its own killed
jobs left, when a session ends (tests/conftest.py)."""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import pytest

from anytimectl.runtime import leftovers

pytestmark = pytest.mark.skipif(not Path("/dev/shm").is_dir() or not Path("/proc/self/maps").is_file(),
                                reason="needs /dev/shm and /proc (Linux)")


def test_new_unused_leftovers_go_and_files_in_use_or_being_made_stay():
    tag = uuid.uuid4().hex[:8]
    old = Path("/dev/shm") / f"mpich_shm_old{tag}"
    old.write_bytes(b"\0" * 4096)
    before = leftovers.snapshot()
    dead = Path("/dev/shm") / f"mpich_shm_dead{tag}"
    alive = Path("/dev/shm") / f"mpich_shm_alive{tag}"
    autograph = Path(tempfile.gettempdir()) / f"__autograph_generated_file{tag}.py"
    opened = Path("/dev/shm") / f"mpich_shm_open{tag}"
    fresh = Path("/dev/shm") / f"mpich_shm_fresh{tag}"
    for path in (dead, alive, autograph, opened):
        path.write_bytes(b"\0" * 4096)
        os.utime(path, (time.time() - 60, time.time() - 60))  # written a minute ago: a killed rank's
    fresh.write_bytes(b"\0" * 4096)  # just written: another job may be about to map it
    reader = open(opened, "rb")  # noqa: SIM115 (held open across the clean-up, as another job would)
    holder = subprocess.Popen([sys.executable, "-c", f"import mmap, sys\nf = open({str(alive)!r}, 'r+b')\n"
                               "m = mmap.mmap(f.fileno(), 4096)\nprint('mapped', flush=True)\nsys.stdin.read()"],
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "mapped"
        removed = leftovers.clean(before)
        assert dead in removed and autograph in removed and not dead.exists() and not autograph.exists()
        assert alive.exists() and alive not in removed  # another job's segment, in use
        assert opened.exists() and fresh.exists()  # held open; being made
        assert old.exists()  # there before the job
    finally:
        holder.communicate("", timeout=30)
        reader.close()
        for path in (old, dead, alive, autograph, opened, fresh):
            path.unlink(missing_ok=True)


def test_a_test_session_removes_what_its_killed_jobs_left(tmp_path):
    """The suite's own clean-up (tests/conftest.py, at the end of a session): a session whose test leaves a segment
    and an autograph file, as a killed rank of a bare `mpiexec` job does, ends with both gone; a segment that
    existed before the session stays. The conftest runs as a plugin of a pytest in a folder of its own."""
    tag = uuid.uuid4().hex[:8]
    old = Path("/dev/shm") / f"mpich_shm_before{tag}"
    old.write_bytes(b"\0" * 4096)
    left = [Path("/dev/shm") / f"mpich_shm_left{tag}",
            Path(tempfile.gettempdir()) / f"__autograph_generated_file{tag}.py"]
    (tmp_path / "test_leaves.py").write_text(
        "import os, time\n"
        "def test_leaves():\n"
        f"    for name in {[str(p) for p in left]!r}:\n"
        "        open(name, 'wb').write(bytes(4096))\n"
        "        os.utime(name, (time.time() - 60, time.time() - 60))\n")
    tests = Path(__file__).parent
    try:
        result = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "conftest", "-p", "no:cacheprovider",
                                 "--rootdir", str(tmp_path), "-c", os.devnull, str(tmp_path / "test_leaves.py")],
                                env={**os.environ, "PYTHONPATH": os.pathsep.join([str(tests), os.environ.get(
                                    "PYTHONPATH", "")])}, capture_output=True, text=True, timeout=120)
        assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
        assert [p for p in left if p.exists()] == [] and old.exists()
    finally:
        for path in (old, *left):
            path.unlink(missing_ok=True)
