"""Memory: what a worker does with the part of its gradient that it did not send.

`NoMemory` drops it (the original system). `ErrorFeedback` keeps it as a residual e and adds it to the next
gradient before compressing: the compressor sees g_t + e_{t-1}, and e_t = (g_t + e_{t-1}) - sent_t, where
sent_t is exactly what the receivers decode (values already rounded to the value dtype). Summed over steps,
sent_1 + ... + sent_T + e_T = g_1 + ... + g_T: nothing is lost, only delayed.
"""

from __future__ import annotations

from abc import ABC, abstractmethod

import numpy as np
import torch


class Memory(ABC):
    #: Whether `update` needs the decompressed message (the codec skips building it otherwise).
    needs_sent: bool = False

    @abstractmethod
    def compensate(self, grad: torch.Tensor) -> torch.Tensor:
        """The tensor to compress this step (never `grad` modified in place)."""

    @abstractmethod
    def update(self, compensated: torch.Tensor, sent: np.ndarray) -> None:
        """Remember what of `compensated` was not sent (`sent`: the decoded message, float32)."""

    @abstractmethod
    def state(self) -> np.ndarray | None:
        """The residual, for checkpoints (None when there is none)."""

    @abstractmethod
    def load(self, state: np.ndarray | None) -> None:
        """Restore what `state` returned."""


class NoMemory(Memory):
    def compensate(self, grad: torch.Tensor) -> torch.Tensor:
        return grad

    def update(self, compensated: torch.Tensor, sent: np.ndarray) -> None:
        pass

    def state(self) -> np.ndarray | None:
        return None

    def load(self, state: np.ndarray | None) -> None:
        pass


class ErrorFeedback(Memory):
    needs_sent = True

    def __init__(self, size: int) -> None:
        self.residual = torch.zeros(int(size), dtype=torch.float32)

    def compensate(self, grad: torch.Tensor) -> torch.Tensor:
        return grad.to(self.residual.device) + self.residual

    def update(self, compensated: torch.Tensor, sent: np.ndarray) -> None:
        torch.sub(compensated, torch.from_numpy(sent).to(compensated.device), out=self.residual)

    def state(self) -> np.ndarray | None:
        return self.residual.cpu().numpy().copy()

    def load(self, state: np.ndarray | None) -> None:
        if state is None:
            self.residual.zero_()
            return
        state = np.asarray(state, dtype=np.float32).reshape(-1)
        if state.size != self.residual.numel():
            raise ValueError(f"residual of {state.size} elements for a gradient of {self.residual.numel()}")
        self.residual.copy_(torch.from_numpy(state))


def make_memory(error_feedback: bool, size: int) -> Memory:
    """Error feedback over a flat gradient of `size` elements, or none."""
    return ErrorFeedback(size) if error_feedback else NoMemory()
