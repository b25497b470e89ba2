"""PowerSGD against torch's own powerSGD_hook in a real gloo group, and its own properties in one process: the
residual it keeps, the error against the rank, the plain all-reduce before it starts, checkpoints, zero gradients."""

from __future__ import annotations

import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest
import torch

from anytimectl.backends.torch.compression.powersgd import PowerSGD, orthogonalize
from anytimectl.runtime.errors import UsageError

pytestmark = pytest.mark.torch
WORKER = Path(__file__).with_name("powersgd_hook_worker.py")
sys.path.insert(0, str(WORKER.parent))
from powersgd_hook_worker import SHAPES, gradients, layout  # noqa: E402

SIZE = sum(int(np.prod(s)) for s in SHAPES)


class ThreadGroup:
    """`world` ranks as threads of this process, with an in-place sum all-reduce (rank order, the same result on
    every rank), so that multi-rank PowerSGD runs without MPI."""

    def __init__(self, world: int) -> None:
        self.world = world
        self.barrier = threading.Barrier(world)
        self.slots: list[torch.Tensor | None] = [None] * world

    def allreduce(self, rank: int):
        def reduce(tensor: torch.Tensor) -> None:
            self.slots[rank] = tensor.clone()
            self.barrier.wait()
            total = torch.stack(self.slots).sum(dim=0)
            self.barrier.wait()
            tensor.copy_(total)
        return reduce

    def run(self, work) -> list:
        """work(rank, allreduce) on every rank at once; their results in rank order."""
        results, errors = [None] * self.world, []

        def target(rank: int) -> None:
            try:
                results[rank] = work(rank, self.allreduce(rank))
            except BaseException as error:  # noqa: BLE001 - reraised below
                errors.append(error)
                self.barrier.abort()
        threads = [threading.Thread(target=target, args=(r,)) for r in range(self.world)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        if errors:
            raise errors[0]
        return results


def _close(ours: np.ndarray, theirs: np.ndarray, what: str, rtol: float = 1e-5) -> None:
    assert ours.shape == theirs.shape, what
    scale = max(1.0, float(np.abs(theirs).max()))
    assert np.abs(ours - theirs).max() <= rtol * scale, f"{what}: max difference {np.abs(ours - theirs).max()}"


HOOK_CASES = {
    "one-rank-ef-warm": ["--world", "1", "--rank", "2", "--residual", "local"],
    "two-ranks-ef-warm": ["--world", "2", "--rank", "2", "--residual", "aggregate"],
    "two-ranks-qr-cold-no-ef": ["--world", "2", "--rank", "4", "--min-rate", "1", "--no-error-feedback",
                                "--no-warm-start", "--seed", "7"],
}


@pytest.mark.slow
@pytest.mark.parametrize("case", HOOK_CASES)
def test_same_p_q_residual_and_gradient_as_torch_powersgd_hook_over_several_steps(tmp_path, case):
    """Steps 0-1 are torch's plain all-reduce (start_powerSGD_iter 2), steps 2-5 PowerSGD: from the same seed the
    same initial Q, then at every step the same orthogonalised P, the same Q, the same error memory and the same
    gradient (anytimectl's sum / world = torch's mean), on every rank."""
    args = HOOK_CASES[case]
    world, steps = int(args[args.index("--world") + 1]), 6
    subprocess.run([sys.executable, str(WORKER), str(tmp_path / "out"), "--steps", str(steps), "--start", "2",
                    *args], check=True, timeout=600)
    for rank in range(world):
        data = np.load(tmp_path / f"out.rank{rank}.npz")
        for step in range(steps):
            _close(data[f"ours_sum{step}"] / world, data[f"torch_grad{step}"], f"rank {rank} step {step} gradient")
            if step < 2:
                continue
            _close(data[f"ours_p{step}"], data[f"torch_p{step}"], f"rank {rank} step {step} P")
            _close(data[f"ours_q{step}"] / world, data[f"torch_q{step}"], f"rank {rank} step {step} Q")
            if "--no-error-feedback" not in args:
                _close(data[f"ours_error{step}"], data[f"torch_error{step}"], f"rank {rank} step {step} error")
    grads = gradients(steps, world, 1)  # PowerSGD really compressed: the result is not the plain sum
    last = np.load(tmp_path / "out.rank0.npz")[f"ours_sum{steps - 1}"]
    assert np.linalg.norm(last - grads[steps - 1].sum(axis=0)) > 1e-3 * np.linalg.norm(last)


def test_local_residual_is_exactly_what_this_rank_did_not_send():
    """residual="local" (Vogels et al.'s Algorithm 1): each rank keeps M - P P^T M for every compressed matrix
    (P the orthogonalised summed P) and nothing for what travelled uncompressed; what the ranks sent (M - residual)
    adds up to the result, and sent + residual over the steps adds up to the gradients plus nothing lost."""
    world, steps = 3, 4
    grads = gradients(steps, world, 3)

    def work(rank, allreduce):
        psgd = PowerSGD(layout(), rank=2, seed=5)
        rows, residual = [], np.zeros(SIZE, np.float64)
        for step in range(steps):
            compensated = grads[step, rank].astype(np.float64) + residual
            out = psgd.step(grads[step, rank], step, allreduce).copy()
            residual = psgd.residual.numpy().astype(np.float64).copy()
            expected = np.zeros(SIZE)
            for m in psgd.matrices:
                p = psgd.last_p[m.p_offset:m.p_offset + m.rows * m.rank].numpy().astype(np.float64)
                p = p.reshape(m.rows, m.rank)
                block = compensated[m.offset:m.offset + m.rows * m.cols].reshape(m.rows, m.cols)
                expected[m.offset:m.offset + block.size] = (block - p @ p.T @ block).reshape(-1)
            rows.append((out, compensated - residual, residual, expected))
        return rows

    results = ThreadGroup(world).run(work)
    for step in range(steps):
        out = results[0][step][0]
        for rank in range(world):
            assert np.array_equal(results[rank][step][0], out)  # one result on every rank
            _, _, residual, expected = results[rank][step]
            _close(residual, expected, f"rank {rank} step {step} residual")
        sent = sum(results[rank][step][1] for rank in range(world))
        _close(out.astype(np.float64), sent, f"step {step}: the result is the sum of what the ranks sent")
    for rank in range(world):
        total_sent = sum(results[rank][step][1] for step in range(steps))
        _close(total_sent + results[rank][-1][2], grads[:, rank].astype(np.float64).sum(axis=0),
               f"rank {rank}: sent + residual = every gradient")
    compressed = PowerSGD(layout(), rank=2)
    uncompressed = {i for i, _ in enumerate(SHAPES)} - {m.index for m in compressed.matrices}
    assert uncompressed == {1, 4, 5, 8}  # the three vectors and the 4 x 2 matrix too small to gain at rate 2


def _spectrum_matrix(rows: int, cols: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    u, _ = np.linalg.qr(rng.standard_normal((rows, rows)))
    v, _ = np.linalg.qr(rng.standard_normal((cols, cols)))
    sigma = 0.6 ** np.arange(min(rows, cols))
    return ((u[:, :sigma.size] * sigma) @ v[:, :sigma.size].T).astype(np.float32)


def test_approximation_error_falls_as_the_rank_grows_towards_the_best_rank_r_error():
    """One 64 x 48 gradient with singular values 0.6^i, repeated; without error feedback, warm start makes
    PowerSGD a power iteration: after 8 steps its error at rank r is within 2% of the best rank-r error
    (Eckart-Young) and falls strictly from rank 1 to 8."""
    m = _spectrum_matrix(64, 48, 0)
    sigma = np.linalg.svd(m.astype(np.float64), compute_uv=False)
    errors = []
    for r in (1, 2, 4, 8):
        psgd = PowerSGD([{"offset": 0, "size": m.size, "shape": m.shape}], rank=r, error_feedback=False, seed=1)
        for step in range(8):
            out = psgd.step(m.reshape(-1), step)
        error = np.linalg.norm(out.astype(np.float64) - m.reshape(-1))
        best = np.sqrt(np.sum(sigma[r:] ** 2))
        assert best <= error <= 1.02 * best, (r, error, best)
        errors.append(error)
    assert all(a > b for a, b in zip(errors, errors[1:], strict=False)), errors


def test_before_start_iter_every_value_is_summed_plainly_and_nothing_is_remembered():
    world = 2
    grads = gradients(3, world, 4)

    def work(rank, allreduce):
        psgd = PowerSGD(layout(), rank=2, start_iter=2)
        extra = np.full(3, rank + 1.0, np.float32)
        outs = [psgd.step(grads[s, rank], s, allreduce, extra=extra if s == 0 else None).copy() for s in range(2)]
        assert float(psgd.residual.abs().sum()) == 0.0 and not psgd.q_ready and psgd.draws == 0
        assert psgd.floats_at(1) == SIZE and psgd.collectives_at(1) == 1
        assert np.array_equal(extra, np.full(3, 3.0, np.float32))
        outs.append(psgd.step(grads[2, rank], 2, allreduce).copy())
        assert psgd.q_ready and psgd.draws == 1 and psgd.collectives_at(2) == 2
        return outs

    results = ThreadGroup(world).run(work)
    for step in range(2):
        _close(results[0][step], grads[step].sum(axis=0), f"step {step}")
    assert np.linalg.norm(results[0][2] - grads[2].sum(axis=0)) > 1e-2 * np.linalg.norm(results[0][2])


def test_bytes_per_step_are_the_ps_qs_and_uncompressed_values():
    psgd = PowerSGD(layout(), rank=2)
    p = sum(s[0] * min(2, s[0], int(np.prod(s[1:]))) for i, s in enumerate(SHAPES) if i not in {1, 4, 5, 8})
    q = sum(int(np.prod(s[1:])) * min(2, s[0], int(np.prod(s[1:]))) for i, s in enumerate(SHAPES)
            if i not in {1, 4, 5, 8})
    unc = sum(int(np.prod(SHAPES[i])) for i in (1, 4, 5, 8))
    assert (psgd.p_size, psgd.q_size, psgd.uncompressed_size) == (p, q, unc)
    assert psgd.compressed_floats == p + q + unc < SIZE
    assert psgd.describe()["compressed_tensors"] == 5


def test_a_checkpointed_state_resumes_the_same_steps():
    """state() after 3 steps loaded into a fresh instance: steps 3-5 are the same as the uninterrupted run's,
    with warm start and without (where the seed stream's position matters)."""
    grads = gradients(6, 1, 6)
    for warm in (True, False):
        full = PowerSGD(layout(), rank=2, warm_start=warm, seed=2)
        outs = [full.step(grads[s, 0], s).copy() for s in range(6)]
        first = PowerSGD(layout(), rank=2, warm_start=warm, seed=2)
        for s in range(3):
            first.step(grads[s, 0], s)
        resumed = PowerSGD(layout(), rank=2, warm_start=warm, seed=2)
        resumed.load(first.state())
        for s in range(3, 6):
            assert np.array_equal(resumed.step(grads[s, 0], s), outs[s]), (warm, s)
    with pytest.raises(ValueError, match="Q of"):
        PowerSGD(layout(), rank=3).load(PowerSGD(layout(), rank=2).state())


def test_a_zero_gradient_gives_zeros_not_nan_and_the_layer_comes_back_with_warm_start():
    """torch's hook (epsilon 0) turns an all-zero matrix into NaN; here it sends zeros, and its warm-started Q,
    zero after that step, is redrawn so that the next non-zero gradient is approximated again."""
    grads = gradients(3, 1, 8)
    grads[1, 0] = 0.0
    psgd = PowerSGD(layout(), rank=2, error_feedback=False, seed=3)
    psgd.step(grads[0, 0], 0)
    zero = psgd.step(grads[1, 0], 1)
    assert np.isfinite(zero).all() and not zero.any()
    back = psgd.step(grads[2, 0], 2)
    for m in psgd.matrices:
        block = back[m.offset:m.offset + m.rows * m.cols]
        assert np.linalg.norm(block) > 0.1 * np.linalg.norm(grads[2, 0, m.offset:m.offset + block.size])


def test_orthogonalize_gives_orthonormal_columns_for_gram_schmidt_and_qr():
    rng = torch.Generator().manual_seed(0)
    for rank in (1, 2, 3, 6):
        q = torch.randn(20, rank, generator=rng)
        orthogonalize(q)
        assert torch.allclose(q.T @ q, torch.eye(rank), atol=1e-5)


@pytest.mark.parametrize("options, words", [
    ({"rank": 0}, "--rank 0"), ({"start_iter": -1}, "--powersgd-start-iter -1"),
    ({"min_compression_rate": -1.0}, "--min-compression-rate -1"), ({"residual": "mean"}, "residual 'mean'")])
def test_bad_options_are_usage_errors_naming_the_option(options, words):
    with pytest.raises(UsageError, match=words):
        PowerSGD(layout(), **options)
