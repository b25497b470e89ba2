"""The two kinds of failure a user can meet, so that the CLI can answer each the same way everywhere.

A `UsageError` is the user's to fix (bad flag, missing file, existing run): the CLI prints its one-line
message and exits 2, with no traceback. Anything else is our bug or the machine's, and keeps its traceback.
"""


class UsageError(Exception):
    """Bad input: printed as one line, exit code 2."""

    exit_code = 2
