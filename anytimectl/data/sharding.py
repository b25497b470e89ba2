"""Each worker's share of a dataset and the batches it draws from it: disjoint shards from one seeded
permutation, the fixed evaluation subset, the checks a command makes before launch (enough examples for the
workers and their batches), and `BatchStream`, the endless reshuffled stream a worker trains from."""

from __future__ import annotations

import numpy as np

from anytimectl.data.datasets import Dataset
from anytimectl.runtime.errors import UsageError


def check_enough_examples(n_train: int, workers: int, dataset: str = "the dataset") -> None:
    """Every worker needs at least one training example of its own (shards are disjoint): check before launch."""
    if workers > n_train:
        raise UsageError(
            f"--workers {workers}: {dataset} has only {n_train} training example{'s' * (n_train != 1)}, and every "
            f"worker needs at least one; use --workers {n_train} or fewer"
        )


def check_whole_batches(batch: int, workers: int, n_train: int, dataset: str) -> None:
    """A method whose every step takes `batch` distinct examples on each of `workers` workers (one all-reduce of
    one step's gradients) needs at least that many training examples."""
    if batch * workers > n_train:
        raise UsageError(f"--batch-size {batch} x {workers} workers is more than the {n_train} training examples "
                         f"of {dataset}; lower --batch-size")


def test_size_used(n_test: int, size: int) -> int:
    """How many test examples `test_subset` evaluates for --test-size `size`: the whole split for -1 or for a
    size beyond it. Record this, not the requested size."""
    if size == 0 or size < -1:
        raise UsageError(f"--test-size {size} is invalid; use -1 for the whole test split or a positive count")
    return n_test if size == -1 or size >= n_test else size


test_size_used.__test__ = False  # type: ignore[attr-defined]  # not a pytest test despite the name


def shard_indices(n: int, workers: int, worker_index: int, seed: int) -> np.ndarray:
    """Disjoint shards from one seeded permutation, so workers never train on the same example in an epoch
    (the old AMB numpy path gave every worker the full set)."""
    if workers < 1 or not 0 <= worker_index < workers:
        raise ValueError(f"worker_index {worker_index} must be in [0, {workers}) with workers >= 1")
    order = np.random.default_rng(seed).permutation(n)
    return np.array_split(order, workers)[worker_index]


def test_subset(ds: Dataset, size: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """A fixed evaluation subset, so accuracy curves within and across runs are measured on the same examples.

    A size beyond the test split (or -1) gives the whole split: its length, `test_size_used(n_test, size)`, is
    the size to record."""
    n = len(ds.x_test)
    if test_size_used(n, size) == n:
        return ds.x_test, ds.y_test
    pick = np.random.default_rng(seed).permutation(n)[:size]
    return ds.x_test[pick], ds.y_test[pick]


test_subset.__test__ = False  # type: ignore[attr-defined]  # not a pytest test despite the name


class BatchStream:
    """An endless, reshuffled-per-epoch stream over one worker's shard. AMB workers look at a full batch but only
    consume what they processed, so no example is skipped (the original discarded unprocessed partitions)."""

    def __init__(self, x: np.ndarray, y: np.ndarray, seed: int, rank: int) -> None:
        if len(x) != len(y):
            raise ValueError(f"x has {len(x)} rows but y has {len(y)}")
        if len(x) == 0:
            raise UsageError("a worker's data shard is empty; use fewer workers than training examples")
        self._x, self._y = x, y  # kept by reference: only peek() copies, and only the rows it returns
        self._seed, self._rank = seed, rank
        self._size = len(x)
        self._consumed = 0
        self._orders: dict[int, np.ndarray] = {}

    def _order(self, epoch: int) -> np.ndarray:
        if epoch not in self._orders:
            self._orders[epoch] = np.random.default_rng([self._seed, self._rank, epoch]).permutation(self._size)
        return self._orders[epoch]

    def _indices(self, n: int) -> np.ndarray:
        if n < 0:
            raise ValueError(f"n must be >= 0, got {n}")
        epoch, offset = divmod(self._consumed, self._size)
        pieces, need = [], n
        while need > 0:
            chunk = self._order(epoch)[offset : offset + need]
            pieces.append(chunk)
            need -= len(chunk)
            epoch, offset = epoch + 1, 0
        return np.concatenate(pieces) if pieces else np.empty(0, dtype=np.int64)

    def peek(self, n: int) -> tuple[np.ndarray, np.ndarray]:
        """The next n examples without consuming them; a worker cut short by its time limit keeps the rest."""
        idx = self._indices(n)
        return self._x[idx], self._y[idx]

    def advance(self, n: int) -> None:
        """Consume the first n peeked examples."""
        if n < 0:
            raise ValueError(f"n must be >= 0, got {n}")
        self._consumed += n
        current = self._consumed // self._size
        for epoch in [e for e in self._orders if e < current]:
            del self._orders[epoch]

    @property
    def position(self) -> int:
        """Examples consumed so far: with (seed, rank) this is the stream's whole state (its orders derive from
        them), which is what a checkpoint stores."""
        return self._consumed

    @property
    def epochs(self) -> float:
        """Fractional passes over the shard, for logging progress the way the originals did."""
        return self._consumed / self._size
