"""The networks in PyTorch, every one returning logits for NCHW images (or flat features).

- The TensorFlow backend's, same architectures and trainable-parameter counts (mnist 3,274,634; cifar10 4,607,178;
  tested) and Keras' initialisers (Glorot-uniform weights, zero biases; cifar10's convolutions truncated normal
  0.08), so one set of hyperparameters behaves alike on both backends: digits-cnn, mlp, mnist, cifar10 (the
  original "conv10"), toy-conv, toy-fc.
- The compression study's (sands-lab/layer-wise-aaai20, CIFAR10/dawn.py and alexnet.py): resnet9 exactly as
  cifar10-fast, alexnet-small (dawn.py's conv-BN "Alexnet") and alexnet-fc (alexnet.py's three-dense-layer
  "Alexnet1").
- The gossip study's (sidps/dist_training): preact-resnet18 (kuangliu's PreActResNet18), mnist-mlp
  (784-1024-1024-1024-10, dropout 0.2 on the input and 0.5 after each hidden layer, Kaiming-normal weights),
  iris-mlp (4-10-3). The originals end in log_softmax + NLL; these return logits for cross-entropy, the same loss.
- Any torchvision classification model by name (random init, never a download), its first convolution taking the
  data's channels (1 or 3) and its classifier the data's classes.
- A user's own: `path/to/file.py:build`, see anytimectl.backends.user_model.

Pooling to a fixed size (4x4 in the originals at 32x32 inputs) is written as adaptive pooling to 1x1, which is
the same layer at 32x32 and lets the networks take other image sizes. Every model is checked with one example of
the data's shape when it is built, so a model that cannot take the data is a one-line error at start-up.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable

import torch
from torch import nn

from anytimectl.backends.user_model import is_user_model, load_user_builder
from anytimectl.runtime.errors import UsageError


def build_model(name: str, input_shape: tuple[int, ...], num_classes: int) -> nn.Module:
    """The network `name` for examples of `input_shape` (HWC for images, as the data layer gives them) and
    `num_classes` classes; it takes NCHW images (see `to_model_input`) and returns logits."""
    shape = tuple(int(v) for v in input_shape)
    if is_user_model(name):
        model = load_user_builder(name)(shape, num_classes)
        if not isinstance(model, nn.Module):
            raise UsageError(f"--model {name}: the function returned {type(model).__name__}, not a torch nn.Module")
    elif name in BUILDERS:
        try:
            model = BUILDERS[name](shape, num_classes)
        except SHAPE_ERRORS as error:
            raise UsageError(f"--model {name} does not fit inputs of shape {shape}: {_first_line(error)}; pick the "
                             "model made for this dataset") from None
    else:
        model = _torchvision(name, shape, num_classes)
    _check_fit(model, name, shape, num_classes, SHAPE_ERRORS if name in BUILDERS else (Exception,))
    return model


def to_model_input(x: torch.Tensor) -> torch.Tensor:
    """Images arrive NHWC (the data layer is framework-neutral); torch's convolutions take NCHW.

    The permuted view is not copied: it is NCHW in torch's channels-last memory format, which the CPU convolutions
    take directly (digits-cnn, one thread, here: as fast as a contiguous NCHW copy at batch 128, ~4% faster at 512)."""
    if x.dim() == 4:
        return x.permute(0, 3, 1, 2)
    return x


#: What torch's layers raise for an input shape they cannot take (or our builders, for a shape they refuse).
SHAPE_ERRORS: tuple[type[BaseException], ...] = (RuntimeError, ValueError, UsageError)


def _first_line(error: BaseException) -> str:
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__


def _check_fit(model: nn.Module, name: str, shape: tuple[int, ...], classes: int,
               misfits: tuple[type[BaseException], ...]) -> None:
    """One example through the network now, so a model that cannot take this data fails in one line at start-up.

    `misfits`: the errors that mean "this model does not take this data". For anytimectl's own models only what a
    layer raises for a shape it cannot take, so that a bug in one of them keeps its traceback; for a user's or a
    torchvision model any error (its code is not ours to debug, its first line says what went wrong)."""
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            out = model(to_model_input(torch.zeros((1, *shape))))
    except misfits as error:
        raise UsageError(f"--model {name} does not fit inputs of shape {shape}: {_first_line(error)}; pick the "
                         "model made for this dataset") from None
    finally:
        model.train(was_training)
    if not isinstance(out, torch.Tensor) or tuple(out.shape) != (1, classes):
        got = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
        raise UsageError(f"--model {name}: one example of shape {shape} gave {got}, not logits of shape (1, {classes}) "
                         f"for the data's {classes} classes")


def _channels(shape: tuple[int, ...]) -> int:
    if len(shape) != 3:
        raise UsageError("it needs images (height, width, channels)")
    return shape[2]


def _flat_size(features: nn.Module, shape: tuple[int, ...]) -> int:
    with torch.no_grad():
        return int(features(to_model_input(torch.zeros((1, *shape)))).flatten(1).shape[1])


def _keras_init(model: nn.Module, skip: tuple[type[nn.Module], ...] = ()) -> nn.Module:
    """Keras' defaults: Glorot-uniform kernels and zero biases for dense and convolution layers."""
    for module in model.modules():
        if isinstance(module, nn.Conv2d | nn.Linear) and not isinstance(module, skip):
            nn.init.xavier_uniform_(module.weight)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
    return model


class _Reshape(nn.Module):
    def __init__(self, *shape: int):
        super().__init__()
        self.shape = shape

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.reshape(x.shape[0], *self.shape)


class _Scale(nn.Module):
    """cifar10-fast's `Mul`: the classifier's logits times a constant."""

    def __init__(self, factor: float):
        super().__init__()
        self.factor = factor

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.factor

    def extra_repr(self) -> str:
        return f"factor={self.factor}"


# --- the TensorFlow backend's networks ------------------------------------------------------------------------------
def _digits_cnn(shape: tuple[int, ...], classes: int) -> nn.Module:
    """The built-in demo's network (see the TensorFlow backend's docstring for why it is this heavy)."""
    features = nn.Sequential(
        nn.Conv2d(_channels(shape), 64, 3, padding=1), nn.ReLU(), nn.Conv2d(64, 128, 3, padding=1), nn.ReLU(),
        nn.MaxPool2d(2), nn.Conv2d(128, 128, 3, padding=1), nn.ReLU(), nn.Flatten())
    return _keras_init(nn.Sequential(
        features, nn.Linear(_flat_size(features, shape), 256), nn.ReLU(), nn.Linear(256, classes)))


def _mlp(shape: tuple[int, ...], classes: int) -> nn.Module:
    return _keras_init(nn.Sequential(nn.Flatten(), nn.Linear(math.prod(shape), 32), nn.ReLU(), nn.Linear(32, classes)))


def _mnist(shape: tuple[int, ...], classes: int) -> nn.Module:
    """The original's mnist / fashion-mnist network: conv5x5x32, pool, conv5x5x64, pool, dense 1024, dense."""
    features = nn.Sequential(
        nn.Conv2d(_channels(shape), 32, 5, padding=2), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(32, 64, 5, padding=2), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten())
    return _keras_init(nn.Sequential(
        features, nn.Linear(_flat_size(features, shape), 1024), nn.ReLU(), nn.Linear(1024, classes)))


def _keras_batch_norm(kind: type[nn.BatchNorm1d | nn.BatchNorm2d], width: int) -> nn.Module:
    """Keras' defaults (momentum 0.99, epsilon 1e-3), so both backends' models behave alike."""
    return kind(width, momentum=0.01, eps=1e-3)


def _cifar10(shape: tuple[int, ...], classes: int) -> nn.Module:
    """The original "conv10": bias-free convolutions (truncated normal, std 0.08), each followed by ReLU, max-pool
    and batch norm; a head of three dense layers, each with ReLU, dropout 0.3 (keep 0.7) and batch norm."""
    c = _channels(shape)
    layers: list[nn.Module] = []
    for filters, kernel in ((64, 3), (128, 3), (256, 5), (512, 5)):
        conv = nn.Conv2d(c, filters, kernel, padding=kernel // 2, bias=False)
        nn.init.trunc_normal_(conv.weight, std=0.08, a=-0.16, b=0.16)  # Keras' TruncatedNormal cuts at 2 std
        layers += [conv, nn.ReLU(), nn.MaxPool2d(2), _keras_batch_norm(nn.BatchNorm2d, filters)]
        c = filters
    features = nn.Sequential(*layers, nn.Flatten())
    width = _flat_size(features, shape)
    head: list[nn.Module] = []
    for units in (128, 256, 512):
        head += [nn.Linear(width, units), nn.ReLU(), nn.Dropout(0.3), _keras_batch_norm(nn.BatchNorm1d, units)]
        width = units
    return _keras_init(nn.Sequential(features, *head, nn.Linear(width, classes)), skip=(nn.Conv2d,))


def _toy_conv(shape: tuple[int, ...], classes: int) -> nn.Module:
    if math.prod(shape) != 100:
        raise UsageError("toy-conv takes 100 features (reshaped to 10x10)")
    features = nn.Sequential(
        nn.Flatten(), _Reshape(1, 10, 10), nn.Conv2d(1, 32, 5, padding=2), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(32, 64, 5, padding=2), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten())
    return _keras_init(nn.Sequential(features, nn.Linear(_flat_size(features, shape), classes)))


def _toy_fc(shape: tuple[int, ...], classes: int) -> nn.Module:
    return _keras_init(nn.Sequential(
        nn.Flatten(), nn.Linear(math.prod(shape), 500), nn.ReLU(), nn.Linear(500, 1000), nn.ReLU(),
        nn.Linear(1000, 500), nn.ReLU(), nn.Linear(500, classes)))


# --- the compression study's ---------------------------------------------------------------------------------------
def _conv_bn(c_in: int, c_out: int, stride: int = 1) -> nn.Module:
    """cifar10-fast's block: 3x3 convolution without bias, batch norm (torch's defaults, weight 1), ReLU."""
    return nn.Sequential(nn.Conv2d(c_in, c_out, 3, stride=stride, padding=1, bias=False), nn.BatchNorm2d(c_out),
                         nn.ReLU(inplace=True))


class _Residual(nn.Module):
    """cifar10-fast's residual: x + conv_bn(conv_bn(x))."""

    def __init__(self, width: int):
        super().__init__()
        self.res1 = _conv_bn(width, width)
        self.res2 = _conv_bn(width, width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.res2(self.res1(x))


def _resnet9(shape: tuple[int, ...], classes: int) -> nn.Module:
    """cifar10-fast's ResNet9 as the compression study ran it (6,573,120 parameters at 10 classes): prep conv_bn 64;
    layer1 conv_bn 128, max-pool 2, residual; layer2 conv_bn 256, max-pool 2; layer3 conv_bn 512, max-pool 2,
    residual; max-pool to 1x1; linear 512 -> classes without bias; logits x 0.125."""
    return nn.Sequential(
        _conv_bn(_channels(shape), 64),
        nn.Sequential(_conv_bn(64, 128), nn.MaxPool2d(2), _Residual(128)),
        nn.Sequential(_conv_bn(128, 256), nn.MaxPool2d(2)),
        nn.Sequential(_conv_bn(256, 512), nn.MaxPool2d(2), _Residual(512)),
        nn.AdaptiveMaxPool2d(1), nn.Flatten(), nn.Linear(512, classes, bias=False), _Scale(0.125))


def _alexnet_small(shape: tuple[int, ...], classes: int) -> nn.Module:
    """dawn.py's `alexnet()` ("-n Alexnet"), AlexNet's five convolutions in cifar10-fast's style, 2,255,296
    parameters at 10 classes: prep conv_bn 64 with stride 2 and max-pool 2; conv_bn 192 and max-pool 2; conv_bn 384;
    conv_bn 256; conv_bn 256 and max-pool 2; max-pool to 1x1; linear 256 -> classes without bias; logits x 0.125
    (the same summed-loss recipe as resnet9)."""
    return nn.Sequential(
        nn.Sequential(_conv_bn(_channels(shape), 64, stride=2), nn.MaxPool2d(2)),
        nn.Sequential(_conv_bn(64, 192), nn.MaxPool2d(2)),
        _conv_bn(192, 384), _conv_bn(384, 256),
        nn.Sequential(_conv_bn(256, 256), nn.MaxPool2d(2)),
        nn.AdaptiveMaxPool2d(1), nn.Flatten(), nn.Linear(256, classes, bias=False), _Scale(0.125))


def _alexnet_fc(shape: tuple[int, ...], classes: int) -> nn.Module:
    """alexnet.py's `AlexNet` ("-n Alexnet1", "modified to fit dataset size"): convolutions 64 (3x3, stride 2), 192,
    384, 256, 256 with ReLU, max-pool 2 after the first, second and fifth; dropout 0.5, dense 4096, ReLU, dropout 0.5,
    dense 4096, ReLU, dense classes (23,272,266 parameters at 32x32x3 and 10 classes)."""
    features = nn.Sequential(
        nn.Conv2d(_channels(shape), 64, 3, stride=2, padding=1), nn.ReLU(inplace=True), nn.MaxPool2d(2),
        nn.Conv2d(64, 192, 3, padding=1), nn.ReLU(inplace=True), nn.MaxPool2d(2),
        nn.Conv2d(192, 384, 3, padding=1), nn.ReLU(inplace=True),
        nn.Conv2d(384, 256, 3, padding=1), nn.ReLU(inplace=True),
        nn.Conv2d(256, 256, 3, padding=1), nn.ReLU(inplace=True), nn.MaxPool2d(2), nn.Flatten())
    return nn.Sequential(
        features, nn.Dropout(0.5), nn.Linear(_flat_size(features, shape), 4096), nn.ReLU(inplace=True),
        nn.Dropout(0.5), nn.Linear(4096, 4096), nn.ReLU(inplace=True), nn.Linear(4096, classes))


# --- the gossip study's --------------------------------------------------------------------------------------------
class _PreActBlock(nn.Module):
    """kuangliu's PreActBlock: BN-ReLU before each convolution, the shortcut taken after the first BN-ReLU."""

    def __init__(self, c_in: int, c_out: int, stride: int):
        super().__init__()
        self.bn1 = nn.BatchNorm2d(c_in)
        self.conv1 = nn.Conv2d(c_in, c_out, 3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(c_out)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, stride=1, padding=1, bias=False)
        self.shortcut = None
        if stride != 1 or c_in != c_out:
            self.shortcut = nn.Sequential(nn.Conv2d(c_in, c_out, 1, stride=stride, bias=False))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = torch.relu(self.bn1(x))
        shortcut = self.shortcut(out) if self.shortcut is not None else x
        out = self.conv1(out)
        out = self.conv2(torch.relu(self.bn2(out)))
        return out + shortcut


def _preact_resnet18(shape: tuple[int, ...], classes: int) -> nn.Module:
    """kuangliu's PreActResNet18 (11,171,146 parameters at 10 classes): conv 64, four stages of two PreActBlocks
    (64, 128/2, 256/2, 512/2), average pool, linear."""
    layers: list[nn.Module] = [nn.Conv2d(_channels(shape), 64, 3, padding=1, bias=False)]
    c_in = 64
    for c_out, stride in ((64, 1), (128, 2), (256, 2), (512, 2)):
        layers.append(nn.Sequential(_PreActBlock(c_in, c_out, stride), _PreActBlock(c_out, c_out, 1)))
        c_in = c_out
    return nn.Sequential(*layers, nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(512, classes))


def _mnist_mlp(shape: tuple[int, ...], classes: int) -> nn.Module:
    layers: list[nn.Module] = [nn.Flatten(), nn.Dropout(0.2)]
    width = math.prod(shape)
    for _ in range(3):
        linear = nn.Linear(width, 1024)
        layers += [linear, nn.ReLU(), nn.Dropout(0.5)]
        width = 1024
    model = nn.Sequential(*layers, nn.Linear(width, classes))
    for module in model.modules():  # the original: kaiming_normal on every weight, torch's default biases
        if isinstance(module, nn.Linear):
            nn.init.kaiming_normal_(module.weight)
    return model


def _iris_mlp(shape: tuple[int, ...], classes: int) -> nn.Module:
    return nn.Sequential(nn.Flatten(), nn.Linear(math.prod(shape), 10), nn.ReLU(), nn.Linear(10, classes))


#: anytimectl's own networks by name (backends/torch/__init__.py lists the same names without importing torch)
BUILDERS: dict[str, Callable[[tuple[int, ...], int], nn.Module]] = {
    "digits-cnn": _digits_cnn, "mlp": _mlp, "mnist": _mnist, "cifar10": _cifar10, "toy-conv": _toy_conv,
    "toy-fc": _toy_fc, "resnet9": _resnet9, "alexnet-small": _alexnet_small, "alexnet-fc": _alexnet_fc,
    "preact-resnet18": _preact_resnet18, "mnist-mlp": _mnist_mlp, "iris-mlp": _iris_mlp,
}


# --- torchvision ----------------------------------------------------------------------------------------------------
@functools.cache
def torchvision_names() -> tuple[str, ...]:
    """Every torchvision classification builder (torchvision.models.list_models), for --model."""
    import torchvision

    return tuple(sorted(torchvision.models.list_models(module=torchvision.models)))


#: builders whose training-mode output is not plain logits unless told so
_TORCHVISION_OPTIONS = {"googlenet": {"aux_logits": False, "init_weights": True},
                        "inception_v3": {"aux_logits": False, "init_weights": True}}


def _torchvision(name: str, shape: tuple[int, ...], classes: int) -> nn.Module:
    import torchvision

    if name not in torchvision_names():
        raise UsageError(f"--model {name!r} is neither one of anytimectl's torch models ({', '.join(BUILDERS)}) "
                         "nor a torchvision classification model (torchvision.models.list_models())")
    try:
        channels = _channels(shape)
        model = torchvision.models.get_model(name, weights=None, num_classes=classes,
                                             **_TORCHVISION_OPTIONS.get(name, {}))
    except Exception as error:  # noqa: BLE001 - torchvision's own checks, in one line
        raise UsageError(f"--model {name} does not fit inputs of shape {shape}: {_first_line(error)}") from None
    if channels != 3:
        _replace_first_conv(model, name, channels)
    return model


def _replace_first_conv(model: nn.Module, name: str, channels: int) -> None:
    """The same first convolution, taking `channels` input planes (grayscale MNIST into ResNet18), initialised as
    torchvision initialises its ResNets' convolutions."""
    for parent in model.modules():
        for child_name, child in parent.named_children():
            if isinstance(child, nn.Conv2d):
                conv = nn.Conv2d(channels, child.out_channels, child.kernel_size, stride=child.stride,
                                 padding=child.padding, dilation=child.dilation, bias=child.bias is not None)
                nn.init.kaiming_normal_(conv.weight, mode="fan_out", nonlinearity="relu")
                if conv.bias is not None:
                    nn.init.zeros_(conv.bias)
                setattr(parent, child_name, conv)
                return
    raise UsageError(f"--model {name}: found no convolution to adapt to the data's {channels} channels")
