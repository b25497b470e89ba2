"""Training-batch augmentation, one mechanism for every peer method (compress's cifar10-fast recipe, gossip's
crop + flip)."""

from __future__ import annotations

import numpy as np
import pytest

from anytimectl.protocols.peer import augmentation
from anytimectl.runtime.errors import UsageError


def test_names_choose_the_recipe():
    assert augmentation(None, (32, 32, 3)) is None and augmentation("none", (32, 32, 3)) is None
    assert augmentation("cifar", (32, 32, 3)).cutout == 8
    crop_flip = augmentation("crop-flip", (32, 32, 3))
    assert crop_flip.cutout == 0 and crop_flip.flip and crop_flip.pad == 4


def test_crop_flip_keeps_every_pixel_value_and_draws_per_generator():
    crop_flip = augmentation("crop-flip", (32, 32, 3))
    x = np.random.default_rng(0).random((8, 32, 32, 3), dtype=np.float32)
    first = crop_flip(x, np.random.default_rng(1))
    again = crop_flip(x, np.random.default_rng(1))
    other = crop_flip(x, np.random.default_rng(2))
    assert first.shape == x.shape and np.array_equal(first, again) and not np.array_equal(first, other)
    assert (first != 0).all()  # no cutout square


def test_bad_names_and_images_too_small_are_usage_errors():
    with pytest.raises(UsageError, match="unknown augmentation"):
        augmentation("mixup", (32, 32, 3))
    with pytest.raises(UsageError):
        augmentation("cifar", (8, 8, 1))
