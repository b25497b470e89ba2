"""What every training command checks before anything is launched, so that bad input costs no start-up."""

from __future__ import annotations

import dataclasses
import sys
from pathlib import Path
from typing import Any

from anytimectl.errors import UsageError
from anytimectl.options import DataOptions, LaunchOptions, LengthOptions, OutputOptions, StragglerOptions


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


def check_data(data: DataOptions, length: LengthOptions, workers: int | None,
               batch_size: int | None = None) -> dict[str, Any]:
    """The data files are present and well-formed, hold enough training examples for the workers, and the test
    subset's real size is known: before launching, without loading the images. With `batch_size` (one worker's),
    a batch whose inputs alone cannot fit in memory is refused (`check_batch_memory`). Returns config entries."""
    from anytimectl.data import check_enough_examples, describe_dataset, test_size_used

    info = describe_dataset(data.dataset, data.data_dir)
    if workers:
        check_enough_examples(info.n_train, workers, f"--dataset {data.dataset}")
    if batch_size is not None:
        check_batch_memory(batch_size, tuple(info.input_shape), workers or 1)
    return {"test_size": test_size_used(info.n_test, length.test_size), "test_size_requested": length.test_size,
            "train_examples": info.n_train, "input_shape": list(info.input_shape), "num_classes": info.num_classes}


def check_stragglers(stragglers: StragglerOptions, ranks: list[int]) -> None:
    """Parse the delay model and the slow workers now; a slow worker must exist in the job (`ranks`: the
    workers' numbers, 1..N in every method)."""
    from anytimectl.stragglers import parse_induce, parse_slow

    parse_induce(stragglers.induce)
    slow = parse_slow(stragglers.slow)
    if ranks:
        missing = sorted(rank for rank in slow if rank not in ranks)
        if missing:
            raise UsageError(f"--slow names worker {missing[0]}, but the workers are numbered "
                             f"{ranks[0]}..{ranks[-1]}")


def check_devices(launch: LaunchOptions) -> None:
    """A GPU run on a machine without one fails here, before any rank starts (the workers would find out last)."""
    if launch.device == "cpu" or launch.workers is None:
        return  # under a user's mpiexec the ranks may be on other hosts: they check for themselves
    from anytimectl.launch import count_gpus

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


def run_request(**fields: Any) -> int:
    """Hand the request to the run shell (imported only now: it pulls in numpy and the runtime)."""
    from anytimectl import shell
    from anytimectl.protocols.base import RunRequest

    return shell.run(RunRequest(argv=sys.argv[1:], **fields))


def exit_with(code: int) -> None:
    import typer

    if code:
        raise typer.Exit(code)


__all__ = ["DataOptions", "LaunchOptions", "LengthOptions", "OutputOptions", "StragglerOptions"]
