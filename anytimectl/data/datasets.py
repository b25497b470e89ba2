"""Datasets as plain numpy arrays, sharded per worker, so every backend (TensorFlow, torch, numpy) trains on the
same examples in the same order and no framework is imported just to read data.

The originals either let every worker permute the full set (old AMB numpy path) or relied on tfds downloads;
here the small sets ship with scikit-learn and the large ones are read from files the user already has, with
one-line errors that say which file is missing or broken and where to get it.
"""

from __future__ import annotations

import gzip
import importlib
import importlib.util
import io
import math
import os
import pickle
import tarfile
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import numpy as np

from anytimectl.data import DATASETS
from anytimectl.runtime.errors import UsageError

_SPLIT_SEED = 0
_TOY_DIM, _TOY_CLASSES, _TOY_TRAIN, _TOY_TEST = 100, 10, 8192, 1024

_IDX_FILES = (
    "train-images-idx3-ubyte",
    "train-labels-idx1-ubyte",
    "t10k-images-idx3-ubyte",
    "t10k-labels-idx1-ubyte",
)
_IDX_IMAGES_MAGIC = 0x00000803
_IDX_LABELS_MAGIC = 0x00000801
_IDX_SOURCES = {
    "mnist": (
        "MNIST",
        "MNIST",
        "https://ossci-datasets.s3.amazonaws.com/mnist/ (or torchvision's MNIST download)",
    ),
    "fashion-mnist": (
        "Fashion-MNIST",
        "FashionMNIST",
        "https://github.com/zalandoresearch/fashion-mnist (or torchvision's FashionMNIST download)",
    ),
}

_CIFAR_TRAIN = tuple(f"data_batch_{i}" for i in range(1, 6))
_CIFAR_FILES = (*_CIFAR_TRAIN, "test_batch")
_CIFAR_DIR = "cifar-10-batches-py"
_CIFAR_ARCHIVE = "cifar-10-python.tar.gz"
_CIFAR_SOURCE = "https://www.cs.toronto.edu/~kriz/cifar.html (CIFAR-10 python version)"


@dataclass
class Dataset:
    """Train and test splits as float32 inputs (images NHWC in [0, 1]) and int64 labels."""

    name: str
    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    num_classes: int

    @property
    def input_shape(self) -> tuple[int, ...]:
        """Per-example shape, which is what model builders need."""
        return tuple(self.x_train.shape[1:])


def _split(x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """A fixed 80/20 split, independent of --seed, so test accuracy is comparable across runs."""
    order = np.random.default_rng(_SPLIT_SEED).permutation(len(x))
    cut = int(len(x) * 0.8)
    train, test = order[:cut], order[cut:]
    return x[train], y[train], x[test], y[test]


def _sklearn_data_file(name: str) -> Path | None:
    """The file scikit-learn ships `name` in, found without importing scikit-learn.

    Importing `sklearn.datasets` costs about a second of CPU (it pulls in scipy and pandas) in every launcher
    and every rank that reads the built-in sets, which is most of anytimectl's processes; reading the shipped
    file takes milliseconds. None where scikit-learn keeps its data elsewhere, so the caller falls back to
    scikit-learn's own loader.
    """
    spec = importlib.util.find_spec("sklearn")
    if spec is None or not spec.submodule_search_locations:
        return None
    for root in spec.submodule_search_locations:
        path = Path(root) / "datasets" / "data" / name
        if path.is_file():
            return path
    return None


def _sklearn_table(name: str) -> tuple[np.ndarray, np.ndarray]:
    """scikit-learn's built-in set `name` ("digits", "iris") as (features, labels), as its `load_NAME().data` and
    `.target` give them: read from the file it ships (`_sklearn_data_file`), or through its loader where that file
    is not found."""
    path = _sklearn_data_file("digits.csv.gz" if name == "digits" else f"{name}.csv")
    if path is None:
        from sklearn import datasets

        bunch = getattr(datasets, f"load_{name}")()
        return bunch.data, bunch.target
    # digits.csv.gz is the table alone; iris.csv starts with a header line (count, features, species names)
    table = np.loadtxt(path, delimiter=",", skiprows=0 if name == "digits" else 1)
    return table[:, :-1], table[:, -1].astype(np.int64)


def _digits() -> Dataset:
    pixels, labels = _sklearn_table("digits")
    x = (pixels.reshape(-1, 8, 8).astype(np.float32) / 16.0)[..., None]
    y = labels.astype(np.int64)
    return Dataset("digits", *_split(x, y), num_classes=10)


def _iris() -> Dataset:
    features, labels = _sklearn_table("iris")
    x_train, y_train, x_test, y_test = _split(features.astype(np.float64), labels.astype(np.int64))
    # Statistics from the train split only, so the test split stays held out.
    mu, sd = x_train.mean(axis=0), x_train.std(axis=0)
    sd[sd == 0] = 1.0
    return Dataset(
        "iris",
        ((x_train - mu) / sd).astype(np.float32),
        y_train,
        ((x_test - mu) / sd).astype(np.float32),
        y_test,
        num_classes=3,
    )


def _toy() -> Dataset:
    """Random inputs and labels, as the original's toy model: only for timing, nothing to learn."""
    rng = np.random.default_rng(_SPLIT_SEED)
    x_train = rng.standard_normal((_TOY_TRAIN, _TOY_DIM), dtype=np.float32)
    y_train = rng.integers(0, _TOY_CLASSES, _TOY_TRAIN, dtype=np.int64)
    x_test = rng.standard_normal((_TOY_TEST, _TOY_DIM), dtype=np.float32)
    y_test = rng.integers(0, _TOY_CLASSES, _TOY_TEST, dtype=np.int64)
    return Dataset("toy", x_train, y_train, x_test, y_test, num_classes=_TOY_CLASSES)


# ---------------------------------------------------------------------------------------------------- idx (MNIST)


def _read_bytes(path: Path) -> bytes:
    try:
        raw = path.read_bytes()
        return gzip.decompress(raw) if path.name.endswith(".gz") else raw
    except (OSError, EOFError, zlib.error) as exc:
        raise UsageError(f"cannot read '{path}' ({exc}); re-download it or remove the broken file") from None


def _parse_idx(path: Path, magic: int) -> np.ndarray:
    """Read one idx file with numpy; the format is a big-endian magic, big-endian dims, then uint8 data."""
    data = _read_bytes(path)
    ndim = 3 if magic == _IDX_IMAGES_MAGIC else 1
    kind = "images" if magic == _IDX_IMAGES_MAGIC else "labels"
    header = 4 + 4 * ndim
    if len(data) < header:
        raise UsageError(f"'{path}' is truncated: {len(data)} bytes, shorter than the {header}-byte idx header")
    found = int.from_bytes(data[:4], "big")
    if found != magic:
        raise UsageError(
            f"'{path}' has idx magic 0x{found:08x}, expected 0x{magic:08x} for {kind}; is it the right file?"
        )
    dims = tuple(int(d) for d in np.frombuffer(data, dtype=">u4", count=ndim, offset=4))
    expected = header + int(np.prod(dims, dtype=np.int64))
    if len(data) != expected:
        raise UsageError(
            f"'{path}' has {len(data)} bytes but its header {list(dims)} needs {expected}; the file is "
            f"{'truncated' if len(data) < expected else 'too long'}, re-download it"
        )
    return np.frombuffer(data, dtype=np.uint8, offset=header).reshape(dims)


def _find_idx_dir(name: str, data_dir: Path) -> tuple[Path, dict[str, Path]]:
    _, torch_dir, source = _IDX_SOURCES[name]
    candidates = [data_dir, data_dir / torch_dir / "raw"]
    best: tuple[Path, dict[str, Path]] | None = None
    for folder in candidates:
        found = {}
        for stem in _IDX_FILES:
            for fname in (stem, stem + ".gz"):
                if (folder / fname).is_file():
                    found[stem] = folder / fname
                    break
        if len(found) == len(_IDX_FILES):
            return folder, found
        if best is None or len(found) > len(best[1]):
            best = (folder, found)
    assert best is not None
    folder, found = best
    missing = ", ".join(f"{s}[.gz]" for s in _IDX_FILES if s not in found)
    raise UsageError(
        f"{name} files missing in '{folder}': {missing} (looked in '{data_dir}' and "
        f"'{data_dir / torch_dir / 'raw'}'); get the four idx files from {source}"
    )


def _idx_dataset(name: str, data_dir: Path) -> Dataset:
    _, files = _find_idx_dir(name, data_dir)
    parts = []
    for split in ("train", "t10k"):
        images_path, labels_path = files[f"{split}-images-idx3-ubyte"], files[f"{split}-labels-idx1-ubyte"]
        images = _parse_idx(images_path, _IDX_IMAGES_MAGIC)
        labels = _parse_idx(labels_path, _IDX_LABELS_MAGIC)
        if len(labels) != len(images):
            raise UsageError(
                f"'{labels_path}' has {len(labels)} labels but '{images_path}' has {len(images)} images; "
                "the pair must match, re-download them"
            )
        if len(images) == 0:
            raise UsageError(f"'{images_path}' holds 0 images; a {split} split needs at least one, re-download it")
        if len(labels) and labels.max() > 9:
            raise UsageError(f"'{labels_path}' has label {int(labels.max())}; {name} labels must be 0-9")
        parts.append(((images.astype(np.float32) / 255.0)[..., None], labels.astype(np.int64)))
    (x_train, y_train), (x_test, y_test) = parts
    return Dataset(name, x_train, y_train, x_test, y_test, num_classes=10)


# ------------------------------------------------------------------------------------------------------- CIFAR-10

_PICKLE_ALLOWED = {
    ("numpy._core.multiarray", "_reconstruct"),
    ("numpy._core.numeric", "_frombuffer"),
    ("numpy", "ndarray"),
    ("numpy", "dtype"),
    ("_codecs", "encode"),  # how protocol-2 pickles written by Python 3 spell bytes
    ("builtins", "bytes"),  # ... and empty bytes (an array with no rows), as __builtin__.bytes
}


class _ArrayUnpickler(pickle.Unpickler):
    """CIFAR ships as pickles; allow only what numpy arrays need so a stray file cannot run code."""

    def find_class(self, module: str, name: str) -> object:
        module = module.replace("numpy.core.", "numpy._core.") if module.startswith("numpy.core.") else module
        module = "builtins" if module == "__builtin__" else module
        if (module, name) not in _PICKLE_ALLOWED:
            raise pickle.UnpicklingError(f"refusing to load {module}.{name}")
        return getattr(importlib.import_module(module), name)


def _load_cifar_batch(raw: bytes, where: str) -> tuple[np.ndarray, np.ndarray]:
    try:
        batch = _ArrayUnpickler(io.BytesIO(raw), encoding="bytes").load()
    except Exception as exc:  # any unpickling failure means a bad file
        msg = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise UsageError(
            f"'{where}' is not a CIFAR-10 python batch ({msg}); re-download it from {_CIFAR_SOURCE}"
        ) from None
    if not isinstance(batch, dict) or b"data" not in batch or b"labels" not in batch:
        raise UsageError(f"'{where}' lacks the b'data' and b'labels' entries of a CIFAR-10 python batch")
    data = np.asarray(batch[b"data"])
    labels = np.asarray(batch[b"labels"])
    if data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3072:
        raise UsageError(
            f"'{where}' has data {data.dtype} {list(data.shape)}; expected uint8 rows of 3072 (3x32x32)"
        )
    if len(data) == 0:
        raise UsageError(f"'{where}' holds 0 images; a CIFAR-10 batch has 10000, re-download it from {_CIFAR_SOURCE}")
    if labels.ndim != 1 or len(labels) != len(data):
        raise UsageError(f"'{where}' has {labels.size} labels for {len(data)} images; the counts must match")
    if len(labels) and (not np.issubdtype(labels.dtype, np.integer) or labels.min() < 0 or labels.max() > 9):
        raise UsageError(f"'{where}' has labels outside 0-9; it is not a CIFAR-10 batch")
    return data, labels.astype(np.int64)


def _read_cifar_raw(data_dir: Path) -> dict[str, tuple[bytes, str]]:
    """Batch name -> (pickle bytes, where it came from), from a folder or straight out of the archive."""
    for folder in (data_dir, data_dir / _CIFAR_DIR):
        if all((folder / f).is_file() for f in _CIFAR_FILES):
            out = {}
            for f in _CIFAR_FILES:
                try:
                    out[f] = ((folder / f).read_bytes(), str(folder / f))
                except OSError as exc:
                    raise UsageError(f"cannot read '{folder / f}' ({exc}); check its permissions") from None
            return out
    archive = data_dir / _CIFAR_ARCHIVE
    if archive.is_file():
        try:
            with tarfile.open(archive, "r:gz") as tar:
                members = {Path(m.name).name: m for m in tar.getmembers() if m.isfile()}
                missing = [f for f in _CIFAR_FILES if f not in members]
                if missing:
                    raise UsageError(
                        f"'{archive}' lacks {', '.join(missing)}; re-download it from {_CIFAR_SOURCE}"
                    )
                out = {}
                for f in _CIFAR_FILES:
                    handle = tar.extractfile(members[f])
                    assert handle is not None
                    out[f] = (handle.read(), f"{archive}:{members[f].name}")
                return out
        except (tarfile.TarError, OSError, EOFError, zlib.error) as exc:
            raise UsageError(
                f"cannot read archive '{archive}' ({exc}); re-download it from {_CIFAR_SOURCE}"
            ) from None
    missing_here = [f for f in _CIFAR_FILES if not (data_dir / f).is_file()]
    raise UsageError(
        f"cifar10 files missing: {', '.join(missing_here)} not in '{data_dir}' or '{data_dir / _CIFAR_DIR}', "
        f"and no '{archive}'; get the python version from {_CIFAR_SOURCE}"
    )


def _cifar10(data_dir: Path) -> Dataset:
    raw = _read_cifar_raw(data_dir)
    batches = {}
    for f in _CIFAR_FILES:
        blob, where = raw.pop(f)  # drop each pickle as soon as it is parsed, to keep peak memory near one copy
        batches[f] = _load_cifar_batch(blob, where)
        del blob

    def to_images(names: tuple[str, ...]) -> tuple[np.ndarray, np.ndarray]:
        total = sum(len(batches[n][0]) for n in names)
        x = np.empty((total, 32, 32, 3), dtype=np.float32)
        y = np.empty(total, dtype=np.int64)
        at = 0
        for n in names:
            data, labels = batches.pop(n)
            k = len(data)
            x[at : at + k] = data.reshape(k, 3, 32, 32).transpose(0, 2, 3, 1)
            y[at : at + k] = labels
            at += k
        x /= 255.0
        return x, y

    x_train, y_train = to_images(_CIFAR_TRAIN)
    x_test, y_test = to_images(("test_batch",))
    return Dataset("cifar10", x_train, y_train, x_test, y_test, num_classes=10)


# --------------------------------------------------------------------------------------------------- public API


def _dataset_key(name: str) -> str:
    key = name.strip().lower().replace("_", "-")
    if key == "fashionmnist":
        key = "fashion-mnist"
    if key not in DATASETS:
        raise UsageError(f"unknown dataset '{name}'; use one of {', '.join(DATASETS)}")
    return key


def _data_folder(key: str, data_dir: str | Path | None) -> Path:
    """The --data-dir of a file-based dataset, which must be given and exist."""
    if data_dir is None:
        if key == "cifar10":
            raise UsageError(
                f"cifar10 needs --data-dir DIR holding {', '.join(_CIFAR_FILES)} (or {_CIFAR_DIR}/ or "
                f"{_CIFAR_ARCHIVE}), the CIFAR-10 python version from {_CIFAR_SOURCE}"
            )
        title, _, source = _IDX_SOURCES[key]
        raise UsageError(
            f"{key} needs --data-dir DIR holding {', '.join(f + '[.gz]' for f in _IDX_FILES)} "
            f"(the {title} idx files, from {source})"
        )
    folder = Path(data_dir).expanduser()
    if not folder.is_dir():
        raise UsageError(f"--data-dir '{folder}' does not exist or is not a directory; create it or fix the path")
    return folder


def load_dataset(name: str, data_dir: str | Path | None = None, seed: int = 0) -> Dataset:
    """One entry point for every backend. `seed` is accepted for symmetry but splits are fixed on purpose, so the
    test split (and the toy data) is the same in every run and accuracies compare across seeds."""
    del seed
    key = _dataset_key(name)
    if key == "digits":
        return _digits()
    if key == "iris":
        return _iris()
    if key == "toy":
        return _toy()
    folder = _data_folder(key, data_dir)
    if key == "cifar10":
        return _cifar10(folder)
    return _idx_dataset(key, folder)


class DatasetInfo(NamedTuple):
    """What the CLI needs to check a run before launching it: split sizes, per-example shape, classes."""

    n_train: int
    n_test: int
    input_shape: tuple[int, ...]
    num_classes: int


def describe_dataset(name: str, data_dir: str | Path | None = None) -> DatasetInfo:
    """Sizes and shape of a dataset, checked for presence and well-formedness, without loading its images.

    MNIST-style sets: the idx headers (16 bytes each) are checked against the file sizes (for .gz files, the
    uncompressed size in the gzip trailer), and the small label files are read in full. CIFAR-10: each batch is
    unpickled and checked (about a second for the six files; the float conversion that loading does is skipped).
    Every problem is the same one-line UsageError that `load_dataset` would raise later.
    """
    key = _dataset_key(name)
    if key in ("digits", "iris", "toy"):
        ds = load_dataset(key)  # built in and small: loading is as cheap as describing
        return DatasetInfo(len(ds.x_train), len(ds.x_test), ds.input_shape, ds.num_classes)
    folder = _data_folder(key, data_dir)
    if key == "cifar10":
        raw = _read_cifar_raw(folder)
        counts = {}
        for f in _CIFAR_FILES:
            blob, where = raw.pop(f)
            counts[f] = len(_load_cifar_batch(blob, where)[0])
            del blob
        return DatasetInfo(sum(counts[f] for f in _CIFAR_TRAIN), counts["test_batch"], (32, 32, 3), 10)
    _, files = _find_idx_dir(key, folder)
    sizes = []
    for split in ("train", "t10k"):
        images_path, labels_path = files[f"{split}-images-idx3-ubyte"], files[f"{split}-labels-idx1-ubyte"]
        dims = _idx_dims(images_path, _IDX_IMAGES_MAGIC)
        labels = _parse_idx(labels_path, _IDX_LABELS_MAGIC)
        if len(labels) != dims[0]:
            raise UsageError(
                f"'{labels_path}' has {len(labels)} labels but '{images_path}' has {dims[0]} images; "
                "the pair must match, re-download them"
            )
        if dims[0] == 0:
            raise UsageError(f"'{images_path}' holds 0 images; a {split} split needs at least one, re-download it")
        if len(labels) and labels.max() > 9:
            raise UsageError(f"'{labels_path}' has label {int(labels.max())}; {key} labels must be 0-9")
        sizes.append(dims)
    (train, test) = sizes
    return DatasetInfo(train[0], test[0], (*train[1:], 1), 10)


def _idx_dims(path: Path, magic: int) -> tuple[int, ...]:
    """An idx file's dimensions from its header, checked against the file's (uncompressed) size."""
    ndim = 3 if magic == _IDX_IMAGES_MAGIC else 1
    header = 4 + 4 * ndim
    try:
        if path.name.endswith(".gz"):
            with gzip.open(path, "rb") as stream:
                head = stream.read(header)
            with open(path, "rb") as stream:  # the gzip trailer holds the uncompressed size modulo 2^32
                stream.seek(-4, os.SEEK_END)
                total = int.from_bytes(stream.read(4), "little")
            modulo = 2**32
        else:
            with open(path, "rb") as stream:
                head = stream.read(header)
            total, modulo = path.stat().st_size, None
    except (OSError, EOFError, zlib.error, gzip.BadGzipFile) as exc:
        raise UsageError(f"cannot read '{path}' ({exc}); re-download it or remove the broken file") from None
    if len(head) < header:
        raise UsageError(f"'{path}' is truncated: {len(head)} bytes, shorter than the {header}-byte idx header")
    found = int.from_bytes(head[:4], "big")
    if found != magic:
        kind = "images" if magic == _IDX_IMAGES_MAGIC else "labels"
        raise UsageError(
            f"'{path}' has idx magic 0x{found:08x}, expected 0x{magic:08x} for {kind}; is it the right file?"
        )
    dims = tuple(int.from_bytes(head[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim))
    expected = header + math.prod(dims)
    if total != (expected % modulo if modulo else expected):
        raise UsageError(
            f"'{path}' has {total} bytes{' (uncompressed, modulo 4 GiB)' if modulo else ''} but its header "
            f"{list(dims)} needs {expected}; re-download it"
        )
    return dims
