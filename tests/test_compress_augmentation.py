"""The compression recipe's training augmentation (input_transform.Augmentation, cifar10-fast's): every output
image is a window of the reflect-padded image (flipped or not) with one 8x8 square of zeros inside it, drawn per
example from the generator it is given; images too small for it are refused in one line."""

from __future__ import annotations

import numpy as np
import pytest

from anytimectl.data.input_transform import Augmentation
from anytimectl.runtime.errors import UsageError


def batch(count: int = 64, side: int = 32, channels: int = 3) -> np.ndarray:
    return (np.random.default_rng(1).random((count, side, side, channels), dtype=np.float32) + 1.0)  # no zeros


def test_each_image_is_a_window_of_the_padded_image_possibly_flipped_with_one_cutout():
    x = batch()
    out = Augmentation()(x, np.random.default_rng(7))
    assert out.shape == x.shape and out.dtype == np.float32
    padded = np.pad(x, ((0, 0), (4, 4), (4, 4), (0, 0)), mode="reflect")
    flips = 0
    for image, source in zip(out, padded, strict=True):
        cut = (image == 0).all(axis=2)
        rows, cols = np.flatnonzero(cut.any(axis=1)), np.flatnonzero(cut.any(axis=0))
        assert cut.sum() == 64 and len(rows) == 8 and len(cols) == 8  # one 8x8 square, wholly inside
        assert rows[-1] - rows[0] == 7 and cols[-1] - cols[0] == 7
        kept = ~cut
        matches = []
        for top in range(9):
            for left in range(9):
                window = source[top:top + 32, left:left + 32]
                for flipped, candidate in ((False, window), (True, window[:, ::-1])):
                    if np.array_equal(image[kept], candidate[kept]):
                        matches.append(flipped)
        assert matches, "not a crop of the padded image"
        flips += matches[0]
    assert 16 < flips < 48  # about half flipped


def test_the_same_generator_gives_the_same_batch_and_ranks_differ():
    x = batch(16)
    a = Augmentation()(x, np.random.default_rng([0, 1, 5]))
    b = Augmentation()(x, np.random.default_rng([0, 1, 5]))
    c = Augmentation()(x, np.random.default_rng([0, 2, 5]))
    assert np.array_equal(a, b) and not np.array_equal(a, c)
    assert np.array_equal(x, batch(16))  # the input is left alone


def test_pieces_can_be_turned_off_and_described():
    x = batch(4)
    assert np.array_equal(Augmentation(pad=0, flip=False, cutout=0)(x, np.random.default_rng(0)), x)
    assert Augmentation().describe() == "reflect-pad 4, random crop, horizontal flip, 8x8 cutout"


@pytest.mark.parametrize("shape", [(8, 8, 1), (100,), (4, 40, 3)])
def test_images_too_small_or_not_images_are_refused(shape):
    with pytest.raises(UsageError):
        Augmentation().check(shape)
