"""The PyTorch engine's arithmetic, its deadline loop, its models and its checkpoint state, in one process."""

from __future__ import annotations

import copy
import math
import textwrap
import time

import numpy as np
import pytest
import torch

from anytimectl.backends.torch.engine import TorchEngine, configure
from anytimectl.backends.torch.models import build_model, to_model_input
from anytimectl.errors import UsageError

configure(threads=1, seed=0)


def make_engine(model: str = "digits-cnn", shape: tuple[int, ...] = (8, 8, 1), optimizer: str = "momentum",
                weight_decay: float = 1e-3, **kwargs) -> TorchEngine:
    return TorchEngine(model, shape, 10, optimizer, 0.05, weight_decay, **kwargs)


def batch(n: int, shape: tuple[int, ...] = (8, 8, 1), seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    return rng.random((n, *shape), dtype=np.float32), rng.integers(0, 10, n).astype(np.int64)


def test_original_models_have_the_tensorflow_parameter_counts():
    assert make_engine("mnist", (28, 28, 1)).trainable_count == 3_274_634
    assert make_engine("cifar10", (32, 32, 3)).trainable_count == 4_607_178


def test_one_update_equals_a_textbook_pytorch_step_on_the_same_examples():
    engine = make_engine()
    reference = copy.deepcopy(engine.model)
    optimizer = torch.optim.SGD(reference.parameters(), lr=0.05, momentum=0.9, weight_decay=1e-3)
    x, y = batch(64)
    for _ in range(3):
        buffer, _, _ = engine.compute(x, y, 1, math.inf)
        engine.apply(buffer, 0.05)
        optimizer.zero_grad()
        logits = reference(to_model_input(torch.from_numpy(x)))
        torch.nn.functional.cross_entropy(logits, torch.from_numpy(y)).backward()
        optimizer.step()
    expected = torch.cat([p.detach().reshape(-1) for p in reference.parameters()]).numpy()
    np.testing.assert_allclose(engine.get_params()[:engine.trainable_count], expected, rtol=1e-5, atol=1e-6)


def test_workers_times_batch_equals_one_process_and_unequal_batches_weigh_per_example():
    x, y = batch(40)
    split, whole = make_engine(), make_engine()
    whole.set_params(split.get_params())
    for _ in range(2):
        first, n1, _ = split.compute(x[:10], y[:10], 1, math.inf)
        second, n2, _ = split.compute(x[10:], y[10:], 3, math.inf)
        assert (n1, n2) == (10, 30)
        split.apply(first + second, 0.05)
        together, _, _ = whole.compute(x, y, 1, math.inf)
        whole.apply(together, 0.05)
    np.testing.assert_allclose(split.get_params(), whole.get_params(), rtol=1e-5, atol=1e-6)


def test_deadline_loop_runs_all_without_a_deadline_and_one_after_it():
    engine = make_engine()
    x, y = batch(50)
    assert engine.compute(x, y, 8, math.inf)[1:] == (50, 8)
    assert engine.compute(x, y, 8, time.time() - 10)[1:] == (6, 1)


def test_contribution_carries_count_loss_and_weighted_batch_norm_statistics():
    engine = make_engine("cifar10", (32, 32, 3))
    x, y = batch(16, (32, 32, 3))
    flat, count, _ = engine.compute(x, y, 2, math.inf)
    assert flat.shape == (engine.param_count + 2,) and flat[-2] == count == 16
    statistics = flat[engine.trainable_count:engine.param_count] / 16
    np.testing.assert_allclose(statistics, engine.get_params()[engine.trainable_count:], rtol=1e-6)


def test_weight_decay_is_applied_once_per_update_not_per_micro_batch():
    x, y = batch(64)
    results = []
    for micro_batches in (1, 16):
        engine = make_engine(optimizer="sgd", weight_decay=0.1)
        engine.set_params(np.full(engine.param_count, 0.01, dtype=np.float32))
        flat, _, _ = engine.compute(x, y, micro_batches, math.inf)
        engine.apply(flat, 0.1)
        results.append(engine.get_params())
    np.testing.assert_allclose(results[0], results[1], rtol=1e-4, atol=1e-6)


def test_the_learning_rate_applied_is_the_one_given():
    engine = make_engine(optimizer="sgd", weight_decay=0.0)
    x, y = batch(32)
    flat, _, _ = engine.compute(x, y, 1, math.inf)
    before = engine.get_params()
    engine.apply(flat, 0.0)
    np.testing.assert_array_equal(engine.get_params(), before)
    engine.apply(flat, 0.1)
    assert engine.current_learning_rate() == 0.1
    assert np.abs(engine.get_params() - before).max() > 1e-4


def test_layout_slices_cover_the_buffer_in_order():
    engine = make_engine("cifar10", (32, 32, 3))
    offsets = [s.offset for s in engine.layout]
    assert offsets == sorted(offsets) and engine.layout[0].offset == 0
    last = engine.layout[-1]
    assert last.offset + last.size == engine.param_count
    assert sum(s.size for s in engine.layout if s.trainable) == engine.trainable_count


def test_state_round_trip_restores_model_optimizer_and_generator():
    engine = make_engine("mnist-mlp", (8, 8, 1))
    x, y = batch(32)
    flat, _, _ = engine.compute(x, y, 1, math.inf)
    engine.apply(flat, 0.05)
    saved, params = engine.state(), engine.get_params()
    draw = torch.rand(3)
    flat, _, _ = engine.compute(x, y, 1, math.inf)
    engine.apply(flat, 0.05)
    engine.load_state(saved)
    np.testing.assert_array_equal(engine.get_params(), params)
    assert torch.equal(torch.rand(3), draw)
    flat, _, _ = engine.compute(x, y, 1, math.inf)  # the parameters still feed the flat buffer after loading
    engine.apply(flat, 0.05)
    assert np.abs(engine.get_params() - params).max() > 0


@pytest.mark.parametrize(("name", "shape"), [("resnet18", (8, 8, 1)), ("resnet18", (32, 32, 3)),
                                             ("resnet9", (32, 32, 3)), ("preact-resnet18", (32, 32, 3)),
                                             ("alexnet-small", (32, 32, 3)), ("iris-mlp", (4,)),
                                             ("mnist-mlp", (28, 28, 1))])
def test_named_models_build_for_their_inputs(name, shape):
    model = build_model(name, shape, 7)
    assert model(to_model_input(torch.zeros((2, *shape)))).shape == (2, 7)


def test_resnet9_has_cifar10_fasts_size():
    assert sum(p.numel() for p in build_model("resnet9", (32, 32, 3), 10).parameters()) == 6_573_120


def test_a_model_that_does_not_fit_the_data_is_one_usage_error():
    with pytest.raises(UsageError, match="does not fit inputs of shape"):
        build_model("mnist", (4,), 3)
    with pytest.raises(UsageError, match="neither"):
        build_model("no-such-net", (8, 8, 1), 10)


def test_a_users_model_file_is_loaded_and_checked(tmp_path):
    good = tmp_path / "net.py"
    good.write_text(textwrap.dedent("""
        import torch
        def build(input_shape, num_classes):
            return torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, num_classes))
        def not_a_module():
            return 3
    """))
    assert build_model(f"{good}:build", (8, 8, 1), 10)(torch.zeros((1, 1, 8, 8))).shape == (1, 10)
    with pytest.raises(UsageError, match="not a torch nn.Module"):
        build_model(f"{good}:not_a_module", (8, 8, 1), 10)
    with pytest.raises(UsageError, match="has no function"):
        build_model(f"{good}:missing", (8, 8, 1), 10)
    with pytest.raises(UsageError, match="no such file"):
        build_model(f"{tmp_path / 'none.py'}:build", (8, 8, 1), 10)
