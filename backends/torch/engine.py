"""A PyTorch model behind the flat-buffer engine contract (protocols/master_worker.py `Engine`), so that every
protocol (master-worker AMB/FMB, all-reduce, gossip, compression) runs on it unchanged.

The parameters live in one flat float32 tensor that every `nn.Parameter` is a view of, and the gradients in
another, so moving the model to and from the communication layer is one copy of contiguous memory, and the
layer boundaries (`layout`) are slices of it. Gradients are of the SUMMED cross-entropy, so contributions of
unequal batches add up per example; `apply` divides by the total count, adds weight decay once, and steps the
optimizer on that buffer. Batch-norm running statistics travel in the buffer too, weighted by the examples behind
them, as in the TensorFlow engine.

AMB's deadline loop is eager Python here: micro-batch i starts only if, at the pace measured so far in this call,
it ends before the deadline; the first always runs.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.nn import functional

from anytimectl.backends.torch.models import build_model, to_model_input
from anytimectl.errors import UsageError

EVAL_CHUNK = 1024
OPTIMIZERS = ("rms", "adam", "sgd", "momentum")


def configure(threads: int, seed: int) -> None:
    """One thread pool of `threads` per rank: default threads with 2 ranks on 2 cores cost 4x (environment.md)."""
    torch.set_num_threads(threads)
    try:
        torch.set_num_interop_threads(1)
    except RuntimeError:  # can only be set once per process, before any parallel work (tests)
        pass
    torch.manual_seed(seed)


def framework_versions() -> dict[str, str]:
    import torchvision

    return {"torch": torch.__version__, "torchvision": torchvision.__version__}


def create_engine(spec: Any) -> TorchEngine:
    """The registry's constructor (anytimectl.backends.create_engine)."""
    return TorchEngine(spec.model, spec.input_shape, spec.num_classes, spec.optimizer, spec.learning_rate,
                       spec.weight_decay, momentum=spec.momentum, nesterov=spec.nesterov, device=spec.device)


@dataclass(frozen=True)
class TensorSlice:
    """Where one tensor of the model lives in the flat buffer."""

    name: str
    offset: int
    size: int
    shape: tuple[int, ...]
    trainable: bool


def _device(device: str) -> torch.device:
    if device.startswith("gpu"):
        if not torch.cuda.is_available():
            raise UsageError(f"--device: this rank was given {device}, but torch sees no CUDA device; use --device cpu")
        return torch.device("cuda")  # select_device has made the chosen GPU the only visible one
    return torch.device("cpu")


def make_optimizer(name: str, parameters: list[nn.Parameter], learning_rate: float, momentum: float | None,
                   nesterov: bool) -> torch.optim.Optimizer:
    """Weight decay is added to the gradient by the engine, once per update: the optimizers get none."""
    if momentum is not None or name == "momentum":
        value = 0.9 if momentum is None else momentum
        return torch.optim.SGD(parameters, lr=learning_rate, momentum=value, nesterov=nesterov and value > 0)
    if name == "rms":  # Keras' RMSprop defaults, so both backends take the same steps
        return torch.optim.RMSprop(parameters, lr=learning_rate, alpha=0.9, eps=1e-7)
    if name == "adam":
        return torch.optim.Adam(parameters, lr=learning_rate, eps=1e-7)
    if name == "sgd":
        return torch.optim.SGD(parameters, lr=learning_rate)
    raise UsageError(f"unknown optimizer {name!r} for --optimizer; choose one of {', '.join(OPTIMIZERS)}")


class TorchEngine:
    def __init__(self, model: str, input_shape: tuple[int, ...], num_classes: int, optimizer: str,
                 learning_rate: float, weight_decay: float, *, momentum: float | None = None, nesterov: bool = False,
                 device: str = "cpu"):
        self.device = _device(device)
        self.model = build_model(model, input_shape, num_classes).to(self.device)
        self.weight_decay = weight_decay
        parameters = [p for p in self.model.parameters() if p.requires_grad]
        self._statistics = [b for b in self.model.buffers() if b.is_floating_point()]
        self.trainable_count = sum(p.numel() for p in parameters)
        self.param_count = self.trainable_count + sum(b.numel() for b in self._statistics)
        self._flat = torch.zeros(self.trainable_count, dtype=torch.float32, device=self.device)
        self._grad = torch.zeros(self.trainable_count, dtype=torch.float32, device=self.device)
        self.layout: list[TensorSlice] = []
        names = {id(p): n for n, p in self.model.named_parameters()}
        offset = 0
        for p in parameters:  # every parameter becomes a view of the flat buffers
            n = p.numel()
            self._flat[offset:offset + n].copy_(p.detach().reshape(-1))
            p.data = self._flat[offset:offset + n].view_as(p)
            p.grad = self._grad[offset:offset + n].view_as(p)
            self.layout.append(TensorSlice(names.get(id(p), f"param{len(self.layout)}"), offset, n, tuple(p.shape),
                                           True))
            offset += n
        buffer_names = {id(b): n for n, b in self.model.named_buffers()}
        for b in self._statistics:
            self.layout.append(TensorSlice(buffer_names.get(id(b), "buffer"), offset, b.numel(), tuple(b.shape), False))
            offset += b.numel()
        self._parameters = parameters
        self.optimizer = make_optimizer(optimizer, parameters, learning_rate, momentum, nesterov)

    # --- the Engine interface -------------------------------------------------------------------------------------
    def get_params(self) -> np.ndarray:
        """A copy: [trainable values, batch-norm statistics]."""
        out = np.empty(self.param_count, dtype=np.float32)
        out[:self.trainable_count] = self._flat.detach().cpu().numpy()
        offset = self.trainable_count
        for b in self._statistics:
            n = b.numel()
            out[offset:offset + n] = b.detach().reshape(-1).cpu().numpy()
            offset += n
        return out

    def set_params(self, flat: np.ndarray) -> None:
        values = torch.from_numpy(np.ascontiguousarray(flat[:self.param_count], dtype=np.float32))
        with torch.no_grad():
            self._flat.copy_(values[:self.trainable_count])
            offset = self.trainable_count
            for b in self._statistics:
                n = b.numel()
                b.copy_(values[offset:offset + n].view_as(b))
                offset += n

    def compute(self, x: np.ndarray, y: np.ndarray, micro_batches: int, deadline: float) -> tuple[np.ndarray, int, int]:
        """Gradients of the summed loss over micro-batches of (x, y), the first always, the others while the pace
        says they end before `deadline`. Returns ([Σ grads, n x statistics, n, Σ loss], examples, micro-batches)."""
        self.model.train()
        inputs = torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32)).to(self.device)
        labels = torch.from_numpy(np.ascontiguousarray(y, dtype=np.int64)).to(self.device)
        total = len(inputs)
        self._grad.zero_()
        loss_sum = torch.zeros((), dtype=torch.float32, device=self.device)
        start = time.time()
        examples = done = 0
        while done < micro_batches:
            if done and math.isfinite(deadline):
                pace = (time.time() - start) / done
                if time.time() + pace > deadline:
                    break
            lo, hi = (done * total) // micro_batches, ((done + 1) * total) // micro_batches
            if hi > lo:
                loss = functional.cross_entropy(self.model(to_model_input(inputs[lo:hi])), labels[lo:hi],
                                                reduction="sum")
                loss.backward()
                loss_sum += loss.detach()
            examples += hi - lo
            done += 1
        out = np.empty(self.param_count + 2, dtype=np.float32)
        out[:self.trainable_count] = self._grad.cpu().numpy()
        offset = self.trainable_count
        for b in self._statistics:
            n = b.numel()
            out[offset:offset + n] = b.detach().reshape(-1).cpu().numpy() * examples
            offset += n
        out[-2] = examples
        out[-1] = float(loss_sum)
        return out, examples, done

    def apply(self, reduced: np.ndarray, learning_rate: float) -> float:
        n = float(reduced[-2])
        if n <= 0:
            raise ValueError("an update needs at least one example")
        values = torch.from_numpy(np.ascontiguousarray(reduced, dtype=np.float32)).to(self.device)
        with torch.no_grad():
            self._grad.copy_(values[:self.trainable_count]).div_(n)
            if self.weight_decay:
                self._grad.add_(self._flat, alpha=self.weight_decay)  # once per update
            for group in self.optimizer.param_groups:
                group["lr"] = learning_rate
            self.optimizer.step()
            offset = self.trainable_count
            for b in self._statistics:
                size = b.numel()
                b.copy_((values[offset:offset + size] / n).view_as(b))
                offset += size
        return float(reduced[-1]) / n

    def current_learning_rate(self) -> float:
        """The rate the optimizer applied last (tests check it is the one logged)."""
        return float(self.optimizer.param_groups[0]["lr"])

    def evaluate(self, x: np.ndarray, y: np.ndarray) -> tuple[float, float]:
        self.model.eval()
        loss_sum = correct = 0.0
        with torch.no_grad():
            for lo in range(0, len(x), EVAL_CHUNK):
                inputs = torch.from_numpy(np.ascontiguousarray(x[lo:lo + EVAL_CHUNK], dtype=np.float32))
                labels = torch.from_numpy(np.ascontiguousarray(y[lo:lo + EVAL_CHUNK], dtype=np.int64))
                logits = self.model(to_model_input(inputs.to(self.device)))
                labels = labels.to(self.device)
                loss_sum += float(functional.cross_entropy(logits, labels, reduction="sum"))
                correct += float((logits.argmax(1) == labels).sum())
        self.model.train()
        return loss_sum / len(x), correct / len(x)

    # --- checkpoints ----------------------------------------------------------------------------------------------
    def state(self) -> dict[str, Any]:
        """Everything needed to continue exactly: the model, the optimizer, torch's random generators."""
        state = {"model": {k: v.detach().clone() for k, v in self.model.state_dict().items()},
                 "optimizer": self.optimizer.state_dict(), "rng": torch.get_rng_state()}
        if self.device.type == "cuda":
            state["cuda_rng"] = torch.cuda.get_rng_state()
        return state

    def load_state(self, state: dict[str, Any]) -> None:
        with torch.no_grad():
            self.model.load_state_dict(state["model"])  # copies into the parameters, which stay buffer views
        self.optimizer.load_state_dict(state["optimizer"])
        torch.set_rng_state(state["rng"])
        if "cuda_rng" in state and self.device.type == "cuda":
            torch.cuda.set_rng_state(state["cuda_rng"])
