"""The PyTorch engine's arithmetic against textbook PyTorch, its deadline loop, buffers and checkpoint state, in one
process (tests/torch/ runs in its own pytest process: torch and TensorFlow never meet)."""

from __future__ import annotations

import copy
import math
import subprocess
import sys
import textwrap
import time
import types
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import check_a_model_handed_over_by_between_is_used
from torch.nn import functional

from anytimectl.backends.torch import engine as engine_module
from anytimectl.backends.torch.engine import TorchEngine, configure, make_optimizer
from anytimectl.backends.torch.models import to_model_input
from anytimectl.runtime.errors import UsageError

configure(threads=1, seed=0)


def make_engine(model: str = "digits-cnn", shape: tuple[int, ...] = (8, 8, 1), optimizer: str = "momentum",
                weight_decay: float = 1e-3, **kwargs) -> TorchEngine:
    return TorchEngine(model, shape, 10, optimizer, 0.05, weight_decay, **kwargs)


def batch(n: int, shape: tuple[int, ...] = (8, 8, 1), seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    return rng.random((n, *shape), dtype=np.float32), rng.integers(0, 10, n).astype(np.int64)


def flat_parameters(model: torch.nn.Module) -> np.ndarray:
    return torch.cat([p.detach().reshape(-1) for p in model.parameters() if p.requires_grad]).numpy()


#: the textbook optimizer for each engine setting, with the weight decay given to torch as usual
TEXTBOOK = {
    "sgd": lambda ps, wd: torch.optim.SGD(ps, lr=1.0, weight_decay=wd),
    "momentum": lambda ps, wd: torch.optim.SGD(ps, lr=1.0, momentum=0.9, weight_decay=wd),
    "rms": lambda ps, wd: torch.optim.RMSprop(ps, lr=1.0, alpha=0.9, eps=1e-7, weight_decay=wd),
    "adam": lambda ps, wd: torch.optim.Adam(ps, lr=1.0, eps=1e-7, weight_decay=wd),
    "nesterov": lambda ps, wd: torch.optim.SGD(ps, lr=1.0, momentum=0.5, nesterov=True, weight_decay=wd),
}
SETTINGS = {"sgd": ("sgd", {}), "momentum": ("momentum", {}), "rms": ("rms", {}), "adam": ("adam", {}),
            "nesterov": ("sgd", {"momentum": 0.5, "nesterov": True})}
RATES = {"sgd": (0.05, 0.02, 0.1), "momentum": (0.05, 0.02, 0.1), "nesterov": (0.05, 0.02, 0.1),
         "rms": (1e-3, 5e-4, 2e-3), "adam": (1e-3, 5e-4, 2e-3)}


@pytest.mark.parametrize("setting", list(SETTINGS))
def test_fmb_with_workers_summed_equals_a_textbook_step_on_all_their_examples(setting):
    """W workers x B examples, contributions summed and applied once == mean loss, backward, step on W*B examples;
    with a different learning rate each step, so the rate applied is the one given.

    Each step starts the textbook model from the engine's parameters (its optimizer keeps its own state): over
    several steps the two would otherwise drift apart chaotically, since an adaptive step turns a summation-order
    difference in a near-zero gradient into a full step, which moves ReLU boundaries for the next one (seen in the
    torch suite, where earlier tests leave torch with other threads and seeds)."""
    optimizer, extra = SETTINGS[setting]
    workers, per_worker, decay = 3, 12, 1e-3
    engine = make_engine(optimizer=optimizer, weight_decay=decay, **extra)
    start = engine.get_params()
    reference = copy.deepcopy(engine.model)
    trainable = [p for p in reference.parameters() if p.requires_grad]
    textbook = TEXTBOOK[setting](reference.parameters(), decay)
    for step, rate in enumerate(RATES[setting]):
        with torch.no_grad():
            torch.nn.utils.vector_to_parameters(torch.from_numpy(engine.get_params()[:sum(map(torch.numel, trainable))]
                                                                 .copy()), trainable)
        x, y = batch(workers * per_worker, seed=step)
        total = sum(engine.compute(x[w * per_worker:(w + 1) * per_worker], y[w * per_worker:(w + 1) * per_worker],
                                   1, math.inf)[0] for w in range(workers))
        loss = engine.apply(total, rate)
        assert engine.current_learning_rate() == rate
        for group in textbook.param_groups:
            group["lr"] = rate
        textbook.zero_grad()
        expected_loss = functional.cross_entropy(reference(to_model_input(torch.from_numpy(x))), torch.from_numpy(y))
        expected_loss.backward()
        textbook.step()
        assert loss == pytest.approx(float(expected_loss.detach()), rel=1e-5)
        expected = flat_parameters(reference)
        got = engine.get_params()
        if setting in ("rms", "adam"):
            # Adaptive steps divide each coordinate by its own gradient scale, so where a gradient nearly cancels
            # over the examples the summation order (3 partial sums, or one) can flip its sign: such a coordinate
            # moves by up to lr / sqrt(1 - rho) ~ 3.2 lr either way (Adam's first steps alike). Only a handful of
            # the 749k coordinates may do that, and none by more than that flip.
            difference = np.abs(got - expected)
            assert difference.max() <= 2 * 3.2 * rate
            assert np.mean(difference > 1e-6) < 1e-4
        else:
            np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-6)
    assert np.abs(engine.get_params() - start).max() > 1e-3  # the parameters really moved


def test_unequal_worker_batches_are_weighted_per_example():
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


def test_micro_batches_sum_the_same_gradients_as_one_batch():
    engine = make_engine()
    x, y = batch(50)
    one, _, _ = engine.compute(x, y, 1, math.inf)
    eight, count, done = engine.compute(x, y, 8, math.inf)
    assert (count, done) == (50, 8)
    np.testing.assert_allclose(eight, one, rtol=1e-4, atol=1e-5 * np.abs(one).max())


def test_a_model_handed_over_between_micro_batches_is_used_from_the_next_one_on():
    """The asynchronous protocol's `between`: a newer model set after micro-batch 1 computes micro-batches 2-4."""
    check_a_model_handed_over_by_between_is_used(make_engine(weight_decay=0.0), *batch(32), atol_share=1e-5)


def test_deadline_loop_runs_all_without_a_deadline_and_exactly_one_after_it():
    engine = make_engine()
    x, y = batch(50)
    assert engine.compute(x, y, 8, math.inf)[1:] == (50, 8)
    assert engine.compute(x, y, 8, time.time() - 10)[1:] == (6, 1)  # rows 0..6 of 50 in 8 parts
    assert engine.compute(x, y, 8, time.time() + 3600)[1:] == (50, 8)
    assert engine.compute(x, y, 100, math.inf)[1:] == (50, 100)  # more parts than rows: empty parts count


def test_a_micro_batch_starts_only_if_the_pace_so_far_ends_it_before_the_deadline(monkeypatch):
    """A clock that advances one second per reading: each micro-batch "takes" one second, so with the deadline at
    3.5 s the third one (predicted to end at 3 s) starts and a fourth (4 s) does not."""
    readings = iter(range(1000))
    monkeypatch.setattr(engine_module, "time", types.SimpleNamespace(time=lambda: float(next(readings))))
    engine = make_engine()
    x, y = batch(64)
    flat, count, done = engine.compute(x, y, 8, 3.5)
    assert (count, done) == (24, 3)
    assert flat[-2] == 24


def test_the_contribution_carries_count_loss_and_weighted_statistics():
    engine = make_engine()
    x, y = batch(32)
    flat, count, _ = engine.compute(x, y, 4, math.inf)
    assert flat.shape == (engine.param_count + 2,) and flat.dtype == np.float32
    assert flat[-2] == count == 32
    mean_loss, _ = engine.evaluate(x, y)  # no dropout or batch norm in digits-cnn: train and eval losses agree
    assert flat[-1] / 32 == pytest.approx(mean_loss, rel=1e-5)

    bn = make_engine("cifar10", (32, 32, 3))
    x, y = batch(16, (32, 32, 3))
    flat, _, _ = bn.compute(x, y, 2, math.inf)
    statistics = flat[bn.trainable_count:bn.param_count] / 16
    np.testing.assert_allclose(statistics, bn.get_params()[bn.trainable_count:], rtol=1e-6)


def test_batch_norm_statistics_become_the_example_weighted_mean_of_the_workers():
    engine = make_engine("cifar10", (32, 32, 3))
    start = engine.get_params()
    x, y = batch(40, (32, 32, 3))
    first, _, _ = engine.compute(x[:10], y[:10], 1, math.inf)
    engine.set_params(start)
    second, _, _ = engine.compute(x[10:], y[10:], 1, math.inf)
    assert engine.param_count - engine.trainable_count == 2 * (64 + 128 + 256 + 512 + 128 + 256 + 512)
    t, p = engine.trainable_count, engine.param_count
    expected = (10 * (first[t:p] / 10) + 30 * (second[t:p] / 30)) / 40
    engine.set_params(start)
    engine.apply(first + second, 0.05)
    np.testing.assert_allclose(engine.get_params()[t:], expected, rtol=1e-5, atol=1e-7)


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
    engine = make_engine(optimizer="sgd", weight_decay=0.1)
    engine.set_params(np.full(engine.param_count, 0.01, dtype=np.float32))
    zero = np.zeros(engine.param_count + 2, dtype=np.float32)
    zero[-2] = 64
    engine.apply(zero, 0.1)  # no gradient: only the decay moves the parameters, by exactly lr x wd x p
    np.testing.assert_allclose(engine.get_params(), 0.01 * (1 - 0.1 * 0.1), rtol=1e-6)


def test_the_learning_rate_applied_is_the_one_given():
    engine = make_engine(optimizer="sgd", weight_decay=0.0)
    x, y = batch(32)
    flat, _, _ = engine.compute(x, y, 1, math.inf)
    before = engine.get_params()
    engine.apply(flat, 0.0)
    assert engine.current_learning_rate() == 0.0
    np.testing.assert_array_equal(engine.get_params(), before)
    engine.apply(flat, 0.1)
    assert engine.current_learning_rate() == 0.1
    np.testing.assert_allclose(engine.get_params()[:engine.trainable_count],
                               before[:engine.trainable_count] - 0.1 * flat[:engine.trainable_count] / 32,
                               rtol=1e-5, atol=1e-7)


def test_layout_slices_are_the_model_tensors_in_buffer_order_trainable_first():
    engine = make_engine("cifar10", (32, 32, 3))
    params = engine.get_params()
    offset = 0
    state = engine.model.state_dict()
    for piece in engine.layout:
        assert piece.offset == offset and piece.size == math.prod(piece.shape)
        np.testing.assert_array_equal(params[offset:offset + piece.size], state[piece.name].reshape(-1).numpy())
        offset += piece.size
    assert offset == engine.param_count
    flags = [piece.trainable for piece in engine.layout]
    assert flags == sorted(flags, reverse=True)
    assert sum(piece.size for piece in engine.layout if piece.trainable) == engine.trainable_count
    assert not any("num_batches_tracked" in piece.name for piece in engine.layout)  # integer buffers stay out


def test_get_params_is_a_copy_and_set_params_takes_a_contribution_sized_buffer():
    engine = make_engine()
    params = engine.get_params()
    params += 1.0
    assert np.abs(engine.get_params() - params).min() > 0.5
    longer = np.concatenate([params, [7.0, 8.0]]).astype(np.float64)
    engine.set_params(longer)
    np.testing.assert_allclose(engine.get_params(), params, rtol=1e-7)
    with pytest.raises(ValueError, match="needs"):
        engine.set_params(params[:-1])
    with pytest.raises(ValueError, match="at least one example"):
        engine.apply(np.zeros(engine.param_count + 2, dtype=np.float32), 0.1)


def test_gradients_survive_code_that_clears_them_outside_the_engine():
    engine = make_engine()
    x, y = batch(16)
    before, _, _ = engine.compute(x, y, 1, math.inf)
    engine.model.zero_grad()  # set_to_none: detaches .grad from the engine's buffer
    after, _, _ = engine.compute(x, y, 1, math.inf)
    np.testing.assert_array_equal(after, before)


def test_frozen_parameters_travel_with_the_statistics_and_are_not_trained(tmp_path):
    source = tmp_path / "frozen.py"
    source.write_text(textwrap.dedent("""
        import torch
        def build(input_shape, num_classes):
            model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 16), torch.nn.ReLU(),
                                        torch.nn.Linear(16, num_classes))
            model[1].requires_grad_(False)
            return model
    """))
    engine = make_engine(f"{source}:build")
    assert engine.trainable_count == 16 * 10 + 10
    assert engine.param_count == engine.trainable_count + 64 * 16 + 16
    assert [piece.trainable for piece in engine.layout] == [True, True, False, False]
    frozen = engine.get_params()[engine.trainable_count:]
    x, y = batch(16)
    flat, _, _ = engine.compute(x, y, 1, math.inf)
    engine.apply(flat, 0.1)
    np.testing.assert_array_equal(engine.get_params()[engine.trainable_count:], frozen)


def test_evaluate_is_chunked_in_eval_mode_and_leaves_the_model_alone():
    engine = make_engine("mnist-mlp", (8, 8, 1))
    x, y = batch(engine_module.EVAL_CHUNK + 300)
    params = engine.get_params()
    loss, accuracy = engine.evaluate(x, y)
    assert engine.model.training
    np.testing.assert_array_equal(engine.get_params(), params)
    reference = copy.deepcopy(engine.model).eval()
    with torch.no_grad():
        logits = reference(torch.from_numpy(x).permute(0, 3, 1, 2))
    assert loss == pytest.approx(float(functional.cross_entropy(logits, torch.from_numpy(y))), rel=1e-5)
    assert accuracy == pytest.approx(float((logits.argmax(1).numpy() == y).mean()))
    assert engine.evaluate(x, y) == (loss, accuracy)  # dropout is off


def test_state_round_trip_restores_model_optimizer_and_generator_exactly():
    engine = make_engine("mnist-mlp", (8, 8, 1))  # dropout: the generator matters; momentum: the optimizer does
    x, y = batch(32)

    def step() -> np.ndarray:
        flat, _, _ = engine.compute(x, y, 1, math.inf)
        engine.apply(flat, 0.05)
        return engine.get_params()

    step()
    saved = engine.state()
    after_save = step()
    step()
    for _ in range(2):  # loading twice gives the same: the saved state is not aliased by the live engine
        engine.load_state(saved)
        np.testing.assert_array_equal(step(), after_save)


def test_state_survives_torch_save_and_a_fresh_engine(tmp_path):
    """A resumed run: a new engine (its own random init) loads the file and takes the very step the saved one took
    next (cifar10 has dropout and batch norm; Adam has moments and a step count)."""
    engine = make_engine("cifar10", (32, 32, 3), optimizer="adam")
    x, y = batch(16, (32, 32, 3))

    def step(e: TorchEngine) -> np.ndarray:
        flat, _, _ = e.compute(x, y, 1, math.inf)
        e.apply(flat, 1e-3)
        return e.get_params()

    step(engine)
    torch.save(engine.state(), tmp_path / "state.pt")
    saved = engine.get_params()
    expected = step(engine)
    fresh = make_engine("cifar10", (32, 32, 3), optimizer="adam")
    fresh.load_state(torch.load(tmp_path / "state.pt", weights_only=False))
    np.testing.assert_array_equal(fresh.get_params(), saved)
    np.testing.assert_array_equal(step(fresh), expected)


def test_optimizers_by_name_alias_and_explicit_momentum():
    weight = [torch.zeros(3)]
    assert isinstance(make_optimizer("adm", weight, 0.1), torch.optim.Adam)
    assert make_optimizer("mom", weight, 0.1).param_groups[0]["momentum"] == 0.9
    assert make_optimizer("sgd", weight, 0.1).param_groups[0]["momentum"] == 0.0
    group = make_optimizer("sgd", weight, 0.1, momentum=0.99, nesterov=True).param_groups[0]
    assert (group["momentum"], group["nesterov"]) == (0.99, True)
    rms = make_optimizer("rms", weight, 0.1).param_groups[0]
    assert (rms["alpha"], rms["eps"]) == (0.9, 1e-7)
    for bad, kwargs in (("lbfgs", {}), ("adam", {"momentum": 0.9}), ("rms", {"nesterov": True}),
                        ("sgd", {"momentum": -1.0})):
        with pytest.raises(UsageError):
            make_optimizer(bad, weight, 0.1, **kwargs)


_OPTIMIZER_CASES = (("sgd", {}), ("momentum", {}), ("sgd", {"momentum": 0.9, "nesterov": True}), ("rms", {}),
                    ("rms", {"momentum": 0.5}), ("adam", {}))


def _steps_of_each_optimizer(step) -> list[np.ndarray]:
    """Six updates of every optimizer case, from the same start and gradients, stepped by `step(optimizer)`,
    with a trip through state_dict/load_state_dict half-way (a checkpoint)."""
    results = []
    for name, kwargs in _OPTIMIZER_CASES:
        generator = torch.Generator().manual_seed(0)
        weight = torch.randn(257, generator=generator)
        optimizer = make_optimizer(name, [weight], 0.05, **kwargs)
        for update in range(6):
            weight.grad = torch.randn(257, generator=generator)
            step(optimizer)
            if update == 2:
                optimizer.load_state_dict(copy.deepcopy(optimizer.state_dict()))
        results.append(weight.detach().numpy().copy())
    return results


def test_optimizers_take_torchs_steps_without_importing_its_compiler(tmp_path):
    """The engine's optimizers skip the guards torch puts around them for torch.compile, which import the compiler
    (about 1 s of CPU per rank), and take exactly the steps of a plain `optimizer.step()`."""
    script = textwrap.dedent(f"""
        import sys
        import numpy as np
        sys.path[:0] = [{str(Path(__file__).parent)!r}, {str(Path(__file__).parent.parent)!r}]
        from test_torch_engine import _steps_of_each_optimizer
        from anytimectl.backends.torch.engine import optimizer_step
        np.save({str(tmp_path / "steps.npy")!r}, np.stack(_steps_of_each_optimizer(optimizer_step)))
        print("torch._dynamo" in sys.modules)
    """)
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.strip() == "False"
    expected = _steps_of_each_optimizer(lambda optimizer: optimizer.step())  # torch's own path, guards and all
    for (name, kwargs), got, want in zip(_OPTIMIZER_CASES, np.load(tmp_path / "steps.npy"), expected, strict=True):
        np.testing.assert_array_equal(got, want, err_msg=f"{name} {kwargs}")


def test_a_registered_step_hook_still_runs_through_the_engines_step():
    from torch.optim.optimizer import register_optimizer_step_pre_hook

    from anytimectl.backends.torch.engine import optimizer_step

    calls = []
    handle = register_optimizer_step_pre_hook(lambda *args: calls.append(args[0]))
    try:
        weight = torch.ones(3)
        optimizer = make_optimizer("sgd", [weight], 0.5)
        weight.grad = torch.ones(3)
        optimizer_step(optimizer)
    finally:
        handle.remove()
    assert calls == [optimizer] and torch.equal(weight, torch.full((3,), 0.5))


def test_devices_other_than_a_visible_gpu_are_one_line_errors():
    assert make_engine(device="cpu").device.type == "cpu"
    with pytest.raises(UsageError, match="cpu or cuda"):
        make_engine(device="tpu")
    if not torch.cuda.is_available():
        for device in ("cuda", "gpu:0", "cuda:1"):
            with pytest.raises(UsageError, match="no CUDA device") as error:
                make_engine(device=device)
            assert "\n" not in str(error.value)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_on_a_gpu_the_engine_matches_the_cpu_engine():
    cpu, gpu = make_engine(), make_engine(device="cuda")
    gpu.set_params(cpu.get_params())
    x, y = batch(32)
    for engine in (cpu, gpu):
        flat, _, _ = engine.compute(x, y, 4, time.time() + 3600)
        engine.apply(flat, 0.05)
    np.testing.assert_allclose(gpu.get_params(), cpu.get_params(), rtol=1e-4, atol=1e-5)
    assert gpu.evaluate(x, y)[1] == pytest.approx(cpu.evaluate(x, y)[1])


def test_configure_sets_threads_and_may_be_called_again():
    configure(threads=1, seed=3)
    first = torch.rand(2)
    configure(threads=1, seed=3)
    assert torch.get_num_threads() == 1
    assert torch.equal(torch.rand(2), first)


def test_the_package_and_the_user_model_loader_import_no_framework():
    code = ("import sys, anytimectl.backends.torch as t, anytimectl.backends.user_model; "
            "assert 'torch' not in sys.modules and 'tensorflow' not in sys.modules, sorted(sys.modules); "
            "print(len(t.MODELS))")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
