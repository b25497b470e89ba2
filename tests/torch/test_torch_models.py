"""The torch backend's networks (architectures, sizes, fit to the data) and a user's own model file."""

from __future__ import annotations

import math
import textwrap

import numpy as np
import pytest
import torch

from anytimectl.backends.torch import DEFAULT_MODEL, MODEL_INPUT, MODELS
from anytimectl.backends.torch.engine import TorchEngine, configure
from anytimectl.backends.torch.models import BUILDERS, build_model, to_model_input, torchvision_names
from anytimectl.backends.user_model import load_user_builder
from anytimectl.runtime.errors import UsageError

configure(threads=1, seed=0)


def trainable(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def forward(model: torch.nn.Module, shape: tuple[int, ...], n: int = 2) -> torch.Tensor:
    model.eval()
    with torch.no_grad():
        return model(to_model_input(torch.zeros((n, *shape))))


#: hand-counted from each architecture (the TensorFlow backend's counts for its six; the originals' for the rest)
COUNTS = {
    ("digits-cnn", (8, 8, 1), 10): 640 + 73_856 + 147_584 + 524_544 + 2_570,
    ("mlp", (4,), 3): 4 * 32 + 32 + 32 * 3 + 3,
    ("mnist", (28, 28, 1), 10): 3_274_634,
    ("cifar10", (32, 32, 3), 10): 4_607_178,
    ("toy-conv", (100,), 10): 832 + 51_264 + 2_570,
    ("toy-fc", (100,), 10): 50_500 + 501_000 + 500_500 + 5_010,
    ("resnet9", (32, 32, 3), 10): 6_573_120,
    ("alexnet-small", (32, 32, 3), 10): 2_255_296,
    ("alexnet-fc", (32, 32, 3), 10): 23_272_266,
    ("preact-resnet18", (32, 32, 3), 10): 11_171_146,
    ("mnist-mlp", (28, 28, 1), 10): 784 * 1024 + 1024 + 2 * (1024 * 1024 + 1024) + 1024 * 10 + 10,
    ("iris-mlp", (4,), 3): 4 * 10 + 10 + 10 * 3 + 3,
}


@pytest.mark.parametrize(("name", "shape", "classes"), list(COUNTS))
def test_each_network_has_its_architectures_parameter_count(name, shape, classes):
    model = build_model(name, shape, classes)
    assert trainable(model) == COUNTS[name, shape, classes]
    assert forward(model, shape).shape == (2, classes)


def test_the_originals_mnist_and_cifar10_match_the_tensorflow_backend_through_the_engine():
    assert TorchEngine("mnist", (28, 28, 1), 10, "rms", 1e-3, 0.0).trainable_count == 3_274_634
    assert TorchEngine("cifar10", (32, 32, 3), 10, "rms", 1e-3, 0.0).trainable_count == 4_607_178


def test_every_listed_name_builds_for_its_own_input_and_the_lists_agree():
    assert set(BUILDERS) <= set(MODELS)
    assert set(MODELS) - set(BUILDERS) <= set(torchvision_names())
    assert set(MODEL_INPUT) == set(MODELS)
    assert set(DEFAULT_MODEL.values()) <= set(MODELS)
    for name in MODELS:
        shape = MODEL_INPUT[name]
        assert forward(build_model(name, shape, 5), shape).shape == (2, 5), name


def test_tensorflow_shared_models_use_keras_initialisers():
    model = build_model("digits-cnn", (8, 8, 1), 10)
    dense = model[1]
    bound = math.sqrt(6 / (dense.in_features + dense.out_features))  # Glorot uniform
    largest = float(dense.weight.detach().abs().max())
    assert 0.9 * bound < largest <= bound
    assert float(dense.bias.detach().abs().max()) == 0.0
    conv = build_model("cifar10", (32, 32, 3), 10)[0][0]
    assert conv.bias is None and float(conv.weight.detach().abs().max()) <= 0.16  # truncated normal, std 0.08


def test_resnet9_is_cifar10_fasts():
    model = build_model("resnet9", (32, 32, 3), 10)
    convs = [m for m in model.modules() if isinstance(m, torch.nn.Conv2d)]
    assert [c.out_channels for c in convs] == [64, 128, 128, 128, 256, 512, 512, 512]
    assert all(c.bias is None and c.kernel_size == (3, 3) for c in convs)
    assert sum(isinstance(m, torch.nn.BatchNorm2d) for m in model.modules()) == 8
    linear = [m for m in model.modules() if isinstance(m, torch.nn.Linear)]
    assert len(linear) == 1 and linear[0].bias is None
    x = torch.randn(4, 32, 32, 3)
    model.eval()
    with torch.no_grad():
        logits = model(to_model_input(x))
        unscaled = model[:-1](to_model_input(x))
    torch.testing.assert_close(logits, unscaled * 0.125)
    assert logits.shape == (4, 10)


@pytest.mark.parametrize("shape", [(8, 8, 1), (28, 28, 1), (32, 32, 3)])
def test_torchvision_resnet18_takes_one_or_three_channels_and_any_class_count(shape):
    model = build_model("resnet18", shape, 7)
    assert model.conv1.in_channels == shape[2]
    assert model.fc.out_features == 7
    assert forward(model, shape).shape == (2, 7)


def test_any_torchvision_classifier_by_name_including_those_with_auxiliary_heads():
    for name in ("mobilenet_v3_small", "googlenet"):
        model = build_model(name, (32, 32, 1), 4)
        model.train()
        out = model(to_model_input(torch.zeros((2, 32, 32, 1))))
        assert isinstance(out, torch.Tensor) and out.shape == (2, 4), name


def test_a_model_that_does_not_fit_the_data_is_one_usage_error(tmp_path):
    wrong_classes = tmp_path / "wrong.py"
    wrong_classes.write_text("import torch\ndef build(shape, classes):\n"
                             "    return torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 3))\n")
    cases = [("mnist", (4,), "does not fit inputs of shape"),
             ("digits-cnn", (1, 1, 1), "does not fit inputs of shape"),
             ("toy-conv", (8, 8, 1), "100 features"),
             ("resnet18", (4,), "does not fit inputs of shape"),
             ("alexnet-fc", (8, 8, 3), "does not fit inputs of shape"),
             ("no-such-net", (8, 8, 1), "neither"),
             (f"{wrong_classes}:build", (8, 8, 1), r"not logits of shape \(1, 10\)")]
    for name, shape, message in cases:
        with pytest.raises(UsageError, match=message) as error:
            build_model(name, shape, 10)
        assert "\n" not in str(error.value), name


def test_a_bug_inside_a_built_in_model_keeps_its_traceback(monkeypatch):
    """A shape the model cannot take is the user's to fix (one line); a bug in our own builder or forward is ours,
    and must not be disguised as "does not fit"."""
    from anytimectl.backends.torch import models

    def broken_builder(shape, classes):
        return undefined_layer(shape)  # noqa: F821 - the bug under test

    class BrokenForward(torch.nn.Module):
        def forward(self, x):
            return x.no_such_method()

    monkeypatch.setitem(models.BUILDERS, "broken-builder", broken_builder)
    monkeypatch.setitem(models.BUILDERS, "broken-forward", lambda shape, classes: BrokenForward())
    with pytest.raises(NameError):
        build_model("broken-builder", (8, 8, 1), 10)
    with pytest.raises(AttributeError):
        build_model("broken-forward", (8, 8, 1), 10)


def test_a_users_model_file_is_loaded_with_either_signature(tmp_path):
    (tmp_path / "helper.py").write_text("WIDTH = 64\n")
    source = tmp_path / "net.py"
    source.write_text(textwrap.dedent("""
        import torch
        from helper import WIDTH  # a neighbour of the model file

        def build(input_shape, num_classes):
            return torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(WIDTH, num_classes))

        def fixed():
            return torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 10))

        def with_options(input_shape, num_classes, hidden=8):
            return torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, hidden), torch.nn.ReLU(),
                                       torch.nn.Linear(hidden, num_classes))
    """))
    for spec in (f"{source}:build", str(source), f"{source}:fixed", f"{source}:with_options"):
        assert forward(build_model(spec, (8, 8, 1), 10), (8, 8, 1)).shape == (2, 10), spec
    engine = TorchEngine(f"{source}:build", (8, 8, 1), 10, "sgd", 0.1, 0.0)
    flat, count, _ = engine.compute(np.zeros((4, 8, 8, 1), np.float32), np.zeros(4, np.int64), 1, math.inf)
    assert count == 4 and flat.shape == (64 * 10 + 10 + 2,)


def test_a_users_model_file_fails_in_one_line(tmp_path):
    source = tmp_path / "net.py"
    source.write_text(textwrap.dedent("""
        import torch
        NOT_A_FUNCTION = 3
        def not_a_module():
            return 3
        def one_argument(num_classes):
            return torch.nn.Linear(64, num_classes)
        def raises(input_shape, num_classes):
            raise RuntimeError("no GPU today")
    """))
    broken = tmp_path / "broken.py"
    broken.write_text("def build(:\n")
    cases = [(f"{source}:not_a_module", "not a torch nn.Module"),
             (f"{source}:missing", "has no function 'missing'"),
             (f"{source}:NOT_A_FUNCTION", "not a function"),
             (f"{source}:one_argument", r"must take \(input_shape, num_classes\) or no arguments"),
             (f"{source}:raises", "raises\\(\\) failed: RuntimeError: no GPU today"),
             (f"{tmp_path / 'none.py'}:build", "no such file"),
             (f"{broken}:build", "importing .* failed: SyntaxError")]
    for spec, message in cases:
        with pytest.raises(UsageError, match=message) as error:
            build_model(spec, (8, 8, 1), 10)
        assert "\n" not in str(error.value), spec


def test_the_loader_itself_is_framework_neutral(tmp_path):
    source = tmp_path / "anything.py"
    source.write_text("def build(input_shape, num_classes):\n    return ('a model', input_shape, num_classes)\n")
    assert load_user_builder(f"{source}:build")([8, 8, 1], 10) == ("a model", (8, 8, 1), 10)
