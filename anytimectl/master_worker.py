"""Moved to anytimectl.protocols.master_worker; kept only until anytimectl/bandwidth.py imports from there."""

from anytimectl.protocols.master_worker import HEADER_SIZE, LAYOUT

STAT_FIELDS = LAYOUT.fields

__all__ = ["HEADER_SIZE", "STAT_FIELDS"]
