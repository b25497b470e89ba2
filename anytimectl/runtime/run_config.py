"""The typed config of a run: one frozen dataclass per protocol, built by its command, stored whole in metadata.json.

A command resolves its options into the config class its protocol declares (`TrainingProtocol.config_class`);
the run shell records `record()` (`dataclasses.asdict`) as metadata.json's `config`, and protocols read
attributes, never string keys. A field renamed or left out then fails once, in the command that builds the config
(a TypeError naming the field, before anything is launched), instead of as a KeyError on every rank. `--resume`
rebuilds the config from the recorded dict with `from_record`, which refuses, in one line, a record with keys the
class does not know or without keys it needs (a run directory of another version). A field renamed since a run was
recorded is read under its old key too (`renamed`, and `current_keys` for the readers that know only the run's
method: plots and `runs`).

Which class holds a field: `RunConfig` has what every training command resolves (`commands.common.prepare`: the
data, the model, the launch, the stragglers, the length, the optimizer and its rate schedule, the checkpoints);
`ExchangeConfig` the gradient exchange's options (`exchange.options.ExchangeOptions`); each protocol's class adds
its own.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import dataclass
from typing import Any, ClassVar, TypeVar

from anytimectl.runtime.errors import UsageError

C = TypeVar("C", bound="RunConfig")


@dataclass(frozen=True, kw_only=True)
class RunConfig:
    """What every training command resolves (`commands.common.prepare`): the fields of metadata.json's config
    that every method records."""

    #: Keys of earlier versions' records, and the field each is now (old key -> field): `from_record` reads them.
    renamed: ClassVar[dict[str, str]] = {}

    # the data and the model (DataOptions, resolved; the data's facts as `describe_dataset` read them)
    model: str
    backend: str
    dataset: str
    data_dir: str | None
    test_size: int
    test_size_requested: int
    train_examples: int
    input_shape: list[int]
    num_classes: int
    # the launch (LaunchOptions, without where it starts: mpiexec, hosts)
    workers: int | None
    threads: int | None
    device: str
    gpus_per_node: int | None
    # the stragglers (StragglerOptions)
    induce: str | None
    slow: list[str] | None
    seed: int
    # the length (LengthOptions)
    steps: int | None
    epochs: float | None
    target_accuracy: float | None
    log_every: int | None
    # the optimizer and its rate schedule (OptimizerOptions)
    optimizer: str
    learning_rate: float
    weight_decay: float
    lr_schedule: str
    lr_linear_end: float
    lr_decay_steps: int
    lr_decay_rate: float
    lr_staircase: bool
    lr_epochs_every: float
    lr_epochs_frac: float
    lr_milestones: list[float] | None
    lr_anneal: float
    # the checkpoints (cli.options.CheckpointOptions; resume: the run directory continued, as text)
    checkpoint_every: int | None
    keep_checkpoints: int
    checkpoint_on_signal: str
    resume: str | None

    def record(self) -> dict[str, Any]:
        """metadata.json's `config`: every field, by name."""
        return dataclasses.asdict(self)

    @classmethod
    def field_names(cls) -> tuple[str, ...]:
        return tuple(f.name for f in dataclasses.fields(cls))

    @classmethod
    def from_record(cls: type[C], recorded: dict[str, Any], where: str = "metadata.json") -> C:
        """The config a run recorded (metadata.json's `config`). Refuses, in one line, keys this class does not
        know and fields without a default that the record lacks."""
        recorded = _renaming(recorded, cls.renamed)
        known = {f.name: f for f in dataclasses.fields(cls)}
        unknown = sorted(set(recorded) - set(known))
        missing = sorted(name for name, f in known.items() if name not in recorded
                         and f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING)
        if unknown or missing:
            parts = ([f"unknown key(s) {', '.join(unknown)}"] if unknown else []) + \
                    ([f"missing key(s) {', '.join(missing)}"] if missing else [])
            raise UsageError(f"{where}: its config does not fit this version's {cls.__name__} "
                             f"({'; '.join(parts)}); the run cannot be continued by this version")
        cls.check_values(recorded, where)
        return cls(**recorded)

    @classmethod
    def check_values(cls, recorded: dict[str, Any], where: str = "metadata.json") -> None:
        """Refuse, in one line, a recorded value that is not of its field's type (keys the class does not know are
        `from_record`'s to refuse). `--resume` calls it before it reads any value."""
        hints = typing.get_type_hints(cls)
        for name, value in _renaming(recorded, cls.renamed).items():
            if name in hints and not _fits(value, hints[name]):
                raise UsageError(f"{where}: its config's {name} is {value!r}, not {_type_name(hints[name])}; "
                                 f"correct it in the file (was it edited by hand?) or start a new run")

    def replace(self: C, **changes: Any) -> C:
        return dataclasses.replace(self, **changes)


@dataclass(frozen=True, kw_only=True)
class ExchangeConfig(RunConfig):
    """The gradient exchange's options (`exchange.options.ExchangeOptions.config()`), for the all-reduce methods."""

    compressor: str
    mode: str
    ratio: float
    threshold: float
    levels: int
    value_dtype: str
    rescale: bool
    error_feedback: bool
    powersgd_rank: int
    powersgd_start_iter: int
    min_compression_rate: float
    warm_start: bool

    def exchange_options(self) -> Any:
        from anytimectl.exchange.options import ExchangeOptions

        return ExchangeOptions(**{name: getattr(self, name) for name in ExchangeOptions.__dataclass_fields__})


@dataclass(frozen=True, kw_only=True)
class PeerConfig(ExchangeConfig):
    """What every method without a master reads in `protocols/peer.py`: the batch per worker (`None` in `train
    gossip` when only `--global-batch-size` is known) and the optimizer's momentum (`None`: plain SGD, as `train
    dynamic` trains; its runs record `momentum: null, nesterov: false`)."""

    batch_size: int | None
    momentum: float | None = None
    nesterov: bool = False


@dataclass(frozen=True, kw_only=True)
class MasterWorkerConfig(RunConfig):
    """`train amb` / `train fmb`, synchronous (protocols/master_worker.py)."""

    protocol: str  # sync or async
    batch_size: int
    partitions: int  # micro-batches per batch (amb; 1 for fmb)
    time_limit: float | None  # seconds of compute per round (amb); None: calibrated (--time-limit auto) or fmb
    time_limit_requested: str | None
    match_batch: int | None
    backend_options: dict[str, Any] | None = None  # the sim backend's (--sim-*); absent for the others


@dataclass(frozen=True, kw_only=True)
class AsyncMasterWorkerConfig(MasterWorkerConfig):
    """`train amb` / `train fmb --protocol async` (protocols/async_master_worker.py)."""

    async_master: str
    async_batch_min: int
    async_time_limit: float
    async_delay_std: float | None


@dataclass(frozen=True, kw_only=True)
class DynamicConfig(PeerConfig):
    """`train dynamic` (protocols/dynamic.py): the batch policy's knobs (batch_policies.PolicyOptions) and more."""

    batch_size: int
    lr_scaling: str
    transport: str
    resize: int | None
    channels: int | None
    normalize: str
    # batch_policies.PolicyOptions
    policy: str
    min_batch: int
    max_batch: int
    every: int
    loss_weight: float
    time_weight: float
    probe_sizes: int
    progress_k: int
    progress_threshold: float
    target_epoch_time: float
    tolerance: float
    window: int | None

    def policy_options(self) -> Any:
        from anytimectl.protocols.batch_policies import PolicyOptions

        return PolicyOptions(**{name: getattr(self, name) for name in PolicyOptions.__dataclass_fields__})


@dataclass(frozen=True, kw_only=True)
class GossipConfig(PeerConfig):
    """`train gossip` (protocols/gossip.py)."""

    renamed = {"method": "rule"}

    rule: str  # elastic, gossip, allreduce, local (--method; recorded as `method` before)
    batch_size: int | None  # per worker; None: --global-batch-size split over the job's ranks
    global_batch_size: int | None
    agg_period: int
    agg_prob: float
    weighted: bool
    penalty: float
    elastic_alpha: float
    momentum: float
    nesterov: bool
    val_size: int
    augment: str | None


@dataclass(frozen=True, kw_only=True)
class CompressedConfig(PeerConfig):
    """`compress train` (protocols/compressed.py)."""

    renamed = {"method": "compressor"}  # the compressor was recorded under `method` too, before

    batch_size: int
    lr_peak_epoch: float | None
    lr_knots: list[list[float]] | None  # the recipe's (epoch, rate) knots: recorded by the protocol
    momentum: float
    nesterov: bool
    augment: str


#: Each training command's config class by metadata.json's `method` (the command's method), for `current_keys`.
_CLASS_OF_METHOD: dict[str, type[RunConfig]] = {"amb": MasterWorkerConfig, "fmb": MasterWorkerConfig,
                                                "dynamic": DynamicConfig, "gossip": GossipConfig,
                                                "compress": CompressedConfig}


def _renaming(recorded: dict[str, Any], renamed: dict[str, str]) -> dict[str, Any]:
    """`recorded` with each old key under its field's name; where both are present (the compressor was recorded
    twice), the field's own key wins and the old one is dropped."""
    if not any(old in recorded for old in renamed):
        return recorded
    out = dict(recorded)
    for old, new in renamed.items():
        if old in out:
            value = out.pop(old)
            out.setdefault(new, value)
    return out


def _fits(value: Any, annotation: Any) -> bool:
    """Whether a value read from JSON is of a field's annotated type (the types the configs use: None, bool, int,
    float, str, Any, unions, list[...] and dict[str, ...]); an int is a float, a bool is neither."""
    if annotation is Any:
        return True
    if annotation is None or annotation is type(None):
        return value is None
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        return any(_fits(value, option) for option in typing.get_args(annotation))
    if origin is list:
        (item,) = typing.get_args(annotation) or (Any,)
        return isinstance(value, list) and all(_fits(v, item) for v in value)
    if origin is dict:
        key, item = typing.get_args(annotation) or (Any, Any)
        return isinstance(value, dict) and all(_fits(k, key) and _fits(v, item) for k, v in value.items())
    if annotation is bool:
        return isinstance(value, bool)
    if annotation is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if annotation is int:
        return isinstance(value, int) and not isinstance(value, bool)
    return isinstance(value, annotation)


def _type_name(annotation: Any) -> str:
    """`int or None`, `a list of float`: the annotation as the one-line refusal says it."""
    if annotation is type(None):
        return "null"
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        return " or ".join(_type_name(option) for option in typing.get_args(annotation))
    if origin is list:
        return f"a list of {_type_name(typing.get_args(annotation)[0])}"
    if origin is dict:
        return "an object"
    return {bool: "true or false", int: "a whole number", float: "a number", str: "text"}.get(
        annotation, getattr(annotation, "__name__", str(annotation)))


def current_keys(method: str | None, recorded: dict[str, Any]) -> dict[str, Any]:
    """A run's recorded config (metadata.json's `config`, run by the command method `method`) under this version's
    field names: what plots and `runs` read, whichever version wrote the run."""
    cls = _CLASS_OF_METHOD.get(str(method or ""))
    return _renaming(recorded, cls.renamed) if cls is not None else recorded


__all__ = ["AsyncMasterWorkerConfig", "CompressedConfig", "DynamicConfig", "ExchangeConfig", "GossipConfig",
           "MasterWorkerConfig", "PeerConfig", "RunConfig", "current_keys"]
