"""The contract between the run shell and a training protocol.

A protocol says what one step does between ranks; everything around it (launch, the run directory, the live view,
signals, failures, output) is the shell's (`anytimectl.runtime.shell`). A protocol class declares its shape as data (has
it a master, its row fields, its extra columns) and implements two calls that run on every rank: `setup` (load
data, build the engine, warm up: anything that may fail on some ranks but not others, which the shell then turns
into one clean error for the whole job) and `run` (the steps, until the shell's stop conditions).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar, Generic, TypeVar, get_args, get_origin

from anytimectl.runtime.records import Columns, LiveColumn, RowLayout
from anytimectl.runtime.run_config import RunConfig

C = TypeVar("C", bound=RunConfig)

if TYPE_CHECKING:
    from anytimectl.runtime.shell import RunContext


@dataclass
class RunRequest(Generic[C]):
    """What a command hands the shell: the resolved options and which protocol and backend run them; generic over
    the config class, so `RunRequest[DynamicConfig]` is a `train dynamic` request."""

    command: str  # "train" or "compress": the first word of the run's command line
    method: str  # amb, fmb, dynamic, gossip, compress: names the run and its rows
    protocol: str  # module under anytimectl.protocols
    backend: str  # tensorflow, torch
    dataset: str
    model: str
    config: C  # every resolved option, typed (anytimectl/runtime/run_config.py), stored whole in metadata.json
    launch: Any  # options.LaunchOptions
    output: Any  # options.OutputOptions
    seed: int = 0
    argv: list[str] = field(default_factory=list)


@dataclass
class RunOutcome:
    """How `run` ended on rank 0: why it stopped (None: it ran to its end) and the method's summary figures."""

    stopped_by: str | None
    summary: dict[str, Any] = field(default_factory=dict)


class TrainingProtocol(Generic[C]):
    """Base class of every protocol; the shell builds one per rank with its `RunContext`.

    Generic over the config class the protocol reads: `class DynamicProtocol(AllReduceProtocol[DynamicConfig])`
    makes `self.context.config` a `DynamicConfig` for a type checker, and sets `config_class`, the class the shell
    checks at run time, from the same argument (an intermediate base such as `AllReduceProtocol[P]`, with `P`
    bound to `PeerConfig`, gets the bound), so the two cannot disagree."""

    #: Master-worker protocols use rank 0 as the master (`--workers N` starts N+1 ranks); the others train on
    #: every rank (N ranks).
    has_master: ClassVar[bool] = False
    #: The typed config the protocol reads (anytimectl/runtime/run_config.py), from the class's type argument: its
    #: command builds one, the shell refuses another class, metadata.json records it whole and --resume rebuilds it.
    config_class: ClassVar[type[RunConfig]] = RunConfig
    #: The protocol writes checkpoints and resumes from them (--checkpoint-every, --resume, --checkpoint-on-signal);
    #: the contract it then meets is in anytimectl/cli/commands/resume.py. The shell refuses those options otherwise.
    supports_checkpoints: ClassVar[bool] = False
    #: The method's own row fields (appended to the common ones) and CSV columns.
    row_fields: ClassVar[tuple[str, ...]] = ()
    columns: ClassVar[Columns] = Columns()
    live_columns: ClassVar[tuple[LiveColumn, ...]] = ()

    layout: ClassVar[RowLayout]

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        cls.layout = RowLayout(cls.row_fields)
        config = _config_argument(cls)
        if config is not None:
            if "config_class" in cls.__dict__:
                raise TypeError(f"{cls.__name__}: the config class is its type argument ({config.__name__}); "
                                "do not set config_class too")
            cls.config_class = config

    def __init__(self, context: RunContext[C]):
        self.context = context

    def setup(self) -> None:
        """Every rank, before the run directory exists: data, engine, warm-up. Raise UsageError for bad input."""

    def metadata(self) -> dict[str, Any]:
        """Rank 0, after setup: additions to metadata.json (framework versions, the delay model, ...)."""
        return {}

    def formatters(self) -> dict[str, Any]:
        """CSV cell formatters for row fields that are not plain numbers (see recorder.CellFormatter)."""
        return {}

    def run(self) -> RunOutcome:
        raise NotImplementedError


def _config_argument(cls: type) -> type[RunConfig] | None:
    """The config class named by `cls`'s parameterised protocol base (`AllReduceProtocol[DynamicConfig]`), or the
    bound of its type variable (`PeerProtocol[E]`); None when no base is parameterised."""
    for base in cls.__dict__.get("__orig_bases__", ()):
        origin = get_origin(base)
        if not (isinstance(origin, type) and issubclass(origin, TrainingProtocol)):
            continue
        (argument,) = get_args(base)
        if isinstance(argument, TypeVar):
            argument = argument.__bound__
        if not (isinstance(argument, type) and issubclass(argument, RunConfig)):
            raise TypeError(f"{cls.__name__}: {base} does not name a RunConfig class")
        return argument
    return None
