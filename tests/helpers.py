"""Running the real command line from tests: in a subprocess, exactly as a user would."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pandas as pd

REPO = Path(__file__).resolve().parent.parent
#: Start-up of TF ranks sharing two cores takes 5-10 s each (environment.md); runs get generous limits.
RUN_TIMEOUT = 240


def anytimectl(*args: str, timeout: float = RUN_TIMEOUT, check: bool = True,
               env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(
        [sys.executable, "-m", "anytimectl", *args], capture_output=True, text=True, timeout=timeout,
        env={**os.environ, **(env or {})}, stdin=subprocess.DEVNULL,
    )
    if check and result.returncode != 0:
        raise AssertionError(f"anytimectl {' '.join(args)} exited {result.returncode}:\n{result.stderr[-3000:]}")
    return result


def metadata(run: Path) -> dict:
    return json.loads((run / "metadata.json").read_text())


def table(run: Path, name: str) -> pd.DataFrame:
    return pd.read_csv(run / f"{name}.csv")
