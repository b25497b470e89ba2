"""Evaluation off the critical path: the test pass runs in a thread while the next step computes, so it never
holds the workers back (the original evaluated between steps and stalled everyone)."""

from __future__ import annotations

import threading
import time
from typing import Any

import numpy as np


class Evaluator:
    """`engine` evaluates; with `snapshot_of`, it first takes that engine's parameters, so the evaluation can run
    while `snapshot_of` goes on training (a peer method's rank 0 trains and evaluates)."""

    def __init__(self, engine: Any, x: np.ndarray, y: np.ndarray, snapshot_of: Any = None):
        self.engine, self.x, self.y = engine, x, y
        self.snapshot_of = snapshot_of
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
        if self.snapshot_of is not None:
            self.engine.set_params(self.snapshot_of.get_params())
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
