"""The networks, in Keras: the original system's mnist and cifar10 models, its toy models, and small defaults.

Parameter counts of the originals (trainable values) are part of the contract and tested:
mnist 3,274,634; cifar10 4,607,178. Every model returns logits. A user's own: `path/to/file.py:build` returning a
keras.Model (backends/user_model.py).
"""

from __future__ import annotations

from anytimectl.backends.tensorflow import MODELS
from anytimectl.backends.tensorflow.quiet_import import keras
from anytimectl.backends.user_model import is_user_model, load_user_builder
from anytimectl.runtime.errors import UsageError

layers = keras.layers


def build_model(name: str, input_shape: tuple[int, ...], num_classes: int) -> keras.Model:
    builders = {
        "digits-cnn": _digits_cnn, "mlp": _mlp, "mnist": _mnist, "cifar10": _cifar10,
        "toy-conv": _toy_conv, "toy-fc": _toy_fc,
    }
    if is_user_model(name):
        model = load_user_builder(name)(tuple(input_shape), num_classes)
        if not isinstance(model, keras.Model):
            raise UsageError(f"--model {name}: the function returned {type(model).__name__}, not a Keras model")
        _check_fit(model, name, tuple(input_shape), num_classes)
        return model
    if name not in builders:
        raise UsageError(f"unknown model '{name}' for --model; choose one of {', '.join(MODELS)}")
    try:
        return builders[name](tuple(input_shape), num_classes)
    except ValueError as error:
        raise UsageError(f"--model {name} does not fit inputs of shape {tuple(input_shape)}: "
                         f"{str(error).splitlines()[0]}; pick the model made for this dataset") from None


def _check_fit(model: keras.Model, name: str, shape: tuple[int, ...], classes: int) -> None:
    """One zero example through the user's model: logits of shape (1, classes), or a one-line UsageError (as the
    torch backend checks), instead of a shape error on every rank at the first step."""
    import numpy as np

    try:
        out = model(np.zeros((1, *shape), dtype=np.float32), training=False)
    except Exception as error:  # noqa: BLE001 - any framework error here means the model does not fit
        first = (str(error).strip().splitlines() or [type(error).__name__])[0]
        raise UsageError(f"--model {name} does not fit inputs of shape {shape}: {first}") from None
    got = tuple(getattr(out, "shape", ()) or ())
    if got != (1, classes):
        raise UsageError(f"--model {name}: one example of shape {shape} gave {got or type(out).__name__}, not logits "
                         f"of shape (1, {classes}) for the data's {classes} classes")


def _digits_cnn(shape: tuple[int, ...], classes: int) -> keras.Model:
    """The built-in demo's network. Heavier than 8x8 digits need (about 90 MFLOP per example, 0.45 ms on one
    core here) on purpose: AMB only pays off when compute time per step is a few times the straggler delays,
    and this puts a batch of 128 at that point for `--induce niagara:0.03` on a laptop."""
    return keras.Sequential([
        keras.Input(shape),
        layers.Conv2D(64, 3, padding="same", activation="relu"),
        layers.Conv2D(128, 3, padding="same", activation="relu"),
        layers.MaxPooling2D(2),
        layers.Conv2D(128, 3, padding="same", activation="relu"),
        layers.Flatten(),
        layers.Dense(256, activation="relu"),
        layers.Dense(classes),
    ], name="digits-cnn")


def _mlp(shape: tuple[int, ...], classes: int) -> keras.Model:
    return keras.Sequential([
        keras.Input(shape), layers.Flatten(), layers.Dense(32, activation="relu"), layers.Dense(classes),
    ], name="mlp")


def _mnist(shape: tuple[int, ...], classes: int) -> keras.Model:
    return keras.Sequential([
        keras.Input(shape),
        layers.Conv2D(32, 5, padding="same", activation="relu"),
        layers.MaxPooling2D(2),
        layers.Conv2D(64, 5, padding="same", activation="relu"),
        layers.MaxPooling2D(2),
        layers.Flatten(),
        layers.Dense(1024, activation="relu"),
        layers.Dense(classes),
    ], name="mnist")


def _cifar10(shape: tuple[int, ...], classes: int) -> keras.Model:
    """The original "conv10": bias-free convs, each followed by ReLU, max-pool and batch norm."""
    init = keras.initializers.TruncatedNormal(stddev=0.08)
    stack: list[layers.Layer] = [keras.Input(shape)]
    for filters, kernel in ((64, 3), (128, 3), (256, 5), (512, 5)):
        stack += [
            layers.Conv2D(filters, kernel, padding="same", use_bias=False, kernel_initializer=init),
            layers.ReLU(), layers.MaxPooling2D(2), layers.BatchNormalization(),
        ]
    stack.append(layers.Flatten())
    for units in (128, 256, 512):
        stack += [layers.Dense(units, activation="relu"), layers.Dropout(0.3), layers.BatchNormalization()]
    stack.append(layers.Dense(classes))
    return keras.Sequential(stack, name="cifar10")


def _toy_conv(shape: tuple[int, ...], classes: int) -> keras.Model:
    return keras.Sequential([
        keras.Input(shape),
        layers.Reshape((10, 10, 1)),
        layers.Conv2D(32, 5, padding="same", activation="relu"),
        layers.MaxPooling2D(2),
        layers.Conv2D(64, 5, padding="same", activation="relu"),
        layers.MaxPooling2D(2),
        layers.Flatten(),
        layers.Dense(classes),
    ], name="toy-conv")


def _toy_fc(shape: tuple[int, ...], classes: int) -> keras.Model:
    return keras.Sequential([
        keras.Input(shape), layers.Flatten(),
        layers.Dense(500, activation="relu"), layers.Dense(1000, activation="relu"),
        layers.Dense(500, activation="relu"), layers.Dense(classes),
    ], name="toy-fc")
