"""Checkpoints for every method: each rank's full training state in the run directory, and resuming from it.

Layout: `<run_dir>/checkpoints/step-<N>/rank-<r>.pt` (one file per rank, written by that rank) and
`manifest.json`, written by rank 0 only once every rank's file is complete. A step folder without a manifest is
an unfinished checkpoint (a rank died while writing) and is never resumed from. Every file is written under a
temporary name and renamed, so a file that exists is whole.

What a rank's file holds is the protocol's business (`PeerProtocol.checkpoint_state`: the engine's model,
optimizer and RNG state, the data stream's position, the step and example counters); nothing that is derived
from (--seed, step) needs saving: straggler delays, gossip partners, the learning-rate schedule. Files are written
with the backend's own serializer (torch.save for torch), else pickle. Checkpoints need the run directory on a file
system every rank can write to (one host, or a shared folder on a cluster).

`--resume RUN_DIR` continues a run from its latest complete checkpoint: the same run directory, its CSV tables
appended to (rows of steps after the checkpoint, which the resumed run does again, are dropped first), its
metadata back to `running` with the resume recorded, and the step count continuing.
"""

from __future__ import annotations

import os
import pickle
import re
import shutil
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any

import typer

from anytimectl.errors import UsageError

CHECKPOINTS = "checkpoints"
MANIFEST = "manifest.json"
FORMAT = 1
_STEP_DIR = re.compile(r"^step-(\d+)$")
PANEL_CHECKPOINTS = "Checkpoints"


@dataclass
class CheckpointOptions:
    """When to write checkpoints, and which run to continue."""

    checkpoint_every: Annotated[int | None, typer.Option(
        metavar="N", min=1, rich_help_panel=PANEL_CHECKPOINTS, show_default=False,
        help="Write every rank's training state after every N-th step and after the last one, into "
             "RUN_DIR/checkpoints/ (the original's --checkpoint-interval).")] = None
    keep_checkpoints: Annotated[int, typer.Option(
        metavar="K", min=1, rich_help_panel=PANEL_CHECKPOINTS,
        help="Keep the K latest complete checkpoints; older ones are removed.")] = 2
    resume: Annotated[Path | None, typer.Option(
        metavar="RUN_DIR", rich_help_panel=PANEL_CHECKPOINTS, show_default=False,
        help="Continue this run from its latest checkpoint, with its recorded options, in the same run "
             "directory (the original's --from-checkpoint). --steps/--epochs may extend it.")] = None


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
    return step_dir(run_dir, step) / f"rank-{rank}.pt"


# --- serialising ------------------------------------------------------------------------------------------------------
Dump = Callable[[Any, Any], None]
Load = Callable[[Any], Any]


def serializer(backend: str | None) -> tuple[Dump, Load]:
    """(dump(obj, stream), load(stream)): torch's own format for the torch backend (it stores tensors without
    copying them through pickle), pickle otherwise. torch is imported only for a torch run, which has it loaded."""
    if backend == "torch":
        import torch

        return torch.save, lambda stream: torch.load(stream, map_location="cpu", weights_only=False)
    return (lambda obj, stream: pickle.dump(obj, stream, protocol=pickle.HIGHEST_PROTOCOL)), pickle.load


def save_rank(run_dir: Path, step: int, rank: int, state: dict[str, Any], backend: str | None) -> Path:
    """Write one rank's state for `step` atomically (a temporary name in the same folder, then a rename)."""
    target = rank_path(run_dir, step, rank)
    target.parent.mkdir(parents=True, exist_ok=True)
    dump, _ = serializer(backend)
    handle, temporary = tempfile.mkstemp(dir=target.parent, prefix=f".rank-{rank}-", suffix=".tmp")
    try:
        with os.fdopen(handle, "wb") as stream:
            dump({"format": FORMAT, "step": step, "rank": rank, **state}, stream)
            stream.flush()
            os.fsync(stream.fileno())
        os.replace(temporary, target)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise
    return target


def load_rank(point: ResumePoint, rank: int, backend: str | None) -> dict[str, Any]:
    path = point.rank_file(rank)
    _, load = serializer(backend)
    try:
        with open(path, "rb") as stream:
            state = load(stream)
    except FileNotFoundError:
        raise UsageError(f"checkpoint {point.directory} has no file for rank {rank} ({path.name}); it was written "
                         f"by a job of {point.manifest.get('ranks')} ranks") from None
    except Exception as error:  # noqa: BLE001 - any unreadable file is one line
        raise UsageError(f"cannot read checkpoint {path}: {type(error).__name__}: {error}".splitlines()[0]) from None
    if not isinstance(state, dict) or state.get("format") != FORMAT or state.get("step") != point.step:
        raise UsageError(f"{path} is not a checkpoint of step {point.step} in this format")
    return state


def write_manifest(run_dir: Path, step: int, ranks: int, info: dict[str, Any]) -> Path:
    """Rank 0, once every rank has written its file: the checkpoint is complete."""
    from anytimectl.rundir import now_iso, write_json_atomic

    missing = [r for r in range(ranks) if not rank_path(run_dir, step, r).is_file()]
    if missing:
        raise RuntimeError(f"checkpoint of step {step}: ranks {missing} have not written their files")
    path = step_dir(run_dir, step) / MANIFEST
    write_json_atomic(path, {"format": FORMAT, "step": step, "ranks": ranks, "written_at": now_iso(),
                             "files": [rank_path(run_dir, step, r).name for r in range(ranks)], **info})
    return path


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


def latest(run_dir: Path) -> ResumePoint | None:
    import json

    steps = complete_steps(run_dir)
    if not steps:
        return None
    step = steps[-1]
    manifest = json.loads((step_dir(run_dir, step) / MANIFEST).read_text())
    return ResumePoint(Path(run_dir), step, manifest)


def resume_point(run_dir: Path) -> ResumePoint:
    """The latest complete checkpoint of a run, or a one-line error saying what is missing."""
    run_dir = Path(run_dir).expanduser()
    if not (run_dir / "metadata.json").is_file():
        raise UsageError(f"--resume {run_dir}: not a run directory (no metadata.json)")
    point = latest(run_dir)
    if point is None:
        raise UsageError(f"--resume {run_dir}: the run has no complete checkpoint (it ran without "
                         "--checkpoint-every, or stopped before the first one)")
    return point


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
                 backend: str | None, log: Callable[..., None]):
        self.run_dir = Path(run_dir) if run_dir is not None else None
        self.every = every
        self.keep = keep
        self.rank, self.size = rank, size
        self.backend = backend
        self.log = log
        self.last_saved: int | None = None
        self._unconfirmed: dict[int, dict[str, Any]] = {}  # rank 0: step -> manifest info

    @property
    def enabled(self) -> bool:
        return self.every is not None and self.run_dir is not None

    def due(self, step: int) -> bool:
        return self.enabled and step % self.every == 0

    def save(self, step: int, state: dict[str, Any], info: dict[str, Any]) -> None:
        """This rank's file of `step`; on rank 0, `info` (counters, elapsed time) waits for the manifest."""
        started = time.perf_counter()
        save_rank(self.run_dir, step, self.rank, state, self.backend)
        self.last_saved = step
        if self.rank == 0:
            self._unconfirmed[step] = {**info, "save_seconds": round(time.perf_counter() - started, 3)}

    def confirmed(self, step: int) -> None:
        """Rank 0: every rank has passed `step` (so each wrote its file before): complete the checkpoint."""
        info = self._unconfirmed.pop(step, None)
        if info is None:
            return
        write_manifest(self.run_dir, step, self.size, info)
        removed = prune(self.run_dir, self.keep)
        self.log("checkpoint written", step=step, folder=str(step_dir(self.run_dir, step)), removed=removed)
