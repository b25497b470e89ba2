"""fp16 and bf16 exchanges against PyTorch's own DDP communication hooks: a real 2-process gloo DDP run with
`fp16_compress_hook` / `bf16_compress_hook` and anytimectl's exchange over 2 real MPI ranks, on the same model, data
and SGD, end with the same parameters bit for bit after every step; and differ from the float32 exchange (so the
comparison would notice a cast that did not happen). Also: the 16-bit conversions are torch's."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from anytimectl.comm.half_floats import add_words, from_words, to_words
from anytimectl.exchange.casts import divide_words
from anytimectl.runtime.launch import find_mpiexec

pytestmark = pytest.mark.torch
HERE = Path(__file__).parent
TORCH_DTYPES = {"float16": torch.float16, "bfloat16": torch.bfloat16}


@pytest.mark.parametrize("kind", ["float16", "bfloat16"])
def test_the_16_bit_arithmetic_is_torchs(kind):
    rng = np.random.default_rng(0)
    values = np.concatenate([rng.standard_normal(20000) * 10.0 ** rng.integers(-9, 6, 20000),
                             [0.0, -0.0, np.inf, -np.inf, 65504.0, 70000.0, 1e-8, -3e38]]).astype(np.float32)
    other = rng.permutation(values)
    dtype = TORCH_DTYPES[kind]
    a, b = torch.from_numpy(values).to(dtype), torch.from_numpy(other).to(dtype)
    bits = lambda t: t.view(torch.int16).numpy().view(np.uint16)  # noqa: E731
    assert np.array_equal(to_words(values, kind), bits(a))
    assert np.array_equal(from_words(bits(a), kind), a.float().numpy())
    with np.errstate(invalid="ignore", over="ignore"):
        assert np.array_equal(add_words(bits(a), bits(b), kind), bits(a + b))
        assert np.array_equal(divide_words(bits(a), 2, kind), bits(a.clone().div_(2)))


@pytest.mark.mpi
@pytest.mark.slow
def test_fp16_and_bf16_give_exactly_what_ddp_hooks_give(tmp_path):
    ddp, ours = tmp_path / "ddp.npz", tmp_path / "ours.npz"
    run = subprocess.run([sys.executable, str(HERE / "ddp_hooks_run.py"), str(ddp)], capture_output=True, text=True,
                         timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]
    run = subprocess.run([find_mpiexec(), "-n", "2", sys.executable, "-m", "mpi4py",
                          str(HERE.parent / "mpi" / "cast_exchange_check.py"), str(ours)],
                         capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]
    ddp, ours = np.load(ddp), np.load(ours)
    for kind in ("fp16", "bf16"):
        assert ours[kind].shape == ddp[kind].shape == (5, 12 * 32 + 32 + 32 * 5 + 5)
        for step in range(len(ours[kind])):
            assert np.array_equal(ours[kind][step], ddp[kind][step]), f"{kind} differs from DDP at step {step + 1}"
        # the cast is real: float32 training ends elsewhere, by more than float32 rounding
        assert np.abs(ours[kind][-1] - ours["none"][-1]).max() > 1e-5
    # and the float32 exchange is DDP's float32 average (up to the order of one division)
    np.testing.assert_allclose(ours["none"], ddp["none"], rtol=1e-5, atol=1e-6)
