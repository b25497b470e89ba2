"""The one resume path of every training command: `--resume RUN_DIR` continues a recorded run from its latest
complete checkpoint, with the options metadata.json recorded, in the same run directory.

The command side (this module)
------------------------------
A command that checkpoints takes the `CheckpointOptions` group and a `typer.Context`, and begins with::

    if checkpoints.resume is not None:
        exit_with(resume_run(ResumeRules(command="train", method="dynamic", protocol="dynamic"),
                             given_options(ctx), ctx.params, checkpoints, launch, length, output))
        return
    check_supported("dynamic", checkpoints)  # a protocol without checkpoints refuses the options, before launch

`resume_run` reads metadata.json (one line for one that is missing, cut short or not a run's), finds the latest
whole checkpoint (`checkpoints.resume_point`: it passes over a damaged newer one, refuses a live run and a
checkpoint another command, method, model, dataset or backend wrote), refuses a run of another command or method,
compares the options this command line gives with the recorded ones, checks the worker count against the
checkpoint's ranks, and hands the recorded config (with the allowed changes) to the run shell as one request.

Which options may be given with --resume: an option whose value equals the recorded one is accepted (so a batch
script may repeat its whole command line and add --resume); of the others only these may change:

* how the job is started and shown: `LAUNCH_OPTIONS` and `VIEW_OPTIONS` (--workers must still match the
  checkpoint);
* when checkpoints are written: `CHECKPOINT_OPTIONS`;
* the run's length, `ResumeRules.extendable` (by default --steps, --epochs, --target-accuracy: a longer run).
  A method whose schedule depends on the length (compress train's rate falls to 0 at the run's end) gives none.

Every other option that differs is refused in one line that names each difference and what may change.

The protocol side (the contract a protocol must meet to set `supports_checkpoints = True`)
-----------------------------------------------------------------------------------------
The shell (`anytimectl.runtime.shell`) puts the `checkpoints.ResumePoint` in `context.resume` before `setup` and creates
`context.run_dir_path` on every rank; `anytimectl.runtime.checkpoints` writes and reads the files. A protocol provides:

1. `checkpoint_state() -> dict`: everything of this rank's training state that is not derived from
   (--seed, step): the engine (`engine.state()`: parameters, optimizer, the framework's RNG), the data stream's
   position, counters (examples, comm bytes), the method's own state (a policy with its history, an exchange's
   error-feedback memory and PowerSGD's Q via `exchange.state()`, a calibrated time limit, queues). Values are
   plain data: numbers, strings, lists, tuples, dicts, numpy arrays and torch tensors (the file format runs no
   code when read, so no objects).
2. `load_checkpoint_state(state)`: the inverse, called at the end of `setup` (after the warm-up, whose compute may
   touch RNG or batch-norm state). A mismatch (another model's tensors) raises KeyError/ValueError/RuntimeError/
   TypeError, which `CheckpointingMixin.restore_checkpoint` turns into one line.
3. The step and the clock the rows continue from: after loading, `start_step` (the checkpoint's step),
   `start_examples` and `start_elapsed` (the manifest's `elapsed`; rank 0's recorder restarts its clock at
   `now - start_elapsed`, and `recorder.steps / examples / row_count` continue from the checkpoint).
4. Writing: after every `checkpoint_every`-th step (`Checkpointer.due`), and after the last step of a run that
   stopped (a signal, the target), every rank calls `Checkpointer.save` BEFORE it tells rank 0 it finished the
   step; rank 0 calls `Checkpointer.confirmed(step)` once it knows every rank has passed that step, which writes
   the manifest (the checkpoint is complete) and prunes to --keep-checkpoints. `CheckpointingMixin` holds the
   glue (`make_checkpointer`, `save_checkpoint`, `restore_checkpoint`); `protocols/peer.py` is the reference
   user. A master-worker protocol may save on the master only (one rank file per rank still: a worker with no
   state of its own saves its counters) as long as the manifest lists every rank's file.
5. `checkpoint_on_signal`: `context.stopper` ends the run at the end of the current step; the protocol's stop
   path then writes the last step's checkpoint (point 4), and the shell ends the run `interrupted`, exit 130.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from anytimectl.cli.options import CheckpointOptions, LaunchOptions, LengthOptions, OutputOptions, flag
from anytimectl.runtime.errors import UsageError

#: How the job is started: these may differ on resume (the worker count must still fit the checkpoint).
LAUNCH_OPTIONS = frozenset({"workers", "threads", "device", "gpus_per_node", "mpiexec", "hosts"})
#: What the run prints: free to change.
VIEW_OPTIONS = frozenset({"live", "quiet", "json", "tensorboard"})
#: When checkpoints are written (and --resume itself).
CHECKPOINT_OPTIONS = frozenset({"checkpoint_every", "keep_checkpoints", "checkpoint_on_signal", "resume"})
#: The run's length: a resumed run may go on for longer.
LENGTH_OPTIONS = ("steps", "epochs", "target_accuracy")


@dataclass(frozen=True)
class ResumeRules:
    """What a command's resume accepts: the run it continues (metadata's command and method), the protocol that
    runs it, and which length options may extend it."""

    command: str
    method: str
    protocol: str
    extendable: tuple[str, ...] = LENGTH_OPTIONS
    #: Why the length may not change (for the one-line refusal when `extendable` is empty).
    fixed_length: str = ""
    #: Options recorded in the config under another name, as (option, field): `train gossip --method` is `rule`.
    option_fields: tuple[tuple[str, str], ...] = ()

    @property
    def may_change(self) -> frozenset[str]:
        return LAUNCH_OPTIONS | VIEW_OPTIONS | CHECKPOINT_OPTIONS | frozenset(self.extendable)

    @property
    def words(self) -> str:
        return f"{self.command} {self.method}" if self.command != self.method else self.command


def given_options(ctx: Any) -> set[str]:
    """The options this command line (or the environment) sets, as opposed to their defaults."""
    given = set()
    for name in ctx.params:
        source = ctx.get_parameter_source(name)
        if source is not None and source.name not in ("DEFAULT", "DEFAULT_MAP"):
            given.add(name)
    return given


def protocol_supports_checkpoints(protocol: str) -> bool:
    from anytimectl.runtime.shell import load_protocol

    return bool(getattr(load_protocol(protocol), "supports_checkpoints", False))


def check_supported(protocol: str, checkpoints: CheckpointOptions, words: str) -> None:
    """Refuse --checkpoint-every / --resume before launching when the protocol cannot checkpoint."""
    asked = [name for name in ("checkpoint_every", "resume") if getattr(checkpoints, name, None) is not None]
    if asked and not protocol_supports_checkpoints(protocol):
        raise UsageError(f"{flag(asked[0])}: {words} does not write checkpoints yet")


def _comparable(value: Any) -> Any:
    """Option values as metadata.json holds them (paths as text, tuples as lists)."""
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, tuple | list):
        return [_comparable(v) for v in value]
    try:
        return json.loads(json.dumps(value))
    except (TypeError, ValueError):
        return str(value)


def changed_options(given: set[str], values: dict[str, Any], recorded: dict[str, Any],
                    may_change: frozenset[str]) -> list[str]:
    """The given options that may not change and differ from the recorded config, as `--name VALUE (recorded
    X)` (an option the config does not record cannot be checked: it is listed as given)."""
    differ = []
    for name in sorted(given - may_change):
        value = _comparable(values.get(name))
        if name in recorded and _comparable(recorded[name]) == value:
            continue
        shown = " ".join(str(v) for v in value) if isinstance(value, list) else value
        if name in recorded:
            differ.append(f"{flag(name)} {shown} (recorded: {recorded[name]})")
        else:
            differ.append(f"{flag(name)} {shown}")
    return differ


def resume_run(rules: ResumeRules, given: set[str], values: dict[str, Any], checkpoints: CheckpointOptions,
               launch: LaunchOptions, length: LengthOptions, output: OutputOptions) -> int:
    """Continue a recorded run: its options from metadata.json, the allowed changes, this job's launch."""
    from anytimectl.cli.commands.common import check_devices, check_workers, run_request
    from anytimectl.runtime.checkpoints import read_metadata, resume_point
    from anytimectl.runtime.run_config import current_keys
    from anytimectl.runtime.shell import load_protocol, ranks_for

    run_dir = Path(checkpoints.resume).expanduser()
    metadata = read_metadata(run_dir)
    if metadata.get("command") != rules.command or metadata.get("method") != rules.method:
        raise UsageError(f"--resume {run_dir}: not a {rules.words} run (it is {metadata.get('command')} "
                         f"{metadata.get('method')}); resume it with its own command")
    recorded = current_keys(rules.method, dict(metadata["config"]))
    protocol = load_protocol(rules.protocol)
    protocol.config_class.check_values(recorded, where=f"--resume {run_dir}")
    if not rules.extendable:
        for name in LENGTH_OPTIONS:
            if name in given and _comparable(getattr(length, name)) != _comparable(recorded.get(name)):
                raise UsageError(f"--resume: {flag(name)} cannot change: {rules.fixed_length}")
    if {"out", "name"} & given:  # a script that repeats its --out/--name: fine when they name this run directory
        out, name = values.get("out") or run_dir.parent, values.get("name") or run_dir.name
        if (Path(out).expanduser() / name).resolve() == run_dir.resolve():
            given = given - {"out", "name"}
    as_options = {**recorded, **{option: recorded[field] for option, field in rules.option_fields if field in recorded}}
    differ = changed_options(given, values, as_options, rules.may_change)
    if differ:
        allowed = ", ".join(flag(n) for n in rules.extendable) or "none of the length options"
        raise UsageError(f"--resume continues the run with its recorded options; {differ[0].split()[0]} cannot "
                         f"change them: {'; '.join(differ)} (only {allowed}, the launch options, "
                         "--checkpoint-every/--keep-checkpoints and --quiet/--json/--live may change)")
    point = resume_point(run_dir, metadata, warn=_says_warnings())
    if not getattr(protocol, "supports_checkpoints", False):
        raise UsageError(f"--resume: {rules.words} does not write checkpoints yet")
    ranks = int(point.manifest["ranks"])
    workers = ranks - 1 if protocol.has_master else ranks
    if launch.workers is None and ranks > 1:
        from anytimectl.runtime.launch import in_mpi_job

        if not in_mpi_job():
            launch.workers = workers
    if (launch.workers not in (None, 0) and ranks_for(launch.workers, protocol.has_master) != ranks
            or launch.workers == 0 and ranks > 1):
        raise UsageError(f"--workers {launch.workers}: the checkpoint of step {point.step} holds {workers} workers "
                         f"({ranks} ranks); resume with --workers {workers}")
    config = dict(recorded)
    for name in rules.extendable:
        if name in given:
            config[name] = getattr(length, name)
    for name in ("checkpoint_every", "keep_checkpoints", "checkpoint_on_signal"):
        if name in given:
            config[name] = getattr(checkpoints, name)
    steps, epochs = config.get("steps"), config.get("epochs")
    reached = float(point.manifest.get("epoch", 0.0))
    if steps is not None and point.step >= steps or epochs is not None and reached >= epochs - 1e-9:
        more = " or ".join(flag(n) for n in rules.extendable if n != "target_accuracy")
        hint = f"give a larger {more} to train on" if more else f"it cannot be extended: {rules.fixed_length}"
        raise UsageError(f"--resume {run_dir}: its checkpoint is at step {point.step} (epoch {reached:.3g}), where "
                         f"the run ends; {hint}")
    backend = str(metadata.get("backend") or config.get("backend"))
    config.update(resume=str(run_dir), workers=launch.workers, threads=launch.threads, device=launch.device,
                  gpus_per_node=launch.gpus_per_node)
    output.out, output.name = run_dir.parent, run_dir.name
    typed = protocol.config_class.from_record(config, where=f"--resume {run_dir}")
    check_devices(launch, backend)
    check_workers(launch, backend, ranks)
    return run_request(command=rules.command, method=rules.method, protocol=rules.protocol, backend=backend,
                       dataset=typed.dataset, model=typed.model, config=typed, launch=launch, output=output,
                       seed=int(typed.seed or 0))


__all__ = ["ResumeRules", "check_supported", "given_options", "resume_run"]


def _says_warnings() -> bool:
    """Whether this process prints the warning that a damaged checkpoint was passed over, so that it appears once:
    the command the user started, or rank 0 under the user's own mpiexec/srun (every rank prepares the run; the
    ranks that --workers started leave it to the command that started them)."""
    import os

    from anytimectl.runtime.launch import _RANK_VARIABLES, RELAUNCHED, in_mpi_job

    if not in_mpi_job():
        return True
    if os.environ.get(RELAUNCHED):
        return False
    return all(os.environ[name] == "0" for name in _RANK_VARIABLES if name in os.environ)
