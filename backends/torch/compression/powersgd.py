"""Rank-r PowerSGD (Vogels, Karimireddy and Jaggi, NeurIPS'19), the algorithm of torch's `powerSGD_hook`, over
anytimectl's flat gradient contribution and an injected all-reduce.

Per step, on every rank, for this rank's flat contribution g (float32, the engine's trainable layout):

1. M = g + e (e: this rank's error-feedback residual, zero without error feedback);
2. every tensor of two or more dimensions is viewed as a matrix n x m (n = its first dimension, m the product of
   the rest: a conv kernel (out, in, kh, kw) is out x (in kh kw)), exactly as torch's hook views it; its rank is
   r_t = min(n, m, r). It is compressed only if (n + m) r_t x min_compression_rate < n m (torch's
   `_should_compress`); the others and every 1-D tensor (biases, batch-norm scales) travel uncompressed;
3. P_t = M_t Q_t for every compressed matrix; ONE all-reduce sums [P_1 ... P_k | the uncompressed values | extra]
   (torch's hook all-reduces the uncompressed tensors and the Ps separately: here they share one collective,
   which saves a latency and changes no sum);
4. P_t <- orthogonalise(P_t) (Gram-Schmidt for r_t <= 2, QR above, as torch);
5. Q_t = M_t^T P_t; ONE all-reduce sums [Q_1 ... Q_k];
6. the result: P_t Q_t^T for the compressed tensors, the summed values for the others;
7. error feedback: e <- M - (this rank's own share of what was sent), see below; warm start keeps the summed Q_t
   for the next step (orthogonalised there), otherwise Q is drawn afresh every step.

Before step `start_iter` the whole contribution goes through one plain all-reduce (torch's start_powerSGD_iter),
error feedback untouched.

How this differs from torch's hook, on purpose:
- Sum, not mean. anytimectl exchanges the SUM over ranks of each rank's example-weighted gradient SUM (the engine's
  contribution, see anytimectl.exchange), and the engine divides by the total examples afterwards. torch's
  hook divides the uncompressed part and Q by the world size W and returns the mean of per-rank mean gradients.
  The orthogonalised P is the same either way (orthogonalisation is scale-free, with epsilon 0), so this class's
  result is W times torch's for the same inputs, up to float rounding (torch multiplies with bmm, this with mm).
- Residual. Vogels et al.'s Algorithm 1 memorises each worker's LOCAL error, M - P Q_local^T with Q_local = M^T P
  before the all-reduce (and 0 for what travelled uncompressed); `residual="local"` (default) does that, so that
  what every rank sent adds up exactly to what was applied, and a rank with a smaller batch (dynamic batching)
  keeps a residual in its own units. torch's hook memorises M - (the decompressed MEAN over ranks), for the
  uncompressed tensors too; `residual="aggregate"` does that (M - result / W), for comparisons with torch. Summed
  over ranks the two residuals are equal; with one rank they are identical.
- Layout. torch compresses per DDP bucket (about 25 MB, filled in reverse parameter order, rebuilt after the first
  iteration); here the whole trainable gradient is one "bucket", laid out as in torch's hook: compressed matrices
  grouped by shape in order of first appearance, so that from one seed the initial Q is torch's, draw for draw
  (numpy RandomState(seed) gives a torch seed per draw; torch.randn per matrix in that order).
- Vectors are never compressed (torch's rule compresses an n-vector viewed as n x 1 when min_compression_rate < 1).
- A zero column (a matrix whose gradient is exactly zero) orthogonalises to zero instead of torch's NaN (epsilon 0),
  and a warm-started Q that became zero is redrawn (from a generator seeded by seed, step and matrix, the same on
  every rank), so that a layer whose gradient was zero for one step does not stay silent for the rest of the run.
- Not batched by shape (torch's batch_tensors_with_same_shape): one matrix product per tensor.
- The start iteration may be 0 or 1: torch needs 2 or more with error feedback or warm start, because DDP
  rebuilds its buckets after its first iteration; this layout never changes.

Modes: PowerSGD is layer-wise by construction (one low-rank approximation per tensor, as in the paper and torch);
the codecs' `entire` mode (one compression of the whole flattened model) has no meaning for it.

The collective is injected: `allreduce(tensor)` must sum a contiguous float32 CPU tensor in place over every rank
(an MPI all-reduce through its numpy view, torch.distributed.all_reduce, or nothing in a one-rank run), so the
mathematics runs and is tested in one process as well as over MPI.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from anytimectl.comm.transport import Transport
from anytimectl.exchange import Exchange, ExchangeSpec, Marks, NoMarks
from anytimectl.runtime.errors import UsageError

from .codec import segments

#: Sums a contiguous float32 CPU tensor in place over every rank.
AllReduce = Callable[[torch.Tensor], None]
RESIDUALS = ("local", "aggregate")
#: torch's hook draws each Q seed as RandomState.randint(1_000_000_000).
_SEED_BOUND = 1_000_000_000
_REDRAW = 0x9051D  # keeps the redraw stream apart from the torch-compatible one


def no_allreduce(tensor: torch.Tensor) -> None:
    """The all-reduce of a one-rank run: the sum over one rank is the tensor itself."""


@dataclass(frozen=True)
class Matrix:
    """One compressed tensor: where it lives in the flat gradient, its n x m view, its rank, and where its P
    (n x rank) and Q (m x rank) live in the P and Q buffers."""

    index: int
    offset: int
    rows: int
    cols: int
    rank: int
    p_offset: int
    q_offset: int


def _shapes(layout: Iterable[Any]) -> list[tuple[int, int, tuple[int, ...]]]:
    """(offset, size, shape) of every trainable tensor, in offset order; an entry without a shape is 1-D."""
    entries = list(layout.values() if isinstance(layout, dict) else layout)
    offsets, sizes = segments(entries)
    shapes: dict[int, tuple[int, ...]] = {}
    for entry in entries:
        if getattr(entry, "trainable", True) is False:
            continue
        shape = getattr(entry, "shape", None)
        if shape is None and isinstance(entry, dict):
            shape = entry.get("shape")
        offset = int(entry.offset if hasattr(entry, "offset") else entry["offset"] if isinstance(entry, dict)
                     else entry[0])
        if shape is not None:
            shapes[offset] = tuple(int(d) for d in shape)
    out = []
    for offset, size in zip(offsets.tolist(), sizes.tolist(), strict=True):
        shape = shapes.get(offset, (size,))
        if int(np.prod(shape)) != size:
            raise ValueError(f"layout tensor at {offset} has shape {shape} but {size} elements")
        out.append((offset, size, shape))
    return out


def orthogonalize(matrix: torch.Tensor, epsilon: float = 0.0) -> None:
    """Orthonormalise the columns of `matrix` (rows x rank, rank <= rows) in place, as torch's hook does:
    Gram-Schmidt for rank <= 2, QR above. A column that is zero (or becomes zero) stays zero (torch: NaN)."""
    rank = matrix.shape[1]
    if rank > 2:
        q, _ = torch.linalg.qr(matrix)
        matrix.copy_(q)
        return
    for i in range(rank):
        col = matrix[:, i:i + 1]
        norm = torch.linalg.vector_norm(col)
        if epsilon == 0:
            if norm == 0:
                continue
            col /= norm
        else:
            col /= norm + epsilon
        if i + 1 < rank:
            rest = matrix[:, i + 1:]
            rest -= torch.sum(col * rest, dim=0, keepdim=True) * col


class PowerSGD:
    """One rank's PowerSGD state and step over a fixed layout (see the module docstring). Build it identically on
    every rank (same layout, options and seed); `world` is only needed for `residual="aggregate"`."""

    def __init__(self, layout: Iterable[Any], *, rank: int = 2, start_iter: int = 0, min_compression_rate: float = 2.0,
                 error_feedback: bool = True, warm_start: bool = True, epsilon: float = 0.0, seed: int = 0,
                 residual: str = "local", world: int = 1) -> None:
        if int(rank) < 1:
            raise UsageError(f"--rank {rank}: PowerSGD's matrix rank must be at least 1")
        if int(start_iter) < 0:
            raise UsageError(f"--powersgd-start-iter {start_iter} must be >= 0")
        if not float(min_compression_rate) >= 0:
            raise UsageError(f"--min-compression-rate {min_compression_rate} must be >= 0")
        if residual not in RESIDUALS:
            raise UsageError(f"PowerSGD residual '{residual}' is not one of {', '.join(RESIDUALS)}")
        if int(world) < 1 or int(seed) < 0 or float(epsilon) < 0:
            raise UsageError(f"world {world}, seed {seed} and epsilon {epsilon}: world >= 1, the others >= 0")
        self.rank, self.start_iter = int(rank), int(start_iter)
        self.min_compression_rate, self.epsilon = float(min_compression_rate), float(epsilon)
        self.error_feedback, self.warm_start = bool(error_feedback), bool(warm_start)
        self.seed, self.residual_kind, self.world = int(seed), residual, int(world)
        tensors = _shapes(layout)
        self.size = sum(size for _, size, _ in tensors)
        self.tensor_sizes = [size for _, size, _ in tensors]
        # torch's hook: a matrix is compressed if (n + m) r x rate < n m; grouped by shape, first appearance first
        by_shape: dict[tuple[int, int], list[int]] = {}
        uncompressed = []
        for index, (_, size, shape) in enumerate(tensors):
            rows, cols = (shape[0], size // shape[0]) if len(shape) >= 2 else (size, 1)
            r = min(rows, cols, self.rank)
            if len(shape) >= 2 and (rows + cols) * r * self.min_compression_rate < rows * cols:
                by_shape.setdefault((rows, cols), []).append(index)
            else:
                uncompressed.append(index)
        self.matrices: list[Matrix] = []
        p_offset = q_offset = 0
        for (rows, cols), indices in by_shape.items():
            r = min(rows, cols, self.rank)
            for index in indices:
                self.matrices.append(Matrix(index, tensors[index][0], rows, cols, r, p_offset, q_offset))
                p_offset += rows * r
                q_offset += cols * r
        self.p_size, self.q_size = p_offset, q_offset
        spans = [(tensors[i][0], tensors[i][1]) for i in uncompressed]
        self.uncompressed_spans = spans
        self.uncompressed_size = sum(n for _, n in spans)
        # one index per uncompressed element, for one gather and one scatter instead of a loop over tensors
        self._uncompressed_index = (torch.cat([torch.arange(o, o + n) for o, n in spans]) if spans
                                    else torch.zeros(0, dtype=torch.long))
        self.residual = torch.zeros(self.size, dtype=torch.float32) if self.error_feedback else None
        self.q = torch.zeros(self.q_size, dtype=torch.float32)
        self.q_ready = False  # whether self.q holds a warm-start Q
        self.draws = 0  # Q seeds drawn from the torch-compatible stream so far (restored by load)
        self._rng = np.random.RandomState(self.seed)
        self.last_p: torch.Tensor | None = None  # the orthogonalised summed P of the last compressed step

    # ----- accounting -----

    @property
    def dense_floats(self) -> int:
        """Floats of the dense gradient."""
        return self.size

    @property
    def compressed_floats(self) -> int:
        """Floats each rank hands to the all-reduces of one PowerSGD step: P's, Q's and the uncompressed part."""
        return self.p_size + self.q_size + self.uncompressed_size

    def floats_at(self, step: int) -> int:
        """Floats each rank hands to the all-reduces at `step` (the dense gradient before start_iter)."""
        return self.size if step < self.start_iter else self.compressed_floats

    def collectives_at(self, step: int) -> int:
        """All-reduces per step: one before start_iter, two after (one if nothing is compressed)."""
        return 1 if step < self.start_iter or not self.matrices else 2

    def describe(self) -> dict[str, Any]:
        """Options and layout facts, for run metadata."""
        return {"compressor": "powersgd", "mode": "layerwise", "rank": self.rank, "start_iter": self.start_iter,
                "min_compression_rate": self.min_compression_rate, "error_feedback": self.error_feedback,
                "warm_start": self.warm_start, "epsilon": self.epsilon, "residual": self.residual_kind,
                "compressed_tensors": len(self.matrices), "uncompressed_tensors": len(self.uncompressed_spans),
                "matrices": [[m.rows, m.cols, m.rank] for m in self.matrices],
                "floats_per_step": self.compressed_floats, "dense_floats": self.size,
                "sum": "float32 sum over ranks of each rank's contribution (not the mean)"}

    # ----- the step -----

    def _views(self, buffer: torch.Tensor, which: str) -> list[torch.Tensor]:
        if which == "p":
            return [buffer[m.p_offset:m.p_offset + m.rows * m.rank].view(m.rows, m.rank) for m in self.matrices]
        return [buffer[m.q_offset:m.q_offset + m.cols * m.rank].view(m.cols, m.rank) for m in self.matrices]

    def _matrix(self, flat: torch.Tensor, m: Matrix) -> torch.Tensor:
        return flat[m.offset:m.offset + m.rows * m.cols].view(m.rows, m.cols)

    def _draw_q(self) -> None:
        """A fresh orthonormal Q for every matrix, from the next seed of the torch-compatible stream."""
        generator = torch.Generator().manual_seed(int(self._rng.randint(_SEED_BOUND)))
        self.draws += 1
        for q in self._views(self.q, "q"):
            q.copy_(torch.randn(q.shape, generator=generator, dtype=torch.float32))
            orthogonalize(q, self.epsilon)

    def _warm_q(self, step: int) -> None:
        """Orthogonalise the kept Q; redraw a matrix's Q that is zero in a column (see the module docstring)."""
        for m, q in zip(self.matrices, self._views(self.q, "q"), strict=True):
            orthogonalize(q, self.epsilon)
            if bool((torch.linalg.vector_norm(q, dim=0) == 0).any()):
                words = np.random.SeedSequence([_REDRAW, self.seed, int(step), m.index]).generate_state(2)
                generator = torch.Generator().manual_seed(int(words[0]) << 32 | int(words[1]))
                q.copy_(torch.randn(q.shape, generator=generator, dtype=torch.float32))
                orthogonalize(q, self.epsilon)

    def step(self, contribution: np.ndarray | torch.Tensor, step: int, allreduce: AllReduce = no_allreduce,
             extra: np.ndarray | None = None, out: np.ndarray | None = None) -> np.ndarray:
        """The sum over ranks of every rank's (PowerSGD-approximated) contribution, float32 (size,), identical on
        every rank (written into `out` when given). `extra` (float32, optional) is summed in place, uncompressed,
        inside the first all-reduce."""
        flat = torch.as_tensor(contribution).detach().cpu().to(torch.float32).reshape(-1)
        if flat.numel() != self.size:
            raise ValueError(f"gradient of {flat.numel()} elements for a layout of {self.size}")
        extra_t = torch.from_numpy(extra) if extra is not None else torch.zeros(0, dtype=torch.float32)
        if extra_t.dtype != torch.float32:
            raise ValueError("extra must be float32")
        result = torch.from_numpy(out) if out is not None else torch.empty(self.size, dtype=torch.float32)
        if result.numel() != self.size or result.dtype != torch.float32:
            raise ValueError(f"out must be float32 of {self.size} elements")
        if step < self.start_iter:  # plain all-reduce, as torch before start_powerSGD_iter
            buffer = torch.cat([flat, extra_t])
            allreduce(buffer)
            extra_t.copy_(buffer[self.size:])
            result.copy_(buffer[:self.size])
            return result.numpy()
        if self.residual is not None:  # M = g + e, built in the residual's own memory (one pass, no new buffer)
            self.residual.add_(flat)
            matrix = self.residual
        else:
            matrix = flat
        if not self.warm_start or not self.q_ready:
            self._draw_q()
        else:
            self._warm_q(step)
        qs = self._views(self.q, "q")
        first = torch.empty(self.p_size + self.uncompressed_size + extra_t.numel(), dtype=torch.float32)
        p_flat = first[:self.p_size]
        ps = self._views(p_flat, "p")
        for m, p, q in zip(self.matrices, ps, qs, strict=True):
            torch.mm(self._matrix(matrix, m), q, out=p)
        uncompressed = first[self.p_size:self.p_size + self.uncompressed_size]
        torch.index_select(matrix, 0, self._uncompressed_index, out=uncompressed)
        first[self.p_size + self.uncompressed_size:] = extra_t
        allreduce(first)
        extra_t.copy_(first[self.p_size + self.uncompressed_size:])
        for p in ps:
            orthogonalize(p, self.epsilon)
        for m, p, q in zip(self.matrices, ps, qs, strict=True):
            torch.mm(self._matrix(matrix, m).t(), p, out=q)
        if self.residual is not None and self.residual_kind == "local":
            # e = M - this rank's own share: M - P Q_local^T for the compressed (in place), 0 for the rest
            for m, p, q in zip(self.matrices, ps, qs, strict=True):
                self._matrix(self.residual, m).addmm_(p, q.t(), alpha=-1.0)
            self.residual.index_fill_(0, self._uncompressed_index, 0.0)
        if self.matrices:
            allreduce(self.q)
        for m, p, q in zip(self.matrices, ps, qs, strict=True):
            torch.mm(p, q.t(), out=self._matrix(result, m))
        result.index_copy_(0, self._uncompressed_index, uncompressed)
        if self.residual is not None and self.residual_kind == "aggregate":
            self.residual.sub_(result, alpha=1.0 / self.world)  # torch's: M - the decompressed mean
        self.q_ready = self.warm_start
        self.last_p = p_flat
        return result.numpy()

    # ----- checkpoints -----

    def state(self) -> dict[str, Any]:
        """Q (warm start), the residual (error feedback) and the seed stream's position, for checkpoints."""
        return {"q": self.q.numpy().copy(), "q_ready": self.q_ready, "draws": self.draws,
                "residual": self.residual.numpy().copy() if self.residual is not None else None}

    def load(self, state: dict[str, Any] | None) -> None:
        """Restore what `state` returned (None: back to the start)."""
        state = state or {}
        q = state.get("q")
        if q is not None and np.asarray(q).size != self.q_size:
            raise ValueError(f"checkpointed Q of {np.asarray(q).size} floats for a layout whose Q has {self.q_size}")
        if q is None:
            self.q.zero_()
        else:
            self.q.copy_(torch.from_numpy(np.asarray(q, dtype=np.float32).reshape(-1)))
        self.q_ready = bool(state.get("q_ready", False)) and q is not None
        self._rng = np.random.RandomState(self.seed)
        self.draws = 0
        for _ in range(int(state.get("draws", 0))):
            self._rng.randint(_SEED_BOUND)
            self.draws += 1
        if self.residual is not None:
            residual = state.get("residual")
            if residual is None:
                self.residual.zero_()
            else:
                residual = np.asarray(residual, dtype=np.float32).reshape(-1)
                if residual.size != self.size:
                    raise ValueError(f"residual of {residual.size} elements for a gradient of {self.size}")
                self.residual.copy_(torch.from_numpy(residual))


class _Collectives:
    """The exchange's all-reduce for PowerSGD: the transport's in-place sum, with the caller's clock marked and
    the step's seconds split around the collectives. The first all-reduce (P's and the uncompressed values) ends
    the compute phase (`encoded`, then `sent` at the moment every rank was ready); the last one (Q's) ends the
    receive phase (`received`); what runs between them (orthogonalising P, Q = M^T P) counts as encoding, what
    runs after the last as decoding."""

    def __init__(self, comm: Transport | None, marks: Marks, collectives: int) -> None:
        self.comm, self.marks, self.left = comm, marks, collectives
        self.calls = 0
        self.start = self.last_end = time.perf_counter()
        self.encode = 0.0
        self.nbytes = 0

    def __call__(self, tensor: torch.Tensor) -> None:
        now = time.perf_counter()
        self.encode += now - self.last_end
        if self.calls == 0:
            self.marks.encoded()
        if self.comm is not None:
            self.comm.allreduce_sum(tensor.numpy())
            self.nbytes += tensor.numel() * 4
        self.calls += 1
        if self.calls == 1:
            self.marks.sent(self.comm.ready_at if self.comm is not None else None)
        if self.calls == self.left:
            self.marks.received()
        self.last_end = time.perf_counter()


class PowerSGDExchange(Exchange):
    """`powersgd` as a gradient exchange (`anytimectl.exchange`): linear, so summed by all-reduce; two
    collectives a step, [P | uncompressed | the float32 remainder] then [Q]. Bytes: the payload is the floats
    of P, Q and the uncompressed tensors (its packing bound is the same: float32 factors leave nothing to pack),
    sent and received once per collective as every all-reduce is counted."""

    linear = True

    def __init__(self, spec: ExchangeSpec, options: Any, comm: Transport | None) -> None:
        super().__init__(spec, options, comm)
        self.powersgd = self._build(options.uses_error_feedback)

    def _build(self, error_feedback: bool) -> PowerSGD:
        o, spec = self.options, self.spec
        shapes = spec.shapes or tuple((n,) for _, n in spec.layout)
        layout = [{"offset": o_, "size": n, "shape": shape}
                  for (o_, n), shape in zip(spec.layout, shapes, strict=True)]
        return PowerSGD(layout, rank=o.powersgd_rank, start_iter=o.powersgd_start_iter,
                        min_compression_rate=o.min_compression_rate, error_feedback=error_feedback,
                        warm_start=o.warm_start, seed=spec.seed, world=spec.size)

    def exchange(self, contribution: np.ndarray, step: int, marks: Marks | None = None) -> np.ndarray:
        flat = np.ascontiguousarray(contribution, dtype=np.float32).reshape(-1)
        if flat.size != self.spec.length:
            raise ValueError(f"contribution of {flat.size} floats for an exchange of {self.spec.length}")
        trainable, psgd = self.spec.trainable, self.powersgd
        collectives = _Collectives(self.comm, marks or NoMarks(), psgd.collectives_at(step))
        extra = flat[trainable:]
        reduced = np.empty(self.spec.length, dtype=np.float32)
        psgd.step(flat[:trainable], step, collectives, extra=extra, out=reduced[:trainable])
        reduced[trainable:] = extra
        s, floats = self.stats, psgd.floats_at(step)
        s.payload_bytes = 4 * floats
        s.bound_bytes = 4.0 * floats
        s.values_sent = floats
        s.encode_time, s.decode_time = collectives.encode, time.perf_counter() - collectives.last_end
        s.payload_total = 4 * floats * self.world
        s.sent_bytes = s.received_bytes = collectives.nbytes
        return reduced

    def warm_up(self) -> None:
        throwaway = self._build(False)
        gradient = np.random.default_rng(self.spec.seed).standard_normal(self.spec.trainable).astype(np.float32)
        throwaway.step(gradient, throwaway.start_iter)

    def state(self) -> dict[str, Any] | None:
        return self.powersgd.state()

    def load(self, state: dict[str, Any] | None) -> None:
        self.powersgd.load(state)

    def describe(self) -> dict[str, Any]:
        return {**self.powersgd.describe(), "pattern": "all-reduce"}
