"""Checkpoints for every method: each rank's full training state in the run directory, and resuming from it.

Layout: `<run_dir>/checkpoints/step-<N>/rank-<r>.ckpt` (one file per rank, written by that rank) and
`manifest.json`, written by rank 0 only once every rank's file is complete (with each file's size, and the
command, method, model, dataset and backend of the run that wrote it, and every rank's write time, which each
rank r > 0 notes in `rank-<r>.seconds`). A step folder without a manifest is an unfinished checkpoint (a rank
died while writing) and is never resumed from. Every file is written under a temporary name and renamed, so a
file that exists is whole; `--resume` still reads the newest checkpoint through before using it
(`check_contents`), and passes over one that is cut short or changed for the one before.

What a rank's file holds is the protocol's business (`PeerProtocol.checkpoint_state`: the engine's model,
optimizer and RNG state, the data stream's position, the step and example counters); nothing that is derived
from (--seed, step) needs saving: straggler delays, gossip partners, the learning-rate schedule. A file is a zip
of `state.json` (the state's tree: numbers, strings, lists, tuples, dicts) and one numpy `.npy` per array or
tensor, read with pickling off: loading a checkpoint runs no code from it, whoever wrote the file (format 2; the
first format was pickle / torch.load without weights_only, and is refused). Checkpoints need the run directory on
a file system every rank can write to (one host, or a shared folder on a cluster).

`--resume RUN_DIR` continues a run from its latest complete checkpoint: the same run directory, its CSV tables
appended to (rows of steps after the checkpoint, which the resumed run does again, are dropped first), its
metadata back to `running` with the resume recorded, and the step count continuing.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import re
import shutil
import tempfile
import time
import zipfile
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np

from anytimectl.runtime.errors import OutputError, UsageError

CHECKPOINTS = "checkpoints"
MANIFEST = "manifest.json"
FORMAT = 2
_TREE = "state.json"
#: Manifest fields that name what wrote the checkpoint; a run of another kind is refused (see `check_identity`).
IDENTITY = ("command", "method", "model", "dataset", "backend")
_STEP_DIR = re.compile(r"^step-(\d+)$")
#: What --checkpoint-on-signal accepts (with or without the SIG prefix).
CHECKPOINT_SIGNALS = ("USR1", "USR2", "TERM", "INT", "HUP")


def checkpoint_signal(name: str | None) -> int | None:
    """The signal number --checkpoint-on-signal names (None: none given), or a one-line error."""
    import signal

    if name is None:
        return None
    text = str(name).strip().upper()
    text = text[3:] if text.startswith("SIG") else text
    if text not in CHECKPOINT_SIGNALS:
        raise UsageError(f"--checkpoint-on-signal {name}: use one of {', '.join(CHECKPOINT_SIGNALS)} (SIGUSR1 is "
                         "the default; TERM for a scheduler's preemption)")
    return int(getattr(signal, f"SIG{text}"))


@dataclass(frozen=True)
class ResumePoint:
    """The checkpoint a run continues from."""

    run_dir: Path
    step: int
    manifest: dict[str, Any]

    @property
    def directory(self) -> Path:
        return step_dir(self.run_dir, self.step)

    def rank_file(self, rank: int) -> Path:
        return rank_path(self.run_dir, self.step, rank)


def step_dir(run_dir: Path, step: int) -> Path:
    return Path(run_dir) / CHECKPOINTS / f"step-{step}"


def rank_path(run_dir: Path, step: int, rank: int) -> Path:
    return step_dir(run_dir, step) / f"rank-{rank}.ckpt"


# --- serialising ------------------------------------------------------------------------------------------------------
#: Tags of the JSON tree for what JSON has no word for; a dict whose keys are all strings without this prefix is
#: written as itself.
_TAG = "__ckpt_"


def _encode(value: Any, arrays: list[tuple[np.ndarray, str | None]]) -> Any:
    """The JSON tree of `value`, its arrays and tensors appended to `arrays` (as numpy, with torch's dtype name
    for a tensor) and referred to by index. Only data: a type it does not know is an error, never pickled."""
    if value is None or isinstance(value, (bool, str)):
        return value
    if isinstance(value, (int, float)) and not isinstance(value, (np.generic,)):
        return value
    if isinstance(value, np.generic):
        arrays.append((np.asarray(value), None))
        return {_TAG + "scalar": len(arrays) - 1}
    if isinstance(value, np.ndarray):
        if value.dtype.hasobject:
            raise TypeError("a checkpoint cannot hold an array of Python objects")
        # np.ascontiguousarray would turn a 0-d array into a 1-d one (TensorFlow's optimizer step count is 0-d)
        arrays.append((value if value.flags.c_contiguous else value.copy(order="C"), None))
        return {_TAG + "array": len(arrays) - 1}
    if type(value).__module__.startswith("torch") and type(value).__name__ in ("Tensor", "Parameter"):
        tensor = value.detach().cpu()
        arrays.append((tensor.contiguous().numpy().copy(), str(tensor.dtype).removeprefix("torch.")))
        return {_TAG + "tensor": len(arrays) - 1}
    if isinstance(value, deque):
        return {_TAG + "deque": [[_encode(v, arrays) for v in value], value.maxlen]}
    if isinstance(value, tuple):
        return {_TAG + "tuple": [_encode(v, arrays) for v in value]}
    if isinstance(value, list):
        return [_encode(v, arrays) for v in value]
    if isinstance(value, dict):
        if all(isinstance(k, str) and not k.startswith(_TAG) for k in value):
            return {k: _encode(v, arrays) for k, v in value.items()}
        return {_TAG + "items": [[_encode(k, arrays), _encode(v, arrays)] for k, v in value.items()]}
    raise TypeError(f"a checkpoint cannot hold a {type(value).__module__}.{type(value).__qualname__} (only numbers, "
                    "strings, lists, tuples, dicts, numpy arrays and torch tensors)")


def _decode(tree: Any, arrays: Callable[[int], np.ndarray], dtypes: dict[int, str],
            tensors: bool = True) -> Any:
    """The value `_encode` wrote; torch tensors come back as tensors, or (`tensors=False`, for a process that must
    not import torch, such as TensorFlow's) as the numpy arrays they were stored as."""
    if isinstance(tree, list):
        return [_decode(v, arrays, dtypes, tensors) for v in tree]
    if not isinstance(tree, dict):
        return tree
    if len(tree) == 1:
        (key, inner), = tree.items()
        if key == _TAG + "array":
            return arrays(int(inner))
        if key == _TAG + "scalar":
            return arrays(int(inner))[()]
        if key == _TAG + "tensor":
            array = arrays(int(inner))
            if not tensors:
                return array
            import torch

            tensor = torch.from_numpy(array)
            wanted = getattr(torch, dtypes.get(int(inner), ""), None)
            return tensor.to(wanted) if isinstance(wanted, torch.dtype) and tensor.dtype != wanted else tensor
        if key == _TAG + "deque":
            items, maxlen = inner
            return deque((_decode(v, arrays, dtypes, tensors) for v in items), maxlen=maxlen)
        if key == _TAG + "tuple":
            return tuple(_decode(v, arrays, dtypes, tensors) for v in inner)
        if key == _TAG + "items":
            return {_hashable(_decode(k, arrays, dtypes, tensors)): _decode(v, arrays, dtypes, tensors)
                    for k, v in inner}
    return {k: _decode(v, arrays, dtypes, tensors) for k, v in tree.items()}


def _hashable(key: Any) -> Any:
    return tuple(key) if isinstance(key, list) else key


def dump_state(state: dict[str, Any], stream: BinaryIO) -> None:
    """Write `state` as a zip of `state.json` (the tree, every number and string) and one `.npy` per array or
    tensor (numpy's array format with pickling off). Reading it back runs no code from the file, unlike pickle
    or torch.load without weights_only."""
    arrays: list[tuple[np.ndarray, str | None]] = []
    tree = _encode(state, arrays)
    dtypes = {str(i): d for i, (_, d) in enumerate(arrays) if d is not None}
    with zipfile.ZipFile(stream, "w", compression=zipfile.ZIP_STORED, allowZip64=True) as archive:
        archive.writestr(_TREE, json.dumps({"format": FORMAT, "tree": tree, "torch_dtypes": dtypes},
                                           allow_nan=True))
        for index, (array, _) in enumerate(arrays):
            with archive.open(f"{index}.npy", "w", force_zip64=True) as entry:
                np.lib.format.write_array(entry, array, allow_pickle=False)


def load_state(stream: BinaryIO, tensors: bool = True) -> dict[str, Any]:
    """Read what `dump_state` wrote (`tensors=False`: torch tensors as numpy arrays, without importing torch).
    Raises ValueError (or zipfile/OSError) for a file that is not whole."""
    with zipfile.ZipFile(stream) as archive:
        head = json.loads(archive.read(_TREE))
        if not isinstance(head, dict) or head.get("format") != FORMAT:
            raise ValueError(f"not a checkpoint in format {FORMAT}")
        names = set(archive.namelist())

        def array(index: int) -> np.ndarray:
            name = f"{index}.npy"
            if name not in names:
                raise ValueError(f"the file has no array {name}")
            with archive.open(name) as entry:
                data = entry.read()  # reading the whole entry checks its CRC
            return np.lib.format.read_array(io.BytesIO(data), allow_pickle=False)

        dtypes = {int(k): str(v) for k, v in dict(head.get("torch_dtypes") or {}).items()}
        state = _decode(head["tree"], array, dtypes, tensors)
    if not isinstance(state, dict):
        raise ValueError("the checkpoint's state is not a mapping")
    return state


def save_rank(run_dir: Path, step: int, rank: int, state: dict[str, Any], backend: str | None = None) -> Path:
    """Write one rank's state for `step` atomically (a temporary name in the same folder, then a rename). A file
    that cannot be written (a full disk, a removed folder) leaves no temporary file and raises `CheckpointWriteError`
    naming the path. `backend` is accepted for callers of the first format; the format is the same for all."""
    target = rank_path(run_dir, step, rank)
    temporary: str | None = None
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        handle, temporary = tempfile.mkstemp(dir=target.parent, prefix=f".rank-{rank}-", suffix=".tmp")
        with os.fdopen(handle, "wb") as stream:
            dump_state({"format": FORMAT, "step": step, "rank": rank, **state}, stream)
            stream.flush()
            os.fsync(stream.fileno())
        os.replace(temporary, target)
    except OSError as error:
        if temporary is not None:
            Path(temporary).unlink(missing_ok=True)
        raise CheckpointWriteError(target, error) from None
    except BaseException:
        if temporary is not None:
            Path(temporary).unlink(missing_ok=True)
        raise
    return target


def peek(path: Path, *keys: str) -> Any:
    """One plain value (a number, a string) of a rank's file, found by its keys in the state's tree, without
    reading the file's arrays: what another rank needs to know of a file it did not write (the asynchronous
    master reads each worker's contribution count at a checkpoint). Raises KeyError where the tree has no such
    value, ValueError (or zipfile/OSError) for a file that is not whole."""
    with zipfile.ZipFile(path) as archive:
        head = json.loads(archive.read(_TREE))
    if not isinstance(head, dict) or head.get("format") != FORMAT:
        raise ValueError(f"{path} is not a checkpoint in format {FORMAT}")
    value = head["tree"]
    for key in keys:
        value = value[key]
    if isinstance(value, (dict, list)):
        raise KeyError(f"{'/'.join(keys)} is not a plain value in {path}")
    return value


class CheckpointWriteError(OutputError):
    """A checkpoint file could not be written; its message is one line naming the path and the reason."""

    def __init__(self, path: Path, error: OSError):
        super().__init__(path, error, "write checkpoint")


def load_rank(point: ResumePoint, rank: int, backend: str | None = None, tensors: bool = True) -> dict[str, Any]:
    """This rank's state of the checkpoint, or a one-line error: a missing, truncated or altered file, or one in
    the first format (pickle, which can run code when read: never loaded). `tensors=False`: torch tensors as numpy
    arrays (see load_state)."""
    path = point.rank_file(rank)
    expected = (point.manifest.get("sizes") or {}).get(path.name)
    try:
        if expected is not None and path.stat().st_size != int(expected):
            raise ValueError(f"{path.stat().st_size} bytes where the manifest says {expected}: the file is cut short "
                             "or was changed")
        with open(path, "rb") as stream:
            state = load_state(stream, tensors)
    except FileNotFoundError:
        raise UsageError(f"checkpoint {point.directory} has no file for rank {rank} ({path.name}); it was written "
                         f"by a job of {point.manifest.get('ranks')} ranks") from None
    except Exception as error:  # noqa: BLE001 - any unreadable file is one line
        raise UsageError(f"cannot read checkpoint {path}: {type(error).__name__}: {error}".splitlines()[0]) from None
    if state.get("format") != FORMAT or state.get("step") != point.step:
        raise UsageError(f"{path} is not a checkpoint of step {point.step} in this format")
    return state


def write_manifest(run_dir: Path, step: int, ranks: int, info: dict[str, Any]) -> Path:
    """Rank 0, once every rank has written its file: the checkpoint is complete. The manifest records each
    file's size (a file cut short later is refused) and `info` (the run's identity, counters, time)."""
    from anytimectl.runtime.rundir import now_iso, write_json_atomic

    missing = [r for r in range(ranks) if not rank_path(run_dir, step, r).is_file()]
    if missing:
        raise RuntimeError(f"checkpoint of step {step}: ranks {missing} have not written their files")
    files = [rank_path(run_dir, step, r) for r in range(ranks)]
    path = step_dir(run_dir, step) / MANIFEST
    write_json_atomic(path, {**info, "format": FORMAT, "step": step, "ranks": ranks, "written_at": now_iso(),
                             "files": [f.name for f in files], "sizes": {f.name: f.stat().st_size for f in files}})
    return path


def remove_temporary(run_dir: Path) -> list[Path]:
    """Remove the temporary files of checkpoints being written when the job ended (a rank killed mid-write, or
    every rank stopped by MPI_Abort after another failed): called by the launching parent, which outlives them."""
    removed = []
    for path in (Path(run_dir) / CHECKPOINTS).glob("step-*/.rank-*.tmp"):
        with contextlib.suppress(OSError):
            path.unlink()
            removed.append(path)
    return removed


# --- finding and pruning ------------------------------------------------------------------------------------------
def complete_steps(run_dir: Path) -> list[int]:
    """Steps with a complete checkpoint (a manifest), ascending."""
    folder = Path(run_dir) / CHECKPOINTS
    if not folder.is_dir():
        return []
    steps = []
    for entry in folder.iterdir():
        match = _STEP_DIR.match(entry.name)
        if match and (entry / MANIFEST).is_file():
            steps.append(int(match.group(1)))
    return sorted(steps)


def read_manifest(run_dir: Path, step: int) -> dict[str, Any]:
    """The manifest of `step`, checked: a ValueError saying what is wrong for one that is not whole or not ours."""
    path = step_dir(run_dir, step) / MANIFEST
    try:
        manifest = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise ValueError(f"{path} cannot be read ({type(error).__name__}: {error})".splitlines()[0]) from None
    if not isinstance(manifest, dict):
        raise ValueError(f"{path} is not a checkpoint manifest")
    if manifest.get("format") != FORMAT:
        raise ValueError(f"{path} is in checkpoint format {manifest.get('format')!r}, which this version does not read "
                         f"(format 1 was pickle, which can run code when loaded; this version writes format {FORMAT})")
    ranks, files, sizes = manifest.get("ranks"), manifest.get("files"), manifest.get("sizes")
    if (manifest.get("step") != step or not isinstance(ranks, int) or ranks < 1 or not isinstance(files, list)
            or len(files) != ranks or not isinstance(sizes, dict)):
        raise ValueError(f"{path} is incomplete (it needs step, ranks, files and sizes)")
    for name in files:
        file = step_dir(run_dir, step) / str(name)
        if not file.is_file():
            raise ValueError(f"{file} is missing")
        if file.stat().st_size != sizes.get(name):
            raise ValueError(f"{file} has {file.stat().st_size} bytes where the manifest says {sizes.get(name)}: "
                             "it is cut short or was changed")
    return manifest


def check_contents(run_dir: Path, step: int, manifest: dict[str, Any]) -> None:
    """Read every file of the checkpoint through as a rank will (`load_state`, which checks each entry's CRC-32
    and that every array the state names is there; torch tensors as numpy arrays): a file changed in place without
    a change of size fails with a ValueError naming it. A byte changed where the zip format keeps what the reader
    does not use (an entry's time stamp) passes: the state read is the same."""
    for name in manifest["files"]:
        path = step_dir(run_dir, step) / str(name)
        try:
            with open(path, "rb") as stream:
                state = load_state(stream, tensors=False)
        except Exception as error:  # noqa: BLE001 - whatever a damaged zip raises
            raise ValueError(f"{path} is damaged ({type(error).__name__}: {error})".splitlines()[0]) from None
        if state.get("format") != FORMAT or state.get("step") != step:
            raise ValueError(f"{path} is not a checkpoint of step {step} in this format")


def latest(run_dir: Path, skipped: list[str] | None = None, contents: bool = False) -> ResumePoint | None:
    """The newest complete checkpoint that is whole (manifest readable, every file of its recorded size, and with
    `contents` every file read through: `check_contents`); the reasons newer ones were passed
    over go to `skipped`."""
    for step in reversed(complete_steps(run_dir)):
        try:
            manifest = read_manifest(run_dir, step)
            if contents:
                check_contents(run_dir, step, manifest)
            return ResumePoint(Path(run_dir), step, manifest)
        except ValueError as error:
            if skipped is not None:
                skipped.append(str(error))
    return None


def resume_point(run_dir: Path, metadata: dict[str, Any] | None = None, warn: bool = True) -> ResumePoint:
    """The latest usable checkpoint of a run, or a one-line error saying what is missing or wrong. A newer
    checkpoint that is damaged (cut short, or a byte changed: every file is read through once, see
    `check_contents`) is passed over with a warning on stderr when an older one is whole; the command and every
    rank call this and so agree on the checkpoint. With the run's
    `metadata`, a checkpoint that another kind of run wrote is refused (`check_identity`)."""
    import sys

    from anytimectl.runtime.rundir import run_liveness

    run_dir = Path(run_dir).expanduser()
    if not (run_dir / "metadata.json").is_file():
        raise UsageError(f"--resume {run_dir}: not a run directory (no metadata.json)")
    if metadata is not None and run_liveness(run_dir) == "running":
        writer = metadata.get("writer") or {}
        raise UsageError(f"--resume {run_dir}: the run is still running (pid {writer.get('pid')} on "
                         f"{writer.get('host')}); stop it first (Ctrl-C or SIGTERM)")
    skipped: list[str] = []
    point = latest(run_dir, skipped, contents=True)
    if point is None and skipped:
        raise UsageError(f"--resume {run_dir}: no usable checkpoint: {skipped[0]}")
    if point is None:
        raise UsageError(f"--resume {run_dir}: the run has no complete checkpoint (it ran without "
                         "--checkpoint-every, or stopped before the first one)")
    if skipped and warn:
        print(f"anytimectl: warning: {skipped[0]}; resuming from the checkpoint of step {point.step}",
              file=sys.stderr, flush=True)
    if metadata is not None:
        check_identity(point, metadata)
    return point


def read_metadata(run_dir: Path) -> dict[str, Any]:
    """metadata.json of a run to resume, or a one-line error when it is not whole."""
    path = Path(run_dir).expanduser() / "metadata.json"
    try:
        metadata = json.loads(path.read_text())
    except FileNotFoundError:
        raise UsageError(f"--resume {path.parent}: not a run directory (no metadata.json)") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise UsageError(f"--resume: {path} cannot be read ({type(error).__name__}: {error})".splitlines()[0]) from None
    if not isinstance(metadata, dict) or not isinstance(metadata.get("config"), dict):
        raise UsageError(f"--resume: {path} is incomplete (it has no config); the run cannot be continued")
    return metadata


def identity(request: Any) -> dict[str, Any]:
    """What a checkpoint records of the run that wrote it (a RunRequest)."""
    return {name: getattr(request, name, None) for name in IDENTITY}


def check_identity(point: ResumePoint, metadata: dict[str, Any]) -> None:
    """Refuse, in one line, a checkpoint that a run of another command, method, model, dataset or backend wrote
    than the one its folder's metadata.json describes (a copied or mixed-up checkpoint)."""
    config = metadata.get("config") or {}
    for name in IDENTITY:
        recorded = point.manifest.get(name)
        expected = metadata.get(name, config.get(name))
        if recorded is not None and expected is not None and recorded != expected:
            raise UsageError(f"--resume {point.run_dir}: the checkpoint of step {point.step} was written by a run of "
                             f"{name} {recorded!r}, this run is {name} {expected!r}; it cannot continue it")


def prune(run_dir: Path, keep: int) -> list[int]:
    """Remove all but the `keep` latest complete checkpoints, and unfinished ones older than the latest complete
    one (left by a rank that died while writing). Returns the steps removed."""
    steps = complete_steps(run_dir)
    if not steps:
        return []
    newest = steps[-1]
    removed = steps[:-keep] if keep > 0 else steps
    folder = Path(run_dir) / CHECKPOINTS
    for entry in folder.iterdir():
        match = _STEP_DIR.match(entry.name)
        if match and int(match.group(1)) < newest and not (entry / MANIFEST).is_file():
            removed.append(int(match.group(1)))
    for step in removed:
        shutil.rmtree(step_dir(run_dir, step), ignore_errors=True)
    return sorted(removed)


class Checkpointer:
    """What PeerProtocol's loop does with checkpoints: every rank saves its file after the steps due, rank 0
    writes the manifest once it knows every rank has passed that step (the step reports tell it), and prunes."""

    def __init__(self, run_dir: Path | None, every: int | None, keep: int, rank: int, size: int,
                 backend: str | None, log: Callable[..., None], identity: dict[str, Any] | None = None,
                 on_written: Callable[[int, float, float, int], None] | None = None):
        self.run_dir = Path(run_dir) if run_dir is not None else None
        self.every = every
        self.keep = keep
        self.rank, self.size = rank, size
        self.backend = backend
        self.log = log
        self.identity = dict(identity or {})
        self.on_written = on_written
        self.last_saved: int | None = None
        self._unconfirmed: dict[int, dict[str, Any]] = {}  # rank 0: step -> manifest info

    @property
    def enabled(self) -> bool:
        """Checkpoints every N steps (and at the end of a run that stopped)."""
        return self.every is not None and self.run_dir is not None

    @property
    def can_write(self) -> bool:
        """A checkpoint can be written (the run directory is known): a --checkpoint-on-signal stop writes one."""
        return self.run_dir is not None

    def due(self, step: int) -> bool:
        return self.enabled and step % self.every == 0

    def pending(self) -> list[int]:
        """Rank 0: steps it saved whose checkpoint is not complete yet, ascending."""
        return sorted(self._unconfirmed)

    def confirm_written(self, up_to: int | None = None) -> list[int]:
        """Rank 0, where no message says that the others have saved (the asynchronous master-worker protocol):
        complete each pending checkpoint (of a step up to `up_to`, where given) whose files every rank has
        written (a file exists only once whole)."""
        done = [step for step in self.pending() if (up_to is None or step <= up_to)
                and all(rank_path(self.run_dir, step, r).is_file() for r in range(self.size))]
        for step in done:
            self.confirmed(step)
        return done

    def save(self, step: int, state: dict[str, Any], info: dict[str, Any], started: float | None = None) -> None:
        """This rank's file of `step`; on rank 0, `info` (counters, elapsed time) waits for the manifest.
        `started`: when gathering the state began (time.time(); default now): the write time counts from there.
        Rank 0 hands the time to `on_written(step, start, end, bytes)` (the recorder: trace, live view, summary)."""
        started = time.time() if started is None else started
        path = save_rank(self.run_dir, step, self.rank, state, self.backend)
        ended = time.time()
        self.last_saved = step
        if self.rank != 0:  # for rank 0's manifest: every rank's write time (before this rank reports the step)
            with contextlib.suppress(OSError):
                _seconds_path(self.run_dir, step, self.rank).write_text(f"{ended - started:.4f}\n")
        if self.rank == 0:
            size = path.stat().st_size
            self._unconfirmed[step] = {**self.identity, **info, "save_seconds": round(ended - started, 4),
                                       "rank0_bytes": size}
            if self.on_written is not None:
                self.on_written(step, started, ended, size)

    def confirmed(self, step: int) -> None:
        """Rank 0: every rank has passed `step` (so each wrote its file before): complete the checkpoint."""
        info = self._unconfirmed.pop(step, None)
        if info is None:
            return
        seconds = [info.get("save_seconds"), *(_read_seconds(self.run_dir, step, r) for r in range(1, self.size))]
        known = [s for s in seconds if s is not None]
        info = {**info, "save_seconds_ranks": seconds, "save_seconds_max": max(known) if known else None}
        write_manifest(self.run_dir, step, self.size, info)
        removed = prune(self.run_dir, self.keep)
        self.log("checkpoint written", step=step, folder=str(step_dir(self.run_dir, step)), removed=removed,
                 seconds=info.get("save_seconds"), seconds_max=info["save_seconds_max"],
                 rank0_bytes=info.get("rank0_bytes"))


def _seconds_path(run_dir: Path, step: int, rank: int) -> Path:
    """Where a rank other than 0 notes how long its file of `step` took to write (gathering the state included)."""
    return step_dir(run_dir, step) / f"rank-{rank}.seconds"


def _read_seconds(run_dir: Path, step: int, rank: int) -> float | None:
    """A rank's write time of `step`, or None where it left none (written by an older version, or lost)."""
    try:
        return float(_seconds_path(run_dir, step, rank).read_text())
    except (OSError, ValueError):
        return None


class CheckpointingMixin:
    """The protocol side of checkpoints, for any protocol class (the contract: anytimectl/cli/commands/resume.py).

    The protocol defines `checkpoint_state()` / `load_checkpoint_state(state)` and has `context`, `rank`, `size`
    and `examples`; this mixin gives it `make_checkpointer()`, `save_checkpoint(checkpointer, step, epoch)` and
    `restore_checkpoint(resume)`, which sets `start_step`, `start_examples` and `start_elapsed` (the step and the
    clock the rows continue from)."""

    start_step: int = 0
    start_examples: float = 0.0
    start_elapsed: float = 0.0

    def make_checkpointer(self) -> Checkpointer:
        c = self.context.config  # type: ignore[attr-defined]
        recorder = getattr(self.context, "recorder", None)  # type: ignore[attr-defined]
        return Checkpointer(getattr(self.context, "run_dir_path", None), c.checkpoint_every,  # type: ignore
                            int(c.keep_checkpoints or 2), self.rank, self.size,  # type: ignore[attr-defined]
                            self.context.request.backend, self.context.log,  # type: ignore[attr-defined]
                            identity(self.context.request),  # type: ignore[attr-defined]
                            on_written=getattr(recorder, "checkpoint_written", None))

    def save_checkpoint(self, checkpointer: Checkpointer, step: int, epoch: float, **info: Any) -> None:
        """This rank's file of `step` (its state now); rank 0's manifest will record the counters and the run's
        elapsed time, where a resumed run's clock continues."""
        started = time.time()
        recorder = self.context.recorder  # type: ignore[attr-defined]
        elapsed = started - recorder.origin if recorder is not None else 0.0
        checkpointer.save(step, self.checkpoint_state(),  # type: ignore[attr-defined]
                          {"examples": self.examples, "epoch": epoch, "elapsed": elapsed, **info},  # type: ignore
                          started=started)

    def restore_checkpoint(self, resume: ResumePoint) -> dict[str, Any]:
        """Load this rank's state of `resume` (one line for a checkpoint of another size or model); returns it."""
        ranks = int(resume.manifest.get("ranks", -1))
        if ranks != self.size:  # type: ignore[attr-defined]
            raise UsageError(f"--resume: the checkpoint of step {resume.step} was written by {ranks} ranks, this job "
                             f"has {self.size}; resume with the same number of workers")  # type: ignore
        state = load_rank(resume, self.rank, self.context.request.backend)  # type: ignore[attr-defined]
        try:
            self.load_checkpoint_state(state)  # type: ignore[attr-defined]
        except (KeyError, ValueError, RuntimeError, TypeError, IndexError) as error:  # another model, a missing part
            raise UsageError(f"--resume: the checkpoint of step {resume.step} does not fit this run's "
                             f"{self.context.request.model} model: {type(error).__name__}: {error}"  # type: ignore
                             .splitlines()[0][:300]) from None
        self.start_step = resume.step
        self.start_examples = float(state.get("examples", 0.0))
        self.start_elapsed = float(resume.manifest.get("elapsed", 0.0))
        return state
