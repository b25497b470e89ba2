"""What a job's killed ranks leave behind, removed by the launching parent, which outlives them.

A rank that is killed (kill -9, MPI_Abort after another rank failed, the out-of-memory killer) runs no clean-up of
its own: MPICH's shared-memory segments (`/dev/shm/mpich_shm_*`, a few MB each) and TensorFlow's autograph modules
(`__autograph_generated_file*.py` in the temporary folder) stay. The parent notes what exists before it starts
the job (`snapshot`) and, after a job that failed, removes what appeared since and is no longer in use (`clean`):
a file still mapped or open by a live process (another job's), one written in the last few seconds (another job
may be creating it: MPICH creates a segment before it maps it, TensorFlow writes an autograph file before it
imports it) and files of other users are left alone. Two jobs on one machine are common in a sweep; removing the
other's file in that window would crash it.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
import time
from pathlib import Path

SHM = Path("/dev/shm")
_PATTERNS = ((SHM, "mpich_shm_*"), (None, "__autograph_generated_file*.py"))
#: Seconds since it was last written for a new file to count as left behind rather than being made by a live job.
SETTLE_SECONDS = 3.0


def _candidates() -> set[Path]:
    found: set[Path] = set()
    for folder, pattern in _PATTERNS:
        base = folder if folder is not None else Path(tempfile.gettempdir())
        with contextlib.suppress(OSError):
            found.update(p for p in base.glob(pattern) if p.is_file() and p.stat().st_uid == os.getuid())
    return found


def snapshot() -> set[Path]:
    """The leftover-like files that exist now (they belong to others, or to earlier runs: never removed)."""
    return _candidates()


def _in_use() -> set[str]:
    """Paths some live process maps or holds open (another job's segments and files in use)."""
    paths: set[str] = set()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        with contextlib.suppress(OSError):
            for line in (entry / "maps").read_text(errors="replace").splitlines():
                if "/dev/shm/" in line:
                    paths.add(line.split(None, 5)[-1].removesuffix(" (deleted)"))
        with contextlib.suppress(OSError):
            for fd in (entry / "fd").iterdir():
                with contextlib.suppress(OSError):
                    paths.add(os.readlink(fd))
    return paths


def clean(before: set[Path], settle: float = SETTLE_SECONDS) -> list[Path]:
    """Remove the files that appeared since `before`, are not in use and were last written over `settle` seconds
    ago; returns those removed."""
    new = _candidates() - before
    if not new:
        return []
    in_use = _in_use()
    recent = time.time() - settle
    removed = []
    for path in sorted(new):
        if str(path) in in_use:
            continue
        with contextlib.suppress(OSError):
            if path.stat().st_mtime > recent:
                continue
            path.unlink()
            removed.append(path)
    return removed
