"""The kinds of failure a user can meet, so that the CLI can answer each the same way everywhere.

A `UsageError` is the user's to fix (bad flag, missing file, existing run): the CLI prints its one-line
message and exits 2, with no traceback. An `OutputError` is a run's output that cannot be written (a full disk, a
quota, a removed folder): one line naming the path and the reason, exit code 1. Anything else is our bug or the
machine's, and keeps its traceback.
"""

import os


class UsageError(Exception):
    """Bad input: printed as one line, exit code 2."""

    exit_code = 2


class OutputError(OSError):
    """A file of the run's output could not be written: printed as one line naming it, exit code 1."""

    exit_code = 1

    def __init__(self, path: object, error: OSError, what: str = "write"):
        reason = os.strerror(error.errno) if error.errno else (str(error) or type(error).__name__)
        super().__init__(error.errno or 0, f"cannot {what} {path}: {reason}")
        self.path = path

    def __str__(self) -> str:
        return str(self.args[1])
