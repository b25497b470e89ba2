"""A PyTorch model behind the flat-buffer engine contract (anytimectl/runtime/engine.py `Engine`), so that every
protocol (master-worker AMB/FMB, all-reduce, dynamic batching, gossip, compression) runs on it unchanged.

Memory: every value the model holds lives in ONE flat float32 tensor, and every tensor of the model is a view of
it: first the trainable parameters, then the frozen float parameters, then the float buffers (batch-norm running
mean and variance; integer buffers such as num_batches_tracked stay out). The gradients live in a second flat tensor
that every parameter's `.grad` is a view of, so backward accumulates straight into it. Moving the model to and from
the communication layer is therefore one contiguous copy (on the CPU the tensors share memory with numpy), and the
layer boundaries that compression and gossip need are slices of the buffer (`layout`). The optimizer steps the
flat trainable slice as one tensor: the optimizers offered (SGD, momentum, Nesterov, RMSprop, Adam) act element by
element, so this is the same update as stepping each tensor, in one vectorised pass instead of one per tensor.

Arithmetic: gradients are of the SUMMED cross-entropy, so contributions of unequal batches add up per example; the
non-trainable values travel multiplied by the examples behind them (the TensorFlow engine's convention), so the
master's batch-norm statistics become the example-weighted mean of the workers'. `apply` divides by the total count,
adds weight decay ONCE per update (the original added it per partition), sets the optimizer's learning rate to the
one given (the one the run logs), and steps.

AMB's deadline loop is eager Python: micro-batch i (rows i*N//P to (i+1)*N//P, as in the TensorFlow engine) starts
only if, at the pace measured so far in this call, it ends before the deadline; the first always runs. On a GPU the
clock is read after synchronising, so the pace is the device's, not the launch queue's.
"""

from __future__ import annotations

import copy
import inspect
import math
import random
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.nn import functional
from torch.optim import optimizer as optimizer_module

from anytimectl.backends.torch.models import build_model, to_model_input
from anytimectl.runtime.errors import UsageError

EVAL_CHUNK = 1024
OPTIMIZERS = ("rms", "adam", "sgd", "momentum")
#: the original's abbreviations (as the TensorFlow engine takes them)
OPTIMIZER_ALIASES = {"adm": "adam", "mom": "momentum", "rmsprop": "rms"}


def configure(threads: int, seed: int) -> None:
    """`threads` intra-op threads and one inter-op thread per rank (default threads with 2 ranks on 2 cores cost 4x,
    docs/platform-facts.md), and the seeds of Python, numpy and torch (all devices), as Keras' set_random_seed does for
    the TensorFlow backend."""
    if threads > 0:
        torch.set_num_threads(threads)
    try:
        torch.set_num_interop_threads(1)
    except RuntimeError:  # can only be set once per process, before any inter-op work (tests, a second engine)
        pass
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def framework_versions() -> dict[str, str]:
    """torchvision's version from its installed metadata: importing it only for this costs ~2 s per run."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        vision = version("torchvision")
    except PackageNotFoundError:
        vision = "not installed"
    return {"torch": torch.__version__, "torchvision": vision}


def create_engine(spec: Any) -> TorchEngine:
    """The registry's constructor (anytimectl.backends.create_engine)."""
    return TorchEngine(spec.model, spec.input_shape, spec.num_classes, spec.optimizer, spec.learning_rate,
                       spec.weight_decay, momentum=spec.momentum, nesterov=spec.nesterov, device=spec.device)


@dataclass(frozen=True)
class TensorSlice:
    """Where one tensor of the model lives in the flat buffer: [offset, offset + size) holds it, row-major."""

    name: str
    offset: int
    size: int
    shape: tuple[int, ...]
    trainable: bool


def resolve_device(device: str) -> torch.device:
    """cpu; cuda, cuda:N, gpu or gpu:N (select_device has already made the chosen GPU the only visible one, so
    gpu:N is this process's first CUDA device). A GPU that torch cannot see is a one-line error, and nothing
    touches CUDA when the CPU is asked for."""
    name = str(device).strip().lower()
    if name == "cpu":
        return torch.device("cpu")
    kind, _, index = name.partition(":")
    if kind not in ("cuda", "gpu") or (index and not index.isdigit()):
        raise UsageError(f"--device {device!r}: the torch engine runs on cpu or cuda[:N] (gpu)")
    if not torch.cuda.is_available():
        raise UsageError(f"--device: this rank was given {device}, but torch sees no CUDA device; use --device cpu")
    if kind == "gpu" or not index:
        return torch.device("cuda", 0)
    if int(index) >= torch.cuda.device_count():
        raise UsageError(f"--device {device}: torch sees {torch.cuda.device_count()} CUDA device(s) here")
    return torch.device("cuda", int(index))


#: torch.optim.Optimizer's methods that torch wraps to keep torch.compile out of them; the wrapper imports the
#: compiler (torch._dynamo) on its first call.
_COMPILER_GUARDED = ("add_param_group", "state_dict", "load_state_dict", "zero_grad")


def _skip_compiler_guards() -> None:
    """Let the optimizers run without importing torch's compiler, which anytimectl never uses.

    torch wraps `Optimizer.__init__`'s `add_param_group` (and `state_dict`, `load_state_dict`, `zero_grad`) and
    every `step()` in guards that keep torch.compile from tracing them, and the guards import torch._dynamo, the
    compiler, on their first call: about 1 s of CPU, a third of a torch rank's start-up on our 2-core machine
    (torch's own import is 1.3 s). A guard caches its unguarded function on first use; filling that cache with
    the function itself makes the guard call it directly (nothing is ever compiled in these processes, so the
    guard has nothing to guard), and `optimizer_step` calls `step()`'s implementation under `torch.no_grad()`, as
    its guard does. Where torch has already imported the compiler, or its guards have another shape, this does
    nothing and the optimizers run as torch wrote them.
    """
    if "torch._dynamo" in sys.modules:
        return
    for name in _COMPILER_GUARDED:
        guarded = getattr(torch.optim.Optimizer, name)
        function = getattr(guarded, "__wrapped__", None)
        if function is not None and getattr(function, "__dynamo_disable", None) is None:
            setattr(function, "__dynamo_disable", function)


def optimizer_step(optimizer: torch.optim.Optimizer) -> None:
    """`optimizer.step()` without its compiler guard (see `_skip_compiler_guards`): the same update, computed
    without autograd as the guard computes it, for optimizers that are not differentiable. The wrapper that runs
    step hooks is skipped with it, so where any step hook is registered (the engine's optimizers have none, but a
    user's model file could add a global one) the full `step()` runs."""
    step = type(optimizer).step
    update = inspect.unwrap(step)
    hooks = (getattr(optimizer, "_optimizer_step_pre_hooks", None), getattr(optimizer, "_optimizer_step_post_hooks",
             None), getattr(optimizer_module, "_global_optimizer_pre_hooks", None),
             getattr(optimizer_module, "_global_optimizer_post_hooks", None))
    if update is step or optimizer.defaults.get("differentiable") or "torch._dynamo" in sys.modules \
            or any(hooks):
        optimizer.step()
        return
    with torch.no_grad():
        update(optimizer)


def make_optimizer(name: str, parameters: list[torch.Tensor], learning_rate: float, momentum: float | None = None,
                   nesterov: bool = False) -> torch.optim.Optimizer:
    """The optimizer by the CLI's name; weight decay is added to the gradient by the engine, so it gets none.

    rms and adam take Keras' defaults (RMSprop rho 0.9, epsilon 1e-7; Adam epsilon 1e-7) so both backends take the
    same steps; momentum is SGD with momentum 0.9. An explicit `momentum` (the gossip and compression methods:
    SGD(lr, momentum, nesterov) as their originals) sets sgd's or momentum's value, or RMSprop's momentum."""
    _skip_compiler_guards()
    name = OPTIMIZER_ALIASES.get(name, name)
    if name not in OPTIMIZERS:
        raise UsageError(f"unknown optimizer {name!r} for --optimizer; choose one of {', '.join(OPTIMIZERS)}")
    if momentum is not None and momentum < 0:
        raise UsageError(f"--momentum {momentum}: must be at least 0")
    if nesterov and name not in ("sgd", "momentum"):
        raise UsageError(f"--nesterov is SGD's; --optimizer {name} has no Nesterov form")
    if name in ("sgd", "momentum"):
        value = momentum if momentum is not None else (0.9 if name == "momentum" else 0.0)
        return torch.optim.SGD(parameters, lr=learning_rate, momentum=value, nesterov=nesterov and value > 0)
    if name == "rms":
        return torch.optim.RMSprop(parameters, lr=learning_rate, alpha=0.9, eps=1e-7, momentum=momentum or 0.0)
    if momentum:
        raise UsageError("--momentum does not apply to --optimizer adam (its betas play that part)")
    return torch.optim.Adam(parameters, lr=learning_rate, eps=1e-7)


class TorchEngine:
    """One model, its optimizer and its flat buffers (see the module's docstring for the layout and arithmetic)."""

    def __init__(self, model: str, input_shape: tuple[int, ...], num_classes: int, optimizer: str,
                 learning_rate: float, weight_decay: float, *, momentum: float | None = None, nesterov: bool = False,
                 device: str = "cpu"):
        self.device = resolve_device(device)
        self.input_shape = tuple(int(v) for v in input_shape)
        self.num_classes = int(num_classes)
        self.weight_decay = float(weight_decay)
        self.model = build_model(model, self.input_shape, self.num_classes).to(self.device)
        trainable = [(n, p) for n, p in self.model.named_parameters() if p.requires_grad]
        frozen = [(n, p) for n, p in self.model.named_parameters() if not p.requires_grad and p.is_floating_point()]
        buffers = [(n, b) for n, b in self.model.named_buffers() if b.is_floating_point()]
        for tensor_name, tensor in trainable + frozen + buffers:
            if tensor.dtype != torch.float32:
                raise UsageError(f"--model {model}: {tensor_name} is {tensor.dtype}; the torch engine trains float32 "
                                 "models")
        self.trainable_count = sum(p.numel() for _, p in trainable)
        #: where the batch-norm statistics start: [trainable | frozen parameters | float buffers]
        self._buffers_start = self.trainable_count + sum(p.numel() for _, p in frozen)
        self.param_count = self._buffers_start + sum(b.numel() for _, b in buffers)
        self._values = torch.empty(self.param_count, dtype=torch.float32, device=self.device)
        self._grad = torch.zeros(self.trainable_count, dtype=torch.float32, device=self.device)
        self.layout: list[TensorSlice] = []
        self._grad_views: list[tuple[nn.Parameter, torch.Tensor]] = []
        offset = 0
        with torch.no_grad():
            for index, (tensor_name, tensor) in enumerate(trainable + frozen + buffers):
                size = tensor.numel()
                view = self._values[offset:offset + size].view_as(tensor)
                view.copy_(tensor)
                tensor.data = view  # the model's tensor is now a window on the flat buffer
                if index < len(trainable):
                    grad = self._grad[offset:offset + size].view_as(tensor)
                    tensor.grad = grad
                    self._grad_views.append((tensor, grad))
                self.layout.append(TensorSlice(tensor_name, offset, size, tuple(tensor.shape), index < len(trainable)))
                offset += size
        self._trainable = self._values[:self.trainable_count]
        self._trainable.grad = self._grad
        self._on_cpu = self.device.type == "cpu"
        self._values_host = self._values.numpy() if self._on_cpu else None  # shares memory: no copy to read it
        self._grad_host = self._grad.numpy() if self._on_cpu else None
        self.optimizer = make_optimizer(optimizer, [self._trainable], learning_rate, momentum, nesterov)

    # --- the Engine interface -------------------------------------------------------------------------------------
    def get_params(self) -> np.ndarray:
        """A copy of [trainable values, frozen parameters, batch-norm statistics]: the caller may keep it while the
        engine trains on (evaluation snapshots, gossip)."""
        if self._on_cpu:
            return self._values_host.copy()
        return self._values.cpu().numpy()

    def set_params(self, flat: np.ndarray) -> None:
        """Take the first param_count values of `flat` (a contribution buffer's extra two are ignored)."""
        if len(flat) < self.param_count:
            raise ValueError(f"set_params needs {self.param_count} values, got {len(flat)}")
        if self._on_cpu:
            np.copyto(self._values_host, flat[:self.param_count], casting="same_kind")
        else:
            self._values.copy_(torch.from_numpy(_writable_float32(flat[:self.param_count])))

    def compute(self, x: np.ndarray, y: np.ndarray, micro_batches: int, deadline: float,
                between: Callable[[], None] | None = None) -> tuple[np.ndarray, int, int]:
        """Gradients of the summed loss over micro-batches of (x, y): the first always, each further one only if, at
        this call's pace so far, it ends before `deadline` (time.time() seconds; math.inf runs them all).
        Returns ([sum of gradients, n x non-trainable values, n, sum of losses], examples n, micro-batches run)."""
        if not self.model.training:
            self.model.train()
        inputs = self._tensor(x, np.float32)
        labels = self._tensor(y, np.int64)
        total = int(inputs.shape[0])
        parts = max(1, int(micro_batches))
        self._attach_gradients()
        self._grad.zero_()
        timed = math.isfinite(deadline)
        synchronise = timed and not self._on_cpu
        loss_sum = 0.0
        examples = done = 0
        start = time.time()
        while done < parts:
            if done and timed:
                now = time.time()
                if now + (now - start) / done > deadline:
                    break
            if done and between is not None:
                between()
            lo, hi = (done * total) // parts, ((done + 1) * total) // parts
            if hi > lo:
                loss = functional.cross_entropy(self.model(to_model_input(inputs[lo:hi])), labels[lo:hi],
                                                reduction="sum")
                loss.backward()
                loss_sum += loss.item()  # also waits for a GPU, so the clock above measures the work
                if synchronise:
                    torch.cuda.synchronize(self.device)
            examples += hi - lo
            done += 1
        return self._contribution(examples, loss_sum), examples, done

    def apply(self, reduced: np.ndarray, learning_rate: float) -> float:
        """One update from summed contributions: gradient = sum / n + weight_decay x parameters; the optimizer's
        learning rate set to `learning_rate`; statistics = their weighted sum / n. Returns the mean training loss."""
        if len(reduced) != self.param_count + 2:
            raise ValueError(f"apply needs a contribution of {self.param_count + 2} values, got {len(reduced)}")
        n = float(reduced[self.param_count])
        if n <= 0:
            raise ValueError("an update needs at least one example")
        values = torch.from_numpy(_writable_float32(reduced))
        if not self._on_cpu:
            values = values.to(self.device)
        trainable, start, end = self.trainable_count, self._buffers_start, self.param_count
        with torch.no_grad():
            torch.div(values[:trainable], n, out=self._grad)
            if self.weight_decay:
                self._grad.add_(self._trainable, alpha=self.weight_decay)  # once per update
            for group in self.optimizer.param_groups:
                group["lr"] = float(learning_rate)
            optimizer_step(self.optimizer)
            if end > start:  # frozen parameters are the same everywhere: only the statistics are averaged
                torch.div(values[start:end], n, out=self._values[start:end])
        return float(reduced[-1]) / n

    def current_learning_rate(self) -> float:
        """The rate the optimizer applied in the last update (tests check it is the one logged)."""
        return float(self.optimizer.param_groups[0]["lr"])

    def evaluate(self, x: np.ndarray, y: np.ndarray) -> tuple[float, float]:
        """(mean loss, accuracy) in eval mode (dropout off, batch norm on its running statistics), in chunks of
        EVAL_CHUNK examples; the model's mode is restored afterwards."""
        if len(x) == 0:
            raise ValueError("evaluate needs at least one example")
        was_training = self.model.training
        self.model.eval()
        loss_sum = torch.zeros((), dtype=torch.float64, device=self.device)
        correct = torch.zeros((), dtype=torch.int64, device=self.device)
        try:
            with torch.no_grad():
                for lo in range(0, len(x), EVAL_CHUNK):
                    logits = self.model(to_model_input(self._tensor(x[lo:lo + EVAL_CHUNK], np.float32)))
                    labels = self._tensor(y[lo:lo + EVAL_CHUNK], np.int64)
                    loss_sum += functional.cross_entropy(logits, labels, reduction="sum").double()
                    correct += (logits.argmax(1) == labels).sum()
        finally:
            self.model.train(was_training)
        return float(loss_sum) / len(x), float(correct) / len(x)

    # --- checkpoints ----------------------------------------------------------------------------------------------
    def state(self) -> dict[str, Any]:
        """Everything needed to continue exactly, detached from the live engine (later steps do not change it):
        the model's state_dict, the optimizer's (momentum, Adam's moments and step count), torch's generators."""
        state: dict[str, Any] = {
            "model": {k: v.detach().clone() for k, v in self.model.state_dict().items()},
            "optimizer": copy.deepcopy(self.optimizer.state_dict()),
            "rng": torch.get_rng_state(),
        }
        if not self._on_cpu:
            state["cuda_rng"] = torch.cuda.get_rng_state(self.device)
        return state

    def load_state(self, state: dict[str, Any]) -> None:
        """Restore what `state()` returned (in place: the model's tensors stay windows on the flat buffer; the
        given dict is not aliased, so it can be loaded again)."""
        with torch.no_grad():
            self.model.load_state_dict(state["model"])  # copies into the existing tensors
        self._check_views()
        self.optimizer.load_state_dict(copy.deepcopy(state["optimizer"]))
        torch.set_rng_state(state["rng"])
        if "cuda_rng" in state and not self._on_cpu:
            torch.cuda.set_rng_state(state["cuda_rng"], self.device)

    # --- helpers --------------------------------------------------------------------------------------------------
    def _tensor(self, array: np.ndarray, dtype: type[np.generic]) -> torch.Tensor:
        """The array as a tensor on the engine's device; on the CPU without a copy when it is already `dtype`."""
        tensor = torch.from_numpy(_writable(np.ascontiguousarray(array, dtype=dtype)))
        return tensor if self._on_cpu else tensor.to(self.device, non_blocking=True)

    def _attach_gradients(self) -> None:
        """Point every parameter's .grad at its window of the gradient buffer again, in case code outside the engine
        (a zero_grad(), a bench's own backward) set it to None or replaced it."""
        for parameter, grad in self._grad_views:
            if parameter.grad is not grad:
                parameter.grad = grad

    def _check_views(self) -> None:
        for (parameter, _), piece in zip(self._grad_views, self.layout, strict=False):
            if parameter.data_ptr() != self._values[piece.offset:piece.offset + piece.size].data_ptr():
                raise RuntimeError(f"{piece.name} no longer lives in the engine's flat buffer")

    def _contribution(self, examples: int, loss_sum: float) -> np.ndarray:
        trainable, end = self.trainable_count, self.param_count
        out = np.empty(end + 2, dtype=np.float32)
        if self._on_cpu:
            out[:trainable] = self._grad_host
            np.multiply(self._values_host[trainable:], examples, out=out[trainable:end])
        else:
            joined = torch.cat([self._grad, self._values[trainable:] * examples])
            out[:end] = joined.cpu().numpy()
        out[end] = examples
        out[end + 1] = loss_sum
        return out


def _writable(array: np.ndarray) -> np.ndarray:
    """torch.from_numpy warns on read-only arrays (a received buffer may be one): copy only those."""
    return array if array.flags.writeable else array.copy()


def _writable_float32(array: np.ndarray) -> np.ndarray:
    return _writable(np.ascontiguousarray(array, dtype=np.float32))
