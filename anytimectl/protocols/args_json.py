"""`args.json`: a training run's arguments under the original AMB system's names, for its analysis scripts.

The original `run_perf_amb.py` wrote `vars(args)` plus `num_workers` and `induce_comp_dist` into every run
directory, and its plotting and analysis scripts read that file before any CSV row (`num_workers`,
`induce_comp_dist`, `dist_sgy`, `amb_time_limit`, `amb_num_partitions`, `batch_size`, ...). This module
translates anytimectl's resolved configuration into that vocabulary, with the original's meanings and value
spellings (`intr_opt` rms|adm|sgd|mom, `dist_sgy` syncr|async, `last_step` 0 for "no step limit"), so those
scripts run unchanged. metadata.json stays the complete record; args.json only speaks the old language.
"""

from __future__ import annotations

from typing import Any

#: Written beside metadata.json.
ARGS_FILE = "args.json"

_OPTIMIZERS = {"rms": "rms", "rmsprop": "rms", "adam": "adm", "adm": "adm", "sgd": "sgd", "momentum": "mom",
               "mom": "mom"}
#: anytimectl --device -> the original's --cuda (None: the original left CUDA_VISIBLE_DEVICES alone; it had no
#: "CPU only" choice, which is what anytimectl's cpu is)
_CUDA = {"cpu": None, "gpu": "gpu_all", "gpu-workers": "cpu_master", "gpu-master": "gpu_master"}
#: anytimectl model names -> the original's `model` argument, where it had the same network
_MODELS = {"mnist": "mnist", "cifar10": "cifar10", "toy-conv": "toy_model", "toy-fc": "toy_model"}


def _model(config: dict[str, Any]) -> str | None:
    model, dataset = config.get("model"), config.get("dataset")
    if model == "mnist" and dataset == "fashion-mnist":
        return "fashion_mnist"  # the original named the dataset; its fashion_mnist used the mnist network
    return _MODELS.get(model, model)


def _dist_sgy(config: dict[str, Any]) -> str:
    mode = str(config.get("dist_sgy") or config.get("sync_mode") or config.get("protocol") or "sync").lower()
    return "async" if mode.startswith("async") else "syncr"


def _induce_comp(straggler: dict[str, Any] | None) -> str | None:
    if not straggler:
        return None
    name, scale = straggler.get("name"), float(straggler.get("scale", 1.0))
    return name if scale == 1.0 else f"{name}:{scale:g}"


def original_args(config: dict[str, Any], straggler: dict[str, Any] | None, workers: int,
                  time_limit: float | None = None) -> dict[str, Any]:
    """The original's args.json for a run of `workers` workers.

    `config` is the run's resolved configuration (metadata.json's `config`: method, optimizer, batch_size,
    partitions, time_limit, induce, weight_decay, log_every, steps, test_size, learning_rate, lr_*, device,
    gpus_per_node, data_dir, dataset, model, seed); `straggler` is the applied delay model
    (`DelayModel.to_dict()`, or None), whose components, already scaled and normalised, become
    `induce_comp_dist` as [[mean, std, weight], ...]. `time_limit` overrides `amb_time_limit`: pass the limit the
    workers actually used when `--time-limit auto` calibrated it (config's time_limit is then None).
    Keys the original did not have and its scripts never read are left out, except `dataset` and `seed`.
    """
    amb = config.get("method") == "amb"
    limit = time_limit if time_limit is not None else config.get("time_limit")
    components = (straggler or {}).get("components")
    epochs_every = config.get("lr_epochs_every", 10.0)
    return {
        "model": _model(config),
        "dist_opt": config.get("method"),
        "intr_opt": _OPTIMIZERS.get(str(config.get("optimizer")), config.get("optimizer")),
        "batch_size": config.get("batch_size"),
        "amb_time_limit": float(limit) if amb and limit is not None else None,
        "amb_num_partitions": config.get("partitions") if amb else None,
        "dist_sgy": _dist_sgy(config),
        "async_master": config.get("async_master", "batch"),
        "async_master_time_limit": config.get("async_time_limit") or 0.1,
        "async_master_batch_min": config.get("async_batch_min") or 4,
        "async_delay_std": config.get("async_delay_std") or -1,  # the original's -1: no simulated delay
        "induce_comp": _induce_comp(straggler),
        "weight_decay": config.get("weight_decay"),
        "log_freq": config.get("log_every", 1),
        "last_step": config.get("steps") or 0,  # the original's 0: no step limit (anytimectl stops otherwise)
        "test_size": config.get("test_size"),
        "data_dir": config.get("data_dir"),
        "cuda": _CUDA.get(str(config.get("device", "cpu"))),
        "gpus_per_node": config.get("gpus_per_node") or -1,
        "lrate_schedule": config.get("lr_schedule", "const"),
        "learning_rate": config.get("learning_rate"),
        "lrate_linear_end": config.get("lr_linear_end"),
        "lrate_exp_decay_steps": config.get("lr_decay_steps"),
        "lrate_exp_decay_rate": config.get("lr_decay_rate"),
        "lrate_exp_staircase": int(bool(config.get("lr_staircase", True))),
        "lrate_epochs_every": list(epochs_every) if isinstance(epochs_every, list | tuple) else [epochs_every],
        "lrate_epochs_frac": config.get("lr_epochs_frac"),
        "num_workers": workers,
        "induce_comp_dist": [[float(m), float(s), float(w)] for m, s, w in components] if components else None,
        "dataset": config.get("dataset"),
        "seed": config.get("seed"),
    }
