"""The compressor options, declared once: `compress train`, `train dynamic` and `train gossip` take this group
(`anytimectl.cli.options.with_option_groups`), so `--compressor topk --ratio 0.01 --error-feedback` means the same in
every method. Choices come from the exchange registry (`anytimectl.exchange`); importing this imports no framework.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from functools import partial
from typing import Annotated, Any, Literal

from anytimectl import exchange as registry
from anytimectl.cli.options import aliased_choice, option
from anytimectl.exchange import MODE_ALIASES, MODES
from anytimectl.runtime.errors import UsageError

PANEL_COMPRESSION = "Compression"
MAX_LEVELS = 1 << 30


_option = partial(option, panel=PANEL_COMPRESSION)


def _compressor_option() -> Any:
    option = aliased_choice(
        registry.names(), registry.aliases(), rich_help_panel=PANEL_COMPRESSION,
        help="How gradients travel: " + registry.help_text() + "; the original's Topk, Randomk, Thresholdv, "
             "AdaptiveThreshold, TernGrad and RandomDithering work too.")
    option.param_decls = ("--compressor",)
    option.metavar = "NAME"  # the names are in the help text; eleven of them in brackets would pass 80 columns
    return option


def _mode_option() -> Any:
    option = aliased_choice(
        MODES, MODE_ALIASES, rich_help_panel=PANEL_COMPRESSION,
        help="layerwise: each tensor compressed on its own; entire: the whole model at once (the original's "
             "--compress entiremodel works too).")
    option.param_decls = ("--mode", "--compress", "-c")
    return option


#: --ratio and --levels, which `compress bench` takes too
RATIO = _option("K: the fraction of each tensor's (or the model's) elements topk and randomk send (--compressor "
                "none sends all).", "--ratio", "-K", metavar="K", above=0, max=1)
LEVELS = _option("s: qsgd's quantisation levels per sign (the original's --qstates).", "--levels", "--qstates", "-Q",
                 metavar="S", min=1, max=MAX_LEVELS)


@dataclass
class ExchangeOptions:
    """How a method's gradients travel between ranks (every field is an option; see `anytimectl.exchange`)."""

    compressor: Annotated[str, _compressor_option()] = "none"
    mode: Annotated[str, _mode_option()] = "layerwise"
    ratio: Annotated[float, RATIO] = 0.01
    threshold: Annotated[float, _option("V: threshold sends the elements with |g| >= V (of the summed gradient).",
                                        "--threshold", "-V", metavar="V", min=0)] = 0.001
    levels: Annotated[int, LEVELS] = 255
    value_dtype: Annotated[Literal["float32", "float16"], _option(
        "The values that travel (topk, randomk, thresholds); terngrad's and qsgd's scales stay float32.",
        "--value-dtype")] = "float32"
    rescale: Annotated[bool, _option("randomk: multiply the values sent by n/k (1/K): an unbiased estimate.",
                                     "--rescale/--no-rescale")] = False
    error_feedback: Annotated[bool | None, _option(
        "Add what a worker did not send to its next gradient (default: the method's; off for the original six "
        "and signsgd, on for powersgd, always on for ef-signsgd).", "--error-feedback/--no-error-feedback",
        show_default=False)] = None
    powersgd_rank: Annotated[int, _option(
        "r: PowerSGD's matrix rank; each gradient matrix n x m travels as P (n x r) and Q (m x r).", "--rank",
        metavar="R", min=1)] = 2
    powersgd_start_iter: Annotated[int, _option(
        "PowerSGD compresses from this step on; before it, a plain all-reduce (torch's start_powerSGD_iter).",
        "--powersgd-start-iter", metavar="STEP", min=0)] = 0
    min_compression_rate: Annotated[float, _option(
        "PowerSGD compresses an n x m matrix only if (n + m) r x RATE < n m; the rest travels uncompressed "
        "(torch's min_compression_rate).", "--min-compression-rate", metavar="RATE", min=0)] = 2.0
    warm_start: Annotated[bool, _option(
        "PowerSGD: start each step from the last step's Q (off: a fresh random Q every step).",
        "--warm-start/--no-warm-start")] = True

    def __post_init__(self) -> None:
        self.compressor = registry.entry(self.compressor).name

    @property
    def uses_error_feedback(self) -> bool:
        """Error feedback as the run applies it: the flag, or the method's default when it was left out."""
        default = registry.entry(self.compressor).error_feedback
        if default is None:
            return False
        return default if self.error_feedback is None else bool(self.error_feedback)

    def check(self, backend: str = "torch") -> None:
        """Every option the compressor uses must make sense: one line otherwise, before anything starts."""
        chosen = registry.entry(self.compressor)
        if chosen.needs_torch and backend != "torch":
            raise UsageError(f"--compressor {chosen.name} runs on torch: use --backend torch")
        if chosen.modes and self.mode not in chosen.modes:
            raise UsageError(f"--mode {self.mode} has no meaning for --compressor {chosen.name}: it compresses "
                             f"each tensor on its own; use --mode {chosen.modes[0]}")
        if self.rescale and chosen.name != "randomk":
            raise UsageError(f"--rescale scales random-k's values by 1/K; it does not apply to --compressor "
                             f"{chosen.name}")
        if self.error_feedback is not None and chosen.error_feedback is None:
            raise UsageError(f"--compressor {chosen.name} has no error feedback to switch; drop "
                             f"--{'no-' if not self.error_feedback else ''}error-feedback")
        if self.error_feedback is False and chosen.error_feedback is True and "error_feedback" not in \
                chosen.parameters:
            raise UsageError(f"--compressor {chosen.name} always uses error feedback; drop --no-error-feedback")

    def config(self) -> dict[str, Any]:
        """The options as a run's metadata stores them (error feedback resolved to what the run applies)."""
        return {**asdict(self), "error_feedback": self.uses_error_feedback}
