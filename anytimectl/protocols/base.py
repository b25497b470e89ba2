"""The contract between the run shell and a training protocol.

A protocol says what one step does between ranks; everything around it (launch, the run directory, the live view,
signals, failures, output) is the shell's (`anytimectl.runtime.shell`). A protocol class declares its shape as data (has
it a master, its row fields, its extra columns) and implements two calls that run on every rank: `setup` (load
data, build the engine, warm up: anything that may fail on some ranks but not others, which the shell then turns
into one clean error for the whole job) and `run` (the steps, until the shell's stop conditions).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar

from anytimectl.runtime.records import Columns, LiveColumn, RowLayout
from anytimectl.runtime.run_config import RunConfig

if TYPE_CHECKING:
    from anytimectl.runtime.shell import RunContext


@dataclass
class RunRequest:
    """What a command hands the shell: the resolved options and which protocol and backend run them."""

    command: str  # "train" or "compress": the first word of the run's command line
    method: str  # amb, fmb, dynamic, gossip, compress: names the run and its rows
    protocol: str  # module under anytimectl.protocols
    backend: str  # tensorflow, torch
    dataset: str
    model: str
    config: RunConfig  # every resolved option, typed (anytimectl/runtime/run_config.py), stored whole in metadata.json
    launch: Any  # options.LaunchOptions
    output: Any  # options.OutputOptions
    seed: int = 0
    argv: list[str] = field(default_factory=list)


@dataclass
class RunOutcome:
    """How `run` ended on rank 0: why it stopped (None: it ran to its end) and the method's summary figures."""

    stopped_by: str | None
    summary: dict[str, Any] = field(default_factory=dict)


class TrainingProtocol:
    """Base class of every protocol; the shell builds one per rank with its `RunContext`."""

    #: Master-worker protocols use rank 0 as the master (`--workers N` starts N+1 ranks); the others train on
    #: every rank (N ranks).
    has_master: ClassVar[bool] = False
    #: The typed config the protocol reads (anytimectl/runtime/run_config.py): its command builds one, the shell refuses
    #: another class, metadata.json records it whole and --resume rebuilds it from there.
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

    def __init__(self, context: RunContext):
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
