"""Dataset registry, file parsers (on synthetic files), sharding, the test subset and the batch stream."""

import gzip
import io
import pickle
import subprocess
import sys
import tarfile

import numpy as np
import pytest

from anytimectl import data
from anytimectl.runtime.errors import UsageError

# ---------------------------------------------------------------------------------------------- built-in sets


def test_digits():
    ds = data.load_dataset("digits")
    assert ds.input_shape == (8, 8, 1) and ds.num_classes == 10
    assert ds.x_train.dtype == np.float32 and ds.y_train.dtype == np.int64
    assert len(ds.x_train) + len(ds.x_test) == 1797
    assert len(ds.x_test) == pytest.approx(1797 * 0.2, abs=1)
    assert 0.0 <= ds.x_train.min() and ds.x_train.max() <= 1.0
    again = data.load_dataset("digits", seed=5)  # the split does not move with --seed
    np.testing.assert_array_equal(ds.y_test, again.y_test)


def test_iris():
    ds = data.load_dataset("iris")
    assert ds.x_train.shape == (120, 4) and ds.x_test.shape == (30, 4)
    assert ds.num_classes == 3 and ds.x_train.dtype == np.float32 and ds.y_test.dtype == np.int64
    np.testing.assert_allclose(ds.x_train.mean(axis=0), 0, atol=1e-5)
    np.testing.assert_allclose(ds.x_train.std(axis=0), 1, atol=1e-4)


@pytest.mark.parametrize("name", ["digits", "iris"])
def test_built_in_sets_read_from_scikit_learns_files_equal_its_loaders(name, monkeypatch):
    from sklearn import datasets as sklearn_datasets

    from anytimectl.data import datasets

    direct = datasets._sklearn_table(name)
    bunch = getattr(sklearn_datasets, f"load_{name}")()
    for got, want in zip(direct, (bunch.data, bunch.target), strict=True):
        np.testing.assert_array_equal(got, want)
    # scikit-learn keeping its files elsewhere falls back to its loader, with the same data set
    monkeypatch.setattr(datasets, "_sklearn_data_file", lambda _name: None)
    fallback = data.load_dataset(name)
    monkeypatch.undo()
    original = data.load_dataset(name)
    for field in ("x_train", "y_train", "x_test", "y_test"):
        np.testing.assert_array_equal(getattr(fallback, field), getattr(original, field))


def test_built_in_sets_load_without_importing_scikit_learn():
    """A launcher or rank that reads digits does not pay scikit-learn's second of import (scipy, pandas)."""
    code = ("import sys; from anytimectl import data; data.load_dataset('digits'); data.load_dataset('iris'); "
            "print(sorted(m for m in ('sklearn', 'scipy', 'pandas') if m in sys.modules))")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "[]"


def test_toy():
    ds = data.load_dataset("toy")
    assert ds.x_train.shape == (8192, 100) and ds.x_test.shape == (1024, 100)
    assert ds.x_train.dtype == np.float32 and ds.y_train.dtype == np.int64
    assert set(np.unique(ds.y_train)) == set(range(10))
    np.testing.assert_array_equal(ds.x_train, data.load_dataset("toy", seed=3).x_train)


def test_unknown_dataset_lists_names():
    with pytest.raises(UsageError, match=r"unknown dataset 'svhn'; use one of digits, iris, toy, mnist"):
        data.load_dataset("svhn")


@pytest.mark.parametrize("name", ["mnist", "fashion-mnist", "cifar10"])
def test_file_datasets_need_a_data_dir(name):
    with pytest.raises(UsageError, match=f"{name} needs --data-dir DIR") as info:
        data.load_dataset(name)
    assert "\n" not in str(info.value)


def test_missing_data_dir(tmp_path):
    with pytest.raises(UsageError, match="does not exist"):
        data.load_dataset("mnist", tmp_path / "nope")


# --------------------------------------------------------------------------------------------------- MNIST idx


def idx_images(n, rows=28, cols=28, magic=0x803, seed=0):
    pixels = np.random.default_rng(seed).integers(0, 256, (n, rows, cols), dtype=np.uint8)
    header = magic.to_bytes(4, "big") + b"".join(d.to_bytes(4, "big") for d in (n, rows, cols))
    return header + pixels.tobytes(), pixels


def idx_labels(n, magic=0x801, seed=0):
    labels = np.random.default_rng(seed).integers(0, 10, n, dtype=np.uint8)
    return magic.to_bytes(4, "big") + n.to_bytes(4, "big") + labels.tobytes(), labels


def write_mnist(folder, gz=False, n_train=12, n_test=5):
    folder.mkdir(parents=True, exist_ok=True)
    files = {
        "train-images-idx3-ubyte": idx_images(n_train, seed=1),
        "train-labels-idx1-ubyte": idx_labels(n_train, seed=2),
        "t10k-images-idx3-ubyte": idx_images(n_test, seed=3),
        "t10k-labels-idx1-ubyte": idx_labels(n_test, seed=4),
    }
    for name, (blob, _) in files.items():
        if gz:
            (folder / f"{name}.gz").write_bytes(gzip.compress(blob))
        else:
            (folder / name).write_bytes(blob)
    return {name: arr for name, (_, arr) in files.items()}


@pytest.mark.parametrize(
    ("name", "sub", "gz"),
    [
        ("mnist", "", False),
        ("mnist", "", True),
        ("mnist", "MNIST/raw", True),
        ("fashion-mnist", "FashionMNIST/raw", False),
        ("fashion_mnist", "", True),
    ],
)
def test_mnist_layouts(tmp_path, name, sub, gz):
    arrays = write_mnist(tmp_path / sub if sub else tmp_path, gz=gz)
    ds = data.load_dataset(name, tmp_path)
    assert ds.name == name.replace("_", "-")
    assert ds.x_train.shape == (12, 28, 28, 1) and ds.x_test.shape == (5, 28, 28, 1)
    assert ds.x_train.dtype == np.float32 and ds.y_train.dtype == np.int64
    np.testing.assert_allclose(ds.x_train[..., 0], arrays["train-images-idx3-ubyte"] / 255.0, rtol=1e-6)
    np.testing.assert_array_equal(ds.y_test, arrays["t10k-labels-idx1-ubyte"])
    assert ds.input_shape == (28, 28, 1) and ds.num_classes == 10


def test_mnist_missing_files_named(tmp_path):
    write_mnist(tmp_path)
    (tmp_path / "t10k-labels-idx1-ubyte").unlink()
    with pytest.raises(UsageError) as info:
        data.load_dataset("mnist", tmp_path)
    message = str(info.value)
    assert "t10k-labels-idx1-ubyte[.gz]" in message and "train-images" not in message.split(";")[0]
    assert "MNIST/raw" in message and "mnist" in message and "\n" not in message


def test_mnist_empty_dir_names_every_file(tmp_path):
    with pytest.raises(UsageError) as info:
        data.load_dataset("fashion-mnist", tmp_path)
    message = str(info.value)
    for stem in ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte"):
        assert stem in message
    assert "fashion-mnist" in message.lower()


@pytest.mark.parametrize(
    ("target", "blob", "expect"),
    [
        ("train-images-idx3-ubyte", idx_images(12, magic=0x801)[0], "magic"),
        ("train-labels-idx1-ubyte", idx_labels(12, magic=0x803)[0], "magic"),
        ("train-images-idx3-ubyte", idx_images(12)[0][:-100], "truncated"),
        ("t10k-images-idx3-ubyte", b"\x00\x00", "truncated"),
        ("train-labels-idx1-ubyte", idx_labels(11)[0], "11 labels"),
    ],
)
def test_mnist_malformed_files(tmp_path, target, blob, expect):
    write_mnist(tmp_path)
    (tmp_path / target).write_bytes(blob)
    with pytest.raises(UsageError, match=expect) as info:
        data.load_dataset("mnist", tmp_path)
    assert target in str(info.value) and "\n" not in str(info.value)


def test_mnist_broken_gzip(tmp_path):
    write_mnist(tmp_path, gz=True)
    (tmp_path / "train-images-idx3-ubyte.gz").write_bytes(b"not gzip at all")
    with pytest.raises(UsageError, match=r"train-images-idx3-ubyte\.gz"):
        data.load_dataset("mnist", tmp_path)


# ------------------------------------------------------------------------------------------------------ CIFAR-10


def cifar_batch(n, seed):
    rng = np.random.default_rng(seed)
    pixels = rng.integers(0, 256, (n, 3072), dtype=np.uint8)
    labels = [int(v) for v in rng.integers(0, 10, n)]
    return pickle.dumps({b"batch_label": b"x", b"labels": labels, b"data": pixels}, protocol=2), pixels, labels


CIFAR_NAMES = [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]


def cifar_blobs():
    return {name: cifar_batch(3 + i, seed=i) for i, name in enumerate(CIFAR_NAMES)}


def check_cifar(ds, blobs):
    assert ds.x_train.shape == (3 + 4 + 5 + 6 + 7, 32, 32, 3) and ds.x_test.shape == (8, 32, 32, 3)
    assert ds.x_train.dtype == np.float32 and ds.y_train.dtype == np.int64
    _, pixels, labels = blobs["data_batch_1"]
    # channel-major rows become NHWC: pixel (row 2, col 5) of channel 1 sits at 1*1024 + 2*32 + 5.
    assert ds.x_train[0, 2, 5, 1] == pytest.approx(pixels[0, 1024 + 2 * 32 + 5] / 255.0)
    assert list(ds.y_train[:3]) == labels
    assert list(ds.y_test) == blobs["test_batch"][2]


@pytest.mark.parametrize("sub", ["", "cifar-10-batches-py"])
def test_cifar_folders(tmp_path, sub):
    blobs = cifar_blobs()
    folder = tmp_path / sub if sub else tmp_path
    folder.mkdir(exist_ok=True)
    for name, (blob, _, _) in blobs.items():
        (folder / name).write_bytes(blob)
    check_cifar(data.load_dataset("cifar10", tmp_path), blobs)


def write_tar(path, blobs):
    with tarfile.open(path, "w:gz") as tar:
        for name, (blob, _, _) in blobs.items():
            info = tarfile.TarInfo(f"cifar-10-batches-py/{name}")
            info.size = len(blob)
            tar.addfile(info, io.BytesIO(blob))


def test_cifar_archive_read_without_extracting(tmp_path):
    blobs = cifar_blobs()
    write_tar(tmp_path / "cifar-10-python.tar.gz", blobs)
    check_cifar(data.load_dataset("cifar10", str(tmp_path)), blobs)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cifar-10-python.tar.gz"]


def test_cifar_archive_missing_member(tmp_path):
    blobs = cifar_blobs()
    del blobs["data_batch_4"]
    write_tar(tmp_path / "cifar-10-python.tar.gz", blobs)
    with pytest.raises(UsageError, match=r"cifar-10-python\.tar\.gz.*data_batch_4"):
        data.load_dataset("cifar10", tmp_path)


def test_cifar_missing_files_named(tmp_path):
    for name, (blob, _, _) in cifar_blobs().items():
        if name != "test_batch":
            (tmp_path / name).write_bytes(blob)
    with pytest.raises(UsageError) as info:
        data.load_dataset("cifar10", tmp_path)
    message = str(info.value)
    assert "test_batch" in message and "data_batch_1" not in message
    assert "cifar-10-python.tar.gz" in message and "cs.toronto.edu" in message and "\n" not in message


@pytest.mark.parametrize(
    ("payload", "expect"),
    [
        (b"garbage", "not a CIFAR-10 python batch"),
        (pickle.dumps({b"data": np.zeros((2, 3072), np.uint8)}), "b'labels'"),
        (pickle.dumps({b"data": np.zeros((2, 100), np.uint8), b"labels": [1, 2]}), "3072"),
        (pickle.dumps({b"data": np.zeros((2, 3072), np.uint8), b"labels": [1]}), "1 labels for 2 images"),
        (pickle.dumps({b"data": np.zeros((1, 3072), np.uint8), b"labels": [12]}), "outside 0-9"),
        (pickle.dumps({b"data": np.zeros((1, 3072), np.uint8), b"labels": [1], b"x": io.BytesIO()}), "refusing"),
    ],
)
def test_cifar_malformed_batch(tmp_path, payload, expect):
    for name, (blob, _, _) in cifar_blobs().items():
        (tmp_path / name).write_bytes(blob)
    (tmp_path / "data_batch_3").write_bytes(payload)
    with pytest.raises(UsageError, match=expect) as info:
        data.load_dataset("cifar10", tmp_path)
    assert "data_batch_3" in str(info.value) and "\n" not in str(info.value)


# ---------------------------------------------------------------------------------------- shards and subsets


@pytest.mark.parametrize(("n", "workers"), [(100, 4), (101, 3), (5, 5), (7, 1)])
def test_shards_are_disjoint_and_cover(n, workers):
    shards = [data.shard_indices(n, workers, i, seed=3) for i in range(workers)]
    joined = np.concatenate(shards)
    assert sorted(joined.tolist()) == list(range(n))
    assert max(len(s) for s in shards) - min(len(s) for s in shards) <= 1
    np.testing.assert_array_equal(shards[0], data.shard_indices(n, workers, 0, seed=3))
    if workers > 1 and n > 5:
        assert not np.array_equal(shards[0], data.shard_indices(n, workers, 0, seed=4))


def test_shard_index_out_of_range():
    with pytest.raises(ValueError):
        data.shard_indices(10, 2, 2, seed=0)


def test_test_subset():
    ds = data.load_dataset("digits")
    x, y = data.test_subset(ds, 50, seed=1)
    assert x.shape == (50, 8, 8, 1) and y.shape == (50,)
    x2, y2 = data.test_subset(ds, 50, seed=1)
    np.testing.assert_array_equal(x, x2)
    np.testing.assert_array_equal(y, y2)
    for size in (-1, len(ds.x_test), len(ds.x_test) + 10):
        assert len(data.test_subset(ds, size, seed=0)[0]) == len(ds.x_test)
    for bad in (0, -2):
        with pytest.raises(UsageError, match=f"--test-size {bad}"):
            data.test_subset(ds, bad, seed=0)


# ------------------------------------------------------------------------------------------------- BatchStream


def make_stream(n=10, seed=0, rank=1):
    x = np.arange(n, dtype=np.float32)[:, None] * np.ones((1, 3), np.float32)
    return data.BatchStream(x, np.arange(n, dtype=np.int64), seed=seed, rank=rank)


def test_stream_peek_does_not_consume():
    stream = make_stream()
    x, y = stream.peek(4)
    assert x.shape == (4, 3) and y.shape == (4,)
    np.testing.assert_array_equal(stream.peek(4)[1], y)
    np.testing.assert_array_equal(x[:, 0], y)  # rows stay paired with their labels
    assert stream.epochs == 0


def test_stream_advance_consumes_only_what_was_processed():
    stream = make_stream()
    _, y = stream.peek(6)
    stream.advance(2)  # an AMB worker got through 2 of 6 before its time limit
    np.testing.assert_array_equal(stream.peek(4)[1], y[2:])
    assert stream.epochs == pytest.approx(0.2)


def test_stream_wraps_epochs_and_covers_each():
    stream = make_stream(n=10)
    seen = []
    for _ in range(5):
        _, y = stream.peek(7)
        seen.extend(y.tolist())
        stream.advance(7)
    assert stream.epochs == pytest.approx(3.5)
    for epoch in range(3):
        assert sorted(seen[epoch * 10 : (epoch + 1) * 10]) == list(range(10))
    assert seen[:10] != seen[10:20]  # reshuffled every epoch


def test_stream_peek_longer_than_shard():
    stream = make_stream(n=4)
    _, y = stream.peek(11)
    assert len(y) == 11
    assert sorted(y[:4].tolist()) == sorted(y[4:8].tolist()) == [0, 1, 2, 3]
    assert stream.epochs == 0


def test_stream_is_deterministic_per_seed_and_rank():
    def run(seed, rank):
        stream = make_stream(n=20, seed=seed, rank=rank)
        out = []
        for k in (3, 9, 14, 5):
            out.extend(stream.peek(k)[1].tolist())
            stream.advance(k)
        return out

    assert run(0, 1) == run(0, 1)
    assert run(0, 1) != run(0, 2)
    assert run(0, 1) != run(1, 1)


def test_stream_empty_shard():
    with pytest.raises(UsageError, match="empty"):
        data.BatchStream(np.zeros((0, 3)), np.zeros(0), seed=0, rank=1)


# ----------------------------------------------------------------- checks before launch (describe, counts, sizes)


@pytest.mark.parametrize("gz", [False, True])
def test_describe_reads_idx_headers_only(tmp_path, gz):
    write_mnist(tmp_path, gz=gz, n_train=12, n_test=5)
    assert data.describe_dataset("mnist", tmp_path) == (12, 5, (28, 28, 1), 10)
    info = data.describe_dataset("fashion_mnist", tmp_path)
    assert info.n_train == 12 and info.n_test == 5 and info.input_shape == (28, 28, 1) and info.num_classes == 10


@pytest.mark.parametrize("gz", [False, True])
def test_describe_finds_truncated_idx_files(tmp_path, gz):
    write_mnist(tmp_path, gz=False)
    blob = (tmp_path / "train-images-idx3-ubyte").read_bytes()[:-100]
    (tmp_path / "train-images-idx3-ubyte").unlink()
    if gz:
        (tmp_path / "train-images-idx3-ubyte.gz").write_bytes(gzip.compress(blob))
    else:
        (tmp_path / "train-images-idx3-ubyte").write_bytes(blob)
    with pytest.raises(UsageError, match="train-images-idx3-ubyte.*re-download") as info:
        data.describe_dataset("mnist", tmp_path)
    assert "\n" not in str(info.value)


def test_describe_built_in_and_cifar(tmp_path):
    assert data.describe_dataset("digits") == (1437, 360, (8, 8, 1), 10)
    assert data.describe_dataset("iris") == (120, 30, (4,), 3)
    assert data.describe_dataset("toy") == (8192, 1024, (100,), 10)
    for name, (blob, _, _) in cifar_blobs().items():
        (tmp_path / name).write_bytes(blob)
    assert data.describe_dataset("cifar10", tmp_path) == (3 + 4 + 5 + 6 + 7, 8, (32, 32, 3), 10)
    with pytest.raises(UsageError, match="--data-dir"):
        data.describe_dataset("mnist", None)


@pytest.mark.parametrize("reader", [data.load_dataset, data.describe_dataset])
def test_a_test_split_with_no_images_names_the_file(tmp_path, reader):
    write_mnist(tmp_path, n_test=0)
    with pytest.raises(UsageError, match="t10k-images-idx3-ubyte' holds 0 images") as info:
        reader("mnist", tmp_path)
    assert "\n" not in str(info.value)


def test_a_cifar_batch_with_no_images_names_the_file(tmp_path):
    for name, (blob, _, _) in cifar_blobs().items():
        (tmp_path / name).write_bytes(blob)
    (tmp_path / "test_batch").write_bytes(cifar_batch(0, seed=9)[0])
    with pytest.raises(UsageError, match="test_batch' holds 0 images"):
        data.load_dataset("cifar10", tmp_path)


def test_fewer_training_examples_than_workers_is_found_before_launch():
    data.check_enough_examples(4, 4)
    with pytest.raises(UsageError, match=r"--workers 5: digits has only 4 training examples.*--workers 4 or fewer"):
        data.check_enough_examples(4, 5, "digits")


def test_the_test_size_used_is_the_one_to_record():
    assert data.test_size_used(360, 100000) == 360
    assert data.test_size_used(360, -1) == 360
    assert data.test_size_used(360, 50) == 50
    ds = data.load_dataset("digits")
    assert len(data.test_subset(ds, 100000, seed=0)[0]) == data.test_size_used(len(ds.x_test), 100000)
    with pytest.raises(UsageError, match="--test-size 0"):
        data.test_size_used(360, 0)
