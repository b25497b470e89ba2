"""What a job's killed ranks leave behind, removed by the launching parent, which outlives them.

A rank that is killed (kill -9, MPI_Abort after another rank failed, the out-of-memory killer) runs no clean-up of
its own: MPICH's shared-memory segments (`/dev/shm/mpich_shm_*`, a few MB each) and TensorFlow's autograph modules
(`__autograph_generated_file*.py` in the temporary folder) stay. The parent notes what exists before it starts
the job (`snapshot`) and, after a job that failed, removes what appeared since and is no longer in use (`clean`):
a segment still mapped by a live process (another job's) and files of other users are left alone.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path

SHM = Path("/dev/shm")
_PATTERNS = ((SHM, "mpich_shm_*"), (None, "__autograph_generated_file*.py"))


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


def _mapped() -> set[str]:
    """Paths of /dev/shm files some live process maps (another job's segments in use)."""
    paths: set[str] = set()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        with contextlib.suppress(OSError):
            for line in (entry / "maps").read_text(errors="replace").splitlines():
                if "/dev/shm/" in line:
                    paths.add(line.split(None, 5)[-1].removesuffix(" (deleted)"))
    return paths


def clean(before: set[Path]) -> list[Path]:
    """Remove the files that appeared since `before` and are not in use; returns those removed."""
    new = _candidates() - before
    if not new:
        return []
    mapped = _mapped() if any(p.parent == SHM for p in new) else set()
    removed = []
    for path in sorted(new):
        if str(path) in mapped:
            continue
        with contextlib.suppress(OSError):
            path.unlink()
            removed.append(path)
    return removed
