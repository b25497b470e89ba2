"""The networks in PyTorch, every one returning logits for NCHW images (or flat features).

- The TensorFlow backend's (same architectures and trainable-parameter counts: mnist 3,274,634; cifar10
  4,607,178, tested): digits-cnn, mlp, mnist, cifar10 (the original "conv10"), toy-conv, toy-fc.
- The compression study's: resnet9 exactly as cifar10-fast (prep 64; layer 128 + residual; layer 256; layer 512 +
  residual; global max pool; linear without bias scaled by 0.125; conv-BN-ReLU blocks), and alexnet-small.
- The gossip study's: preact-resnet18 (kuangliu's PreActResNet18), mnist-mlp (784-1024-1024-1024-10 with dropout
  0.2 on the input and 0.5 on the hidden layers, Kaiming init), iris-mlp (4-10-3).
- Any torchvision classification model by name (random init, no download), its first convolution taking the
  data's channels (1 or 3) and its classifier the data's classes.
- A user's own: `path/to/file.py:build` returning an nn.Module.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from anytimectl.backends.user_model import is_user_model, load_user_builder
from anytimectl.errors import UsageError


def build_model(name: str, input_shape: tuple[int, ...], num_classes: int) -> nn.Module:
    shape = tuple(int(v) for v in input_shape)
    if is_user_model(name):
        model = load_user_builder(name)(shape, num_classes)
        if not isinstance(model, nn.Module):
            raise UsageError(f"--model {name}: the function returned {type(model).__name__}, not a torch nn.Module")
    elif name in _BUILDERS:
        try:
            model = _BUILDERS[name](shape, num_classes)
        except UsageError as error:
            raise UsageError(f"--model {name} does not fit inputs of shape {shape}: {error}; pick the model made "
                             "for this dataset") from None
    else:
        model = _torchvision(name, shape, num_classes)
    _check_fit(model, name, shape)
    return model


def _check_fit(model: nn.Module, name: str, shape: tuple[int, ...]) -> None:
    """One example through the network now, so a model that cannot take this data fails in one line at start-up."""
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            model(to_model_input(torch.zeros((1, *shape))))
    except Exception as error:  # noqa: BLE001 - any framework error here means the model does not fit
        message = str(error).splitlines()[0] if str(error) else type(error).__name__
        raise UsageError(f"--model {name} does not fit inputs of shape {shape}: {message}; pick the model made for "
                         "this dataset") from None
    finally:
        model.train(was_training)


def to_model_input(x: torch.Tensor) -> torch.Tensor:
    """Images arrive NHWC (the data layer is framework-neutral); torch's convolutions want NCHW."""
    if x.dim() == 4:
        return x.permute(0, 3, 1, 2)
    return x


def _channels(shape: tuple[int, ...]) -> int:
    if len(shape) != 3:
        raise UsageError("it needs images (height, width, channels)")
    return shape[2]


def _flat_size(features: nn.Module, shape: tuple[int, ...]) -> int:
    with torch.no_grad():
        return int(features(to_model_input(torch.zeros((1, *shape)))).flatten(1).shape[1])


# --- the TensorFlow backend's networks ------------------------------------------------------------------------------
def _digits_cnn(shape: tuple[int, ...], classes: int) -> nn.Module:
    c = _channels(shape)
    features = nn.Sequential(
        nn.Conv2d(c, 64, 3, padding=1), nn.ReLU(), nn.Conv2d(64, 128, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(128, 128, 3, padding=1), nn.ReLU(), nn.Flatten())
    return nn.Sequential(features, nn.Linear(_flat_size(features, shape), 256), nn.ReLU(), nn.Linear(256, classes))


def _mlp(shape: tuple[int, ...], classes: int) -> nn.Module:
    return nn.Sequential(nn.Flatten(), nn.Linear(math.prod(shape), 32), nn.ReLU(), nn.Linear(32, classes))


def _mnist(shape: tuple[int, ...], classes: int) -> nn.Module:
    c = _channels(shape)
    features = nn.Sequential(
        nn.Conv2d(c, 32, 5, padding=2), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(32, 64, 5, padding=2), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten())
    return nn.Sequential(features, nn.Linear(_flat_size(features, shape), 1024), nn.ReLU(), nn.Linear(1024, classes))


def _keras_batch_norm(kind: type[nn.Module], width: int) -> nn.Module:
    """Keras' defaults (momentum 0.99, epsilon 1e-3), so both backends' models behave alike."""
    return kind(width, momentum=0.01, eps=1e-3)


def _cifar10(shape: tuple[int, ...], classes: int) -> nn.Module:
    """The original "conv10": bias-free convolutions (truncated normal, std 0.08), each followed by ReLU, max-pool
    and batch norm; a head of three dense layers with dropout 0.3 and batch norm."""
    c = _channels(shape)
    layers: list[nn.Module] = []
    for filters, kernel in ((64, 3), (128, 3), (256, 5), (512, 5)):
        conv = nn.Conv2d(c, filters, kernel, padding=kernel // 2, bias=False)
        nn.init.trunc_normal_(conv.weight, std=0.08, a=-0.16, b=0.16)
        layers += [conv, nn.ReLU(), nn.MaxPool2d(2), _keras_batch_norm(nn.BatchNorm2d, filters)]
        c = filters
    features = nn.Sequential(*layers, nn.Flatten())
    width = _flat_size(features, shape)
    head: list[nn.Module] = []
    for units in (128, 256, 512):
        head += [nn.Linear(width, units), nn.ReLU(), nn.Dropout(0.3), _keras_batch_norm(nn.BatchNorm1d, units)]
        width = units
    return nn.Sequential(features, *head, nn.Linear(width, classes))


class _Reshape(nn.Module):
    def __init__(self, *shape: int):
        super().__init__()
        self.shape = shape

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.reshape(x.shape[0], *self.shape)


def _toy_conv(shape: tuple[int, ...], classes: int) -> nn.Module:
    if math.prod(shape) != 100:
        raise UsageError("toy-conv takes 100 features (reshaped to 10x10)")
    features = nn.Sequential(
        nn.Flatten(), _Reshape(1, 10, 10), nn.Conv2d(1, 32, 5, padding=2), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(32, 64, 5, padding=2), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten())
    return nn.Sequential(features, nn.Linear(_flat_size(features, shape), classes))


def _toy_fc(shape: tuple[int, ...], classes: int) -> nn.Module:
    return nn.Sequential(nn.Flatten(), nn.Linear(math.prod(shape), 500), nn.ReLU(), nn.Linear(500, 1000), nn.ReLU(),
                         nn.Linear(1000, 500), nn.ReLU(), nn.Linear(500, classes))


# --- the compression study's ---------------------------------------------------------------------------------------
def _conv_bn(c_in: int, c_out: int) -> nn.Module:
    return nn.Sequential(nn.Conv2d(c_in, c_out, 3, padding=1, bias=False), nn.BatchNorm2d(c_out), nn.ReLU())


class _Residual(nn.Module):
    def __init__(self, width: int):
        super().__init__()
        self.body = nn.Sequential(_conv_bn(width, width), _conv_bn(width, width))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.body(x)


class _Scale(nn.Module):
    def __init__(self, factor: float):
        super().__init__()
        self.factor = factor

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.factor


def _resnet9(shape: tuple[int, ...], classes: int) -> nn.Module:
    """cifar10-fast's ResNet9 (6.57M parameters at 10 classes)."""
    return nn.Sequential(
        _conv_bn(_channels(shape), 64),
        _conv_bn(64, 128), nn.MaxPool2d(2), _Residual(128),
        _conv_bn(128, 256), nn.MaxPool2d(2),
        _conv_bn(256, 512), nn.MaxPool2d(2), _Residual(512),
        nn.AdaptiveMaxPool2d(1), nn.Flatten(), nn.Linear(512, classes, bias=False), _Scale(0.125))


def _alexnet_small(shape: tuple[int, ...], classes: int) -> nn.Module:
    """The AlexNet-like network of the compression study, sized for 32x32 images: five convolutions
    (64, 192, 384, 256, 256 filters, 3x3) with batch norm on the first two and max-pooling after the first, second
    and fifth, then two hidden dense layers of 1024 with dropout 0.5."""
    features = nn.Sequential(
        nn.Conv2d(_channels(shape), 64, 3, padding=1), nn.BatchNorm2d(64), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(64, 192, 3, padding=1), nn.BatchNorm2d(192), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(192, 384, 3, padding=1), nn.ReLU(), nn.Conv2d(384, 256, 3, padding=1), nn.ReLU(),
        nn.Conv2d(256, 256, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten())
    width = _flat_size(features, shape)
    return nn.Sequential(features, nn.Dropout(0.5), nn.Linear(width, 1024), nn.ReLU(), nn.Dropout(0.5),
                         nn.Linear(1024, 1024), nn.ReLU(), nn.Linear(1024, classes))


# --- the gossip study's --------------------------------------------------------------------------------------------
class _PreActBlock(nn.Module):
    def __init__(self, c_in: int, c_out: int, stride: int):
        super().__init__()
        self.bn1 = nn.BatchNorm2d(c_in)
        self.conv1 = nn.Conv2d(c_in, c_out, 3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(c_out)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, stride=1, padding=1, bias=False)
        self.shortcut = None
        if stride != 1 or c_in != c_out:
            self.shortcut = nn.Conv2d(c_in, c_out, 1, stride=stride, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = torch.relu(self.bn1(x))
        shortcut = self.shortcut(out) if self.shortcut is not None else x
        out = self.conv1(out)
        out = self.conv2(torch.relu(self.bn2(out)))
        return out + shortcut


def _preact_resnet18(shape: tuple[int, ...], classes: int) -> nn.Module:
    layers: list[nn.Module] = [nn.Conv2d(_channels(shape), 64, 3, padding=1, bias=False)]
    c_in = 64
    for c_out, stride in ((64, 1), (128, 2), (256, 2), (512, 2)):
        layers += [_PreActBlock(c_in, c_out, stride), _PreActBlock(c_out, c_out, 1)]
        c_in = c_out
    return nn.Sequential(*layers, nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(512, classes))


def _mnist_mlp(shape: tuple[int, ...], classes: int) -> nn.Module:
    layers: list[nn.Module] = [nn.Flatten(), nn.Dropout(0.2)]
    width = math.prod(shape)
    for _ in range(3):
        linear = nn.Linear(width, 1024)
        nn.init.kaiming_normal_(linear.weight, nonlinearity="relu")
        layers += [linear, nn.ReLU(), nn.Dropout(0.5)]
        width = 1024
    return nn.Sequential(*layers, nn.Linear(width, classes))


def _iris_mlp(shape: tuple[int, ...], classes: int) -> nn.Module:
    return nn.Sequential(nn.Flatten(), nn.Linear(math.prod(shape), 10), nn.ReLU(), nn.Linear(10, classes))


_BUILDERS = {
    "digits-cnn": _digits_cnn, "mlp": _mlp, "mnist": _mnist, "cifar10": _cifar10, "toy-conv": _toy_conv,
    "toy-fc": _toy_fc, "resnet9": _resnet9, "alexnet-small": _alexnet_small, "preact-resnet18": _preact_resnet18,
    "mnist-mlp": _mnist_mlp, "iris-mlp": _iris_mlp,
}


# --- torchvision ----------------------------------------------------------------------------------------------------
def torchvision_names() -> list[str]:
    import torchvision

    return sorted(torchvision.models.list_models(module=torchvision.models))


def _torchvision(name: str, shape: tuple[int, ...], classes: int) -> nn.Module:
    import torchvision

    if name not in torchvision_names():
        raise UsageError(f"--model {name!r} is neither one of anytimectl's torch models ({', '.join(_BUILDERS)}) "
                         "nor a torchvision classification model; see torchvision.models.list_models()")
    model = torchvision.models.get_model(name, weights=None, num_classes=classes)
    channels = _channels(shape)
    if channels != 3:
        _replace_first_conv(model, channels)
    return model


def _replace_first_conv(model: nn.Module, channels: int) -> None:
    """The same first convolution, taking `channels` input planes (grayscale MNIST into ResNet18)."""
    for parent in model.modules():
        for child_name, child in parent.named_children():
            if isinstance(child, nn.Conv2d):
                setattr(parent, child_name, nn.Conv2d(
                    channels, child.out_channels, child.kernel_size, stride=child.stride, padding=child.padding,
                    dilation=child.dilation, groups=1, bias=child.bias is not None))
                return
    raise UsageError("this torchvision model has no convolution to adapt to the data's channels")
