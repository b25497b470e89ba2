"""Evaluation off the critical path: the test pass runs in a thread while the next step computes, so it never
holds the workers back (the original evaluated between steps and stalled everyone)."""

from __future__ import annotations

import threading
import time
from typing import Any

import numpy as np


class Evaluator:
    def __init__(self, engine: Any, x: np.ndarray, y: np.ndarray):
        self.engine, self.x, self.y = engine, x, y
        self._thread: threading.Thread | None = None
        self._result: tuple[float, float] | None = None
        self._error: BaseException | None = None
        self.start_time = self.end_time = 0.0

    @property
    def running(self) -> bool:
        return self._thread is not None

    def start(self) -> None:
        def run() -> None:
            self.start_time = time.time()
            try:
                self._result = self.engine.evaluate(self.x, self.y)
            except BaseException as error:  # noqa: BLE001 - re-raised in join
                self._error = error
            self.end_time = time.time()

        self._result = self._error = None
        self._thread = threading.Thread(target=run, name="evaluate", daemon=True)
        self._thread.start()

    def join(self) -> tuple[float, float]:
        assert self._thread is not None
        self._thread.join()
        self._thread = None
        if self._error is not None:
            raise self._error
        assert self._result is not None
        return self._result

    def now(self) -> tuple[float, float]:
        self.start()
        return self.join()
