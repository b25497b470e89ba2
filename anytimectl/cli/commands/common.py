"""The one preparation path of every training command: what it checks before anything is launched, so that bad
input costs no start-up, and the config entries those checks resolve.

A command checks its own options (a method's rules), then calls `prepare` with its option groups and its
protocol's shape; `prepare` resolves the model, checks the stragglers, the devices, the workers against this
machine's memory, the data (enough examples, the input transform, the batch against the training set and the
memory) and returns the config entries. A check added here applies to every method.
"""

from __future__ import annotations

import dataclasses
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from anytimectl.cli.options import DataOptions, LaunchOptions, LengthOptions, OutputOptions, StragglerOptions
from anytimectl.runtime.errors import UsageError

if TYPE_CHECKING:
    from anytimectl.data import DatasetInfo
    from anytimectl.data.input_transform import InputTransform


@dataclass(frozen=True)
class Batch:
    """The batch one worker takes in one step, as the pre-launch checks see it.

    `distinct`: one step's batches of all workers are distinct training examples (one all-reduce of one step's
    gradients: dynamic, compress), so `per_worker` x workers may not exceed the training set."""

    per_worker: int
    distinct: bool = False


def prepare(launch: LaunchOptions, data: DataOptions, length: LengthOptions, stragglers: StragglerOptions,
            *groups: Any, backend: str, has_master: bool, batch: Batch | None,
            transform: InputTransform | None = None, simulated: DatasetInfo | None = None) -> dict[str, Any]:
    """Check a training command's run before launching it, the same way for every method, and return its config
    entries (the groups' fields, the launch, the data's facts, `model` and `backend`).

    `has_master`: the protocol has a master rank beside the workers (it needs memory too). `batch`: what the
    memory guard and the training-set check guard (None: no batch to guard). `transform`: the input transform
    the workers apply (checked against the data; the batch's memory is the transformed inputs'). `simulated`:
    the simulated backend's training set, read from no file (its size is `--sim-examples`)."""
    model = resolve_model(data, backend)
    workers = launch.workers
    for group in groups:  # the checkpoint group: its signal's name, checked before launch
        if hasattr(group, "checkpoint_on_signal"):
            from anytimectl.runtime.checkpoints import checkpoint_signal

            checkpoint_signal(group.checkpoint_on_signal)
    check_stragglers(stragglers, list(range(1, workers + 1)) if workers else [])
    check_devices(launch, backend)
    check_workers(launch, backend, (workers or 0) + 1 if has_master else (workers or 1))
    config = common_config(launch, data, length, stragglers, *groups)
    if simulated is not None:
        info, dataset, source = simulated, "sim", "--sim-examples"
    else:
        from anytimectl.data import describe_dataset

        info, dataset, source = describe_dataset(data.dataset, data.data_dir), data.dataset, f"--dataset {data.dataset}"
    config.update(_check_examples(info, dataset, source, length, workers, batch, launch, transform))
    config.update(model=model, backend=backend)
    return config


def resolve_model(data: DataOptions, backend: str) -> str:
    """The model name, checked against the backend's list, or a user's `path/to/file.py:build`."""
    from anytimectl import backends
    from anytimectl.backends.user_model import is_user_model

    if data.model is None:
        return backends.default_model(backend, data.dataset)
    if is_user_model(data.model):
        path = Path(data.model.split(":", 1)[0]).expanduser()
        if not path.is_file():
            raise UsageError(f"--model {data.model}: no such file {path}")
        return data.model
    names = backends.model_names(backend)
    if backend == "torch" and data.model not in names:
        from anytimectl.backends.torch.models import torchvision_names  # torch here: the parent imports no TF

        names = (*names, *torchvision_names())
    if data.model not in names:
        shown = names if len(names) < 30 else (*names[:15], "... (every torchvision classification model)")
        raise UsageError(f"--model {data.model!r} is not a {backend} model; choose one of {', '.join(shown)} "
                         "or give your own as path/to/file.py:build")
    return data.model


def _check_examples(info: DatasetInfo, dataset: str, source: str, length: LengthOptions, workers: int | None,
                    batch: Batch | None, launch: LaunchOptions, transform: InputTransform | None) -> dict[str, Any]:
    """The training set holds enough examples for the workers (and a step's distinct batches), the transform fits
    its inputs, a batch fits in memory (`check_batch_memory`; not with --hosts: the ranks are elsewhere), and the
    test subset's real size is known. Returns the data's config entries."""
    from anytimectl.data import check_enough_examples, check_whole_batches, test_size_used

    shape = tuple(info.input_shape)
    if workers:
        check_enough_examples(info.n_train, workers, source)
    if transform is not None:
        transform.check(shape)
        shape = transform.output_shape(shape)
    if batch is not None and not launch.hosts:
        check_batch_memory(batch.per_worker, shape, workers or 1)
    if batch is not None and batch.distinct:
        check_whole_batches(batch.per_worker, workers or 1, info.n_train, dataset)
    return {"dataset": dataset, "test_size": test_size_used(info.n_test, length.test_size),
            "test_size_requested": length.test_size, "train_examples": info.n_train,
            "input_shape": list(info.input_shape), "num_classes": info.num_classes}


def check_stragglers(stragglers: StragglerOptions, ranks: list[int]) -> None:
    """Parse the delay model and the slow workers now; a slow worker must exist in the job (`ranks`: the
    workers' numbers, 1..N in every method)."""
    from anytimectl.runtime.stragglers import parse_induce, parse_slow

    parse_induce(stragglers.induce)
    slow = parse_slow(stragglers.slow)
    if ranks:
        missing = sorted(rank for rank in slow if rank not in ranks)
        if missing:
            raise UsageError(f"--slow names worker {missing[0]}, but the workers are numbered "
                             f"{ranks[0]}..{ranks[-1]}")


def check_devices(launch: LaunchOptions, backend: str) -> None:
    """A GPU run on a machine without one fails here, before any rank starts (the workers would find out last)."""
    if backend == "sim" and launch.device != "cpu":
        raise UsageError(f"--device {launch.device}: the sim backend computes nothing on a device; use --device cpu")
    if launch.device == "cpu" or launch.workers is None:
        return  # under a user's mpiexec the ranks may be on other hosts: they check for themselves
    from anytimectl.runtime.launch import count_gpus

    if not (launch.gpus_per_node or count_gpus()):
        raise UsageError(f"--device {launch.device}: no GPU found on this machine; use --device cpu")


#: Resident memory of one rank, measured here with the built-in data (a TensorFlow rank about 0.8 GB RSS, part
#: of it shared libraries): what `--workers N` may start on this machine.
RANK_MEMORY_BYTES = {"tensorflow": 600 << 20, "torch": 500 << 20, "sim": 80 << 20}


def check_workers(launch: LaunchOptions, backend: str, ranks: int) -> None:
    """`--workers N` starts every rank on this machine: refuse a job that cannot fit in its memory."""
    if not launch.workers or launch.hosts:
        return
    available = _available_memory()
    need = RANK_MEMORY_BYTES.get(backend, RANK_MEMORY_BYTES["tensorflow"]) * ranks
    if available is not None and need > available:
        fit = available // RANK_MEMORY_BYTES.get(backend, RANK_MEMORY_BYTES["tensorflow"])
        raise UsageError(f"--workers {launch.workers}: {ranks} {backend} ranks need about {need / 2**30:.1f} GiB, "
                         f"this machine has {available / 2**30:.1f} GiB available; start at most {fit} ranks here, "
                         "or spread them with --hosts or your own mpiexec")


def check_batch_memory(batch_size: int, input_shape: tuple[int, ...], ranks_here: int,
                       flag: str = "--batch-size") -> None:
    """Refuse, before launching, a batch whose float32 inputs alone (the model's activations come on top) exceed
    the memory available to the `ranks_here` workers on this machine, instead of ranks that allocate for minutes
    and never finish a step."""
    import math

    per_rank = batch_size * (math.prod(input_shape) * 4 + 8)
    available = _available_memory()
    if available is not None and per_rank * ranks_here > available:
        fits = max(0, available // max(1, ranks_here) // (math.prod(input_shape) * 4 + 8))
        raise UsageError(f"{flag} {batch_size}: {ranks_here} worker(s) with batches of inputs of shape "
                         f"{tuple(input_shape)} need {per_rank * ranks_here / 2**30:.1f} GiB, more than the "
                         f"{available / 2**30:.1f} GiB of memory available; lower {flag} (at most about {fits})")


def _available_memory() -> int | None:
    """The one free-memory figure (cgroup limits included): anytimectl.studies.available_memory."""
    from anytimectl.studies import available_memory

    return available_memory()


def default_steps(length: LengthOptions, steps: int) -> int | None:
    """Without any stop condition a run would go on forever: default to `steps` steps."""
    if length.steps is None and length.epochs is None and length.target_accuracy is None:
        return steps
    return length.steps


def common_config(launch: LaunchOptions, data: DataOptions, length: LengthOptions,
                  stragglers: StragglerOptions, *groups: Any) -> dict[str, Any]:
    """The resolved options that describe the run (not where its output goes), for metadata.json."""
    config: dict[str, Any] = {}
    for group in (data, length, stragglers, *groups):
        config.update(dataclasses.asdict(group))
    config["data_dir"] = str(data.data_dir) if data.data_dir else None
    config.update(workers=launch.workers, threads=launch.threads, device=launch.device,
                  gpus_per_node=launch.gpus_per_node)
    return config


def check_augment(augment: str | None, input_shape: Any) -> None:
    """The training-batch augmentation (`--augment`, resolved) fits the data's examples: one line otherwise, before
    any rank starts."""
    if augment and augment != "none":
        from anytimectl.protocols.peer import augmentation

        augmentation(augment, tuple(input_shape))


def run_request(**fields: Any) -> int:
    """Hand the request to the run shell (imported only now: it pulls in numpy and the runtime)."""
    from anytimectl.protocols.base import RunRequest
    from anytimectl.runtime import shell

    return shell.run(RunRequest(argv=sys.argv[1:], **fields))


def exit_with(code: int) -> None:
    import typer

    if code:
        raise typer.Exit(code)


__all__ = ["DataOptions", "LaunchOptions", "LengthOptions", "OutputOptions", "StragglerOptions"]
