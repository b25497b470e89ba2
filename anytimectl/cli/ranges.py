"""Counts and sizes on the command line: `16`, `2^20`, `1,2,4`, or `4..4096` (4, 8, 16, ... 4096).

The studies sweep powers of two as the original scripts did; one parser gives every flag the same forms and the
same one-line errors.
"""

from __future__ import annotations

import re

from anytimectl.runtime.errors import UsageError

#: largest count a range may name (2^30): far beyond any batch or message this tool can hold in memory
MAX_COUNT = 2**30

_TERM = re.compile(r"^\s*(\d+)\s*(?:\^\s*(\d+))?\s*$")


def _term(text: str, flag: str) -> int:
    match = _TERM.match(text)
    if not match:
        raise UsageError(f"{flag} {text!r}: not a number; give N, 2^K, A..B (powers of two) or a comma list")
    base, exponent = int(match.group(1)), match.group(2)
    if exponent is not None and int(exponent) > 62:
        raise UsageError(f"{flag} {text!r}: too large (at most {MAX_COUNT} = 2^30)")
    return base ** int(exponent) if exponent is not None else base


def parse_counts(text: str, flag: str, maximum: int = MAX_COUNT) -> list[int]:
    """Counts from a comma list of N, 2^K or A..B (A, 2A, 4A, ... up to B), sorted, without repeats.

    Every count must be between 1 and `maximum`; an empty or reversed range is an error naming the flag.
    """
    values: list[int] = []
    for part in str(text).split(","):
        part = part.strip()
        if not part:
            continue
        if ".." in part:
            low_text, high_text = part.split("..", 1)
            low, high = _term(low_text, flag), _term(high_text, flag)
            if low < 1:
                raise UsageError(f"{flag} {part!r}: a range starts at 1 or more")
            if low > high:
                raise UsageError(f"{flag} {part!r}: the range is empty ({low} > {high}); write LOW..HIGH")
            if high > maximum:
                raise UsageError(f"{flag} {part!r}: {high} is too large (at most {maximum})")
            value = low
            while value <= high:
                values.append(value)
                value *= 2
        else:
            values.append(_term(part, flag))
    if not values:
        raise UsageError(f"{flag} {text!r}: no values; give N, 2^K, A..B or a comma list")
    for value in values:
        if value < 1:
            raise UsageError(f"{flag} {value}: must be at least 1")
        if value > maximum:
            raise UsageError(f"{flag} {value}: too large (at most {maximum})")
    return sorted(set(values))
