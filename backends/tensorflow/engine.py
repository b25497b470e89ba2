"""AMB and FMB gradients in TensorFlow, behind the flat-buffer Engine interface of the master-worker protocol.

The AMB micro-batch loop is one compiled `tf.while_loop` that treats the time limit as a deadline: a
micro-batch starts only when it is expected to finish in time (at least one always runs). Its clock is honest
(docs/platform-facts.md): every timestamp is taken under a control dependency on that micro-batch's gradients, or TF
reorders the clock reads and reports a dozen micro-batches in a fraction of a millisecond. Two micro-batches may
run at once (`parallel_iterations=2`, which hides much of the cost of small micro-batches): the condition for
micro-batch i uses the clock read after micro-batch i-2 and counts micro-batch i-1, still running, in its
prediction, so the deadline rule is the same as for a strict one-at-a-time loop (the README's "Micro-batch
cost" has the measurements). FMB is the same loop with one micro-batch and no deadline, so the two methods share
every line of arithmetic.

The asynchronous protocol passes `between`, which may hand the engine a newer model after any micro-batch. That
runs in a second compilation of the same loop: before micro-batch i (i >= 1) a `tf.numpy_function` calls
`between()` (numpy only: the protocol's inbox), and whatever parameters it set are assigned in the graph before
micro-batch i reads them. The check waits for micro-batch i-1's gradients, so that no assignment lands under a
micro-batch still reading the variables; the loop then runs one micro-batch at a time (0.97-1.04x the
synchronous loop's time per micro-batch, 1-4 processes sharing 2 cores; a `tf.py_function`, which wraps its
values as eager tensors, cost 1.13-1.18x). Driving the micro-batches one engine call each from Python instead (a
call, tensor conversions and a full-size gradient copy each) took 1.3-1.7x: `tests/bench/async_loop_cost.py`, the
README's "Asynchronous AMB against synchronous AMB".
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import numpy as np

from anytimectl.backends.tensorflow.models import build_model
from anytimectl.backends.tensorflow.quiet_import import keras, native_stderr_silenced, tf
from anytimectl.runtime.errors import UsageError

OPTIMIZERS = ("rms", "adam", "sgd", "momentum")
#: the original's abbreviations
OPTIMIZER_ALIASES = {"adm": "adam", "mom": "momentum", "rmsprop": "rms"}
EVAL_CHUNK = 1024


def configure(threads: int, seed: int) -> None:
    """Thread pools and seeds must be set before TensorFlow runs its first op."""
    try:
        tf.config.threading.set_intra_op_parallelism_threads(threads)
        tf.config.threading.set_inter_op_parallelism_threads(threads)
    except RuntimeError:  # already initialised in this process (tests); keep what is there
        pass
    with native_stderr_silenced():
        gpus = tf.config.list_physical_devices("GPU")
    for gpu in gpus:
        try:
            tf.config.experimental.set_memory_growth(gpu, True)
        except RuntimeError:
            pass
    keras.utils.set_random_seed(seed)


def make_optimizer(name: str, learning_rate: float):
    name = OPTIMIZER_ALIASES.get(name, name)
    if name == "rms":
        return keras.optimizers.RMSprop(learning_rate)
    if name == "adam":
        return keras.optimizers.Adam(learning_rate)
    if name == "sgd":
        return keras.optimizers.SGD(learning_rate)
    if name == "momentum":
        return keras.optimizers.SGD(learning_rate, momentum=0.9)
    raise UsageError(f"unknown optimizer '{name}' for --optimizer; choose one of {', '.join(OPTIMIZERS)}")


class TensorFlowEngine:
    """A Keras model as flat float32 buffers: [trainable values, non-trainable float values (batch-norm stats)].

    Batch-norm moving statistics travel too: workers return them weighted by their example count and the master
    averages them, so the evaluated model carries the statistics of the data it was trained on (the original
    synced trainable variables only).
    """

    def __init__(self, model: str, input_shape: tuple[int, ...], num_classes: int, optimizer: str,
                 learning_rate: float, weight_decay: float):
        self.model = build_model(model, input_shape, num_classes)
        self.trainable = list(self.model.trainable_variables)
        self.statistics = [v for v in self.model.non_trainable_variables if "float" in str(v.dtype)]
        self.trainable_count = int(sum(np.prod(v.shape) for v in self.trainable))
        self.param_count = self.trainable_count + int(sum(np.prod(v.shape) for v in self.statistics))
        self.weight_decay = weight_decay
        self.optimizer = make_optimizer(optimizer, learning_rate)
        self.optimizer.build(self.trainable)
        spec = tf.TensorSpec((None, *input_shape), tf.float32)
        labels = tf.TensorSpec((None,), tf.int64)
        compute_signature = [spec, labels, tf.TensorSpec((), tf.int32), tf.TensorSpec((), tf.float64)]
        self._compute = tf.function(self._compute_graph, input_signature=compute_signature, reduce_retracing=True)
        self._compute_checking = tf.function(
            lambda x, y, micro_batches, deadline: self._compute_graph(x, y, micro_batches, deadline, check=True),
            input_signature=compute_signature, reduce_retracing=True)
        self._between: Callable[[], None] | None = None  # while compute(between=...) runs
        self._arrived: np.ndarray | None = None  # parameters between() set, not yet assigned
        flat = tf.TensorSpec((None,), tf.float32)
        self._apply = tf.function(self._apply_graph, input_signature=[flat, tf.TensorSpec((), tf.float32)])
        self._set = tf.function(self._set_graph, input_signature=[flat])
        self._get = tf.function(self._get_graph, input_signature=[])
        self._evaluate = tf.function(self._evaluate_graph, input_signature=[spec, labels])

    def trace(self) -> None:
        """Build the master's graphs now, so that tracing does not land in the first step's time."""
        for function in (self._apply, self._set, self._get, self._evaluate):
            function.get_concrete_function()

    # --- the Engine interface -------------------------------------------------------------------------------
    def get_params(self) -> np.ndarray:
        return self._get().numpy()

    def set_params(self, flat: np.ndarray) -> None:
        if self._between is not None:  # called by between() inside the compiled loop: the graph assigns them
            self._arrived = np.array(flat[: self.param_count], dtype=np.float32)
            return
        self._set(tf.constant(flat[: self.param_count]))

    def compute(self, x: np.ndarray, y: np.ndarray, micro_batches: int, deadline: float,
                between: Callable[[], None] | None = None) -> tuple[np.ndarray, int, int]:
        arguments = (tf.constant(x), tf.constant(y), tf.constant(micro_batches, tf.int32),
                     tf.constant(deadline if math.isfinite(deadline) else 1e300, tf.float64))
        if between is None or micro_batches <= 1:
            flat, count, done = self._compute(*arguments)
            return flat.numpy(), int(count), int(done)
        self._between, self._arrived = between, None
        try:
            flat, count, done = self._compute_checking(*arguments)
        finally:
            self._between, self._arrived = None, None
        return flat.numpy(), int(count), int(done)

    def _take_arrived(self) -> tuple[np.ndarray, np.ndarray]:
        """The tf.numpy_function of the checking loop: run between(); return whether it set parameters, and them."""
        self._arrived = None
        if self._between is not None:
            self._between()
        arrived, self._arrived = self._arrived, None
        if arrived is None:
            return np.array(False), np.zeros(0, dtype=np.float32)
        return np.array(True), arrived

    def apply(self, reduced: np.ndarray, learning_rate: float) -> float:
        return float(self._apply(tf.constant(reduced), tf.constant(learning_rate, tf.float32)))

    def evaluate(self, x: np.ndarray, y: np.ndarray) -> tuple[float, float]:
        loss_sum = correct = 0.0
        for start in range(0, len(x), EVAL_CHUNK):
            batch_loss, batch_correct = self._evaluate(tf.constant(x[start:start + EVAL_CHUNK]),
                                                       tf.constant(y[start:start + EVAL_CHUNK]))
            loss_sum += float(batch_loss)
            correct += float(batch_correct)
        return loss_sum / len(x), correct / len(x)

    # --- checkpoints ------------------------------------------------------------------------------------------
    def state(self) -> dict[str, Any]:
        """Everything needed to continue exactly, as numpy copies: every variable of the model (weights, batch-norm
        statistics and the dropout layers' seed-generator states) and of the optimizer (its step count and slots:
        momentum, RMSprop's and Adam's moments), in their tracking order."""
        return {"model": [np.array(v.numpy()) for v in self.model.variables],
                "optimizer": [np.array(v.numpy()) for v in self.optimizer.variables]}

    def load_state(self, state: dict[str, Any]) -> None:
        """Restore what `state()` returned; a checkpoint of another model or optimizer is a ValueError naming the
        first variable that does not fit (nothing is assigned then)."""
        pairs = []
        for part, variables in (("model", self.model.variables), ("optimizer", self.optimizer.variables)):
            values = list(state[part])
            if len(values) != len(variables):
                raise ValueError(f"the checkpoint's {part} has {len(values)} variables, this run's {len(variables)}")
            for variable, value in zip(variables, values, strict=True):
                value = np.asarray(value)
                if tuple(value.shape) != tuple(variable.shape):
                    raise ValueError(f"{part} variable {variable.path}: the checkpoint's shape {tuple(value.shape)}, "
                                     f"this run's {tuple(variable.shape)}")
                pairs.append((variable, value))
        for variable, value in pairs:
            variable.assign(value.astype(variable.dtype, copy=False))

    # --- graphs ---------------------------------------------------------------------------------------------
    def _loss_sum(self, x: tf.Tensor, y: tf.Tensor, training: bool) -> tuple[tf.Tensor, tf.Tensor]:
        logits = self.model(x, training=training)
        losses = tf.nn.sparse_softmax_cross_entropy_with_logits(labels=y, logits=logits)
        return tf.reduce_sum(losses), logits

    def _compute_graph(self, x, y, micro_batches, deadline, check=False):
        total = tf.shape(x)[0]
        loop_start = tf.timestamp()

        def gradients(i):
            start = (i * total) // micro_batches
            end = ((i + 1) * total) // micro_batches
            with tf.GradientTape() as tape:
                loss, _ = self._loss_sum(x[start:end], y[start:end], training=True)
            return tape.gradient(loss, self.trainable), loss, end - start

        # The first micro-batch always runs, on its own: its clock reading starts the pace estimate.
        first, first_loss, first_count = gradients(tf.constant(0))
        with tf.control_dependencies([*first, first_loss]):
            first_end = tf.timestamp()

        def keep_going(i, count, loss_sum, known_end, known_done, last_end, *sums):
            # Micro-batch i may start while micro-batch i-1 still runs (two iterations in flight), so the newest
            # clock reading here is the end of micro-batch i-2 (`known_end`, `known_done` finished by then).
            # Start micro-batch i only if, at this round's pace, it ends before the deadline: the ones in flight
            # and it still have to run after `known_end`.
            if check:  # one at a time: micro-batch i-1 has finished, its clock reading is the newest
                known_end, known_done = last_end, i
            pace = (known_end - loop_start) / tf.cast(known_done, tf.float64)
            ahead = tf.cast(i + 1 - known_done, tf.float64)
            return tf.logical_and(i < micro_batches, known_end + ahead * pace <= deadline)

        def take_newer_model(after):
            with tf.control_dependencies([after]):
                arrived, flat = tf.numpy_function(self._take_arrived, [], [tf.bool, tf.float32], stateful=True)
            return tf.cond(tf.reshape(arrived, []), lambda: self._assign_flat(flat), lambda: tf.constant(0))

        def micro_batch(i, count, loss_sum, known_end, known_done, last_end, *sums):
            if check:
                with tf.control_dependencies([take_newer_model(last_end)]):
                    grads, loss, examples = gradients(i)
            else:
                grads, loss, examples = gradients(i)
            sums = [s + g for s, g in zip(sums, grads, strict=True)]
            with tf.control_dependencies([*sums, loss]):
                now = tf.timestamp()
            # hand on the previous iteration's clock reading, which exists already: the condition for the
            # next micro-batch need not wait for this one's gradients
            return (i + 1, count + examples, loss_sum + loss, last_end, i, now, *sums)

        start_state = (tf.constant(1), first_count, first_loss, first_end, tf.constant(1), first_end, *first)
        done, count, loss_sum, _, _, _, *sums = tf.while_loop(
            keep_going, micro_batch, start_state, parallel_iterations=1 if check else 2)
        n = tf.cast(count, tf.float32)
        parts = [tf.reshape(s, [-1]) for s in sums]
        parts += [tf.reshape(tf.convert_to_tensor(v), [-1]) * n for v in self.statistics]
        parts += [tf.reshape(n, [1]), tf.reshape(loss_sum, [1])]
        return tf.concat(parts, 0), count, done

    def _apply_graph(self, reduced, learning_rate):
        n = reduced[-2]
        grads, offset = [], 0
        for variable in self.trainable:
            size = int(np.prod(variable.shape))
            grad = tf.reshape(reduced[offset:offset + size], variable.shape) / n
            grads.append(grad + self.weight_decay * tf.convert_to_tensor(variable))  # decay once per update
            offset += size
        self.optimizer.learning_rate.assign(learning_rate)
        self.optimizer.apply_gradients(zip(grads, self.trainable, strict=True))
        for variable in self.statistics:
            size = int(np.prod(variable.shape))
            variable.assign(tf.reshape(reduced[offset:offset + size], variable.shape) / n)
            offset += size
        return reduced[-1] / n

    def _get_graph(self):
        return tf.concat([tf.reshape(tf.convert_to_tensor(v), [-1]) for v in self.trainable + self.statistics], 0)

    def _set_graph(self, flat):
        return self._assign_flat(flat)

    def _assign_flat(self, flat):
        offset = 0
        for variable in self.trainable + self.statistics:
            size = int(np.prod(variable.shape))
            variable.assign(tf.reshape(flat[offset:offset + size], variable.shape))
            offset += size
        return tf.constant(0)

    def _evaluate_graph(self, x, y):
        loss, logits = self._loss_sum(x, y, training=False)
        correct = tf.reduce_sum(tf.cast(tf.equal(tf.argmax(logits, axis=1), y), tf.float32))
        return loss, correct


def create_engine(spec) -> TensorFlowEngine:
    """The registry's constructor (anytimectl.backends.create_engine)."""
    if spec.momentum is not None:
        raise UsageError("the TensorFlow backend takes --optimizer momentum (0.9), not an explicit --momentum; "
                         "use --backend torch for other momentum values")
    return TensorFlowEngine(spec.model, spec.input_shape, spec.num_classes, spec.optimizer, spec.learning_rate,
                            spec.weight_decay)


def framework_versions() -> dict[str, str]:
    return {"tensorflow": tf.__version__}
