"""Bundled data: sklearn digits (split, scaling, upsampling) and sample photo crops."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from sklearn.datasets import load_digits as sklearn_digits
from sklearn.datasets import load_sample_images

from jaxar.data.digits import load_digits, load_sample_photo_crops


def test_native_size_is_rescaled_sklearn_data():
    images, labels = load_digits(image_size=8, channels=1, split="all")
    raw = sklearn_digits()
    assert images.shape == (1797, 8, 8, 1) and images.dtype == np.uint8
    assert labels.dtype == np.int32
    np.testing.assert_array_equal(labels, raw.target)
    np.testing.assert_array_equal(images[..., 0], np.rint(raw.images * 255 / 16).astype(np.uint8))
    assert images.max() == 255 and images.min() == 0


def test_upsampling_is_bilinear():
    images, _ = load_digits(image_size=16, channels=1, split="all")
    raw = sklearn_digits().images.astype(np.float32) * 255 / 16
    reference = jax.image.resize(jnp.asarray(raw[:50]), (50, 16, 16), method="linear")
    diff = np.abs(images[:50, :, :, 0].astype(np.float32) - np.asarray(reference))
    assert images.shape == (1797, 16, 16, 1)
    assert diff.max() <= 1.0


def test_split_is_stratified_deterministic_and_disjoint():
    train_x, train_y = load_digits(split="train")
    test_x, test_y = load_digits(split="test")
    all_x, all_y = load_digits(split="all")
    assert len(train_y) + len(test_y) == 1797
    assert 170 <= len(test_y) <= 190
    counts = np.bincount(test_y, minlength=10) / np.bincount(all_y, minlength=10)
    np.testing.assert_allclose(counts, 0.1, atol=0.01)
    # Disjoint and complete: every image of "all" lands in exactly one split.
    joined = np.concatenate([train_x, test_x]).reshape(1797, -1)
    assert sorted(map(bytes, joined)) == sorted(map(bytes, all_x.reshape(1797, -1)))
    again_x, again_y = load_digits(split="test")
    np.testing.assert_array_equal(again_x, test_x)
    np.testing.assert_array_equal(again_y, test_y)


def test_rgb_repeats_grey():
    grey, _ = load_digits(image_size=16, channels=1, split="test")
    rgb, _ = load_digits(image_size=16, channels=3, split="test")
    assert rgb.shape == grey.shape[:-1] + (3,)
    np.testing.assert_array_equal(rgb, np.repeat(grey, 3, axis=-1))


@pytest.mark.parametrize("kwargs", [{"split": "val"}, {"channels": 2}, {"image_size": 4}])
def test_bad_arguments_raise(kwargs):
    with pytest.raises(ValueError):
        load_digits(**kwargs)


def test_photo_crops_shape_and_seed():
    crops = load_sample_photo_crops(size=24, count=6, seed=3)
    assert crops.shape == (6, 24, 24, 3) and crops.dtype == np.uint8
    np.testing.assert_array_equal(crops, load_sample_photo_crops(size=24, count=6, seed=3))
    assert not np.array_equal(crops, load_sample_photo_crops(size=24, count=6, seed=4))
    assert crops.reshape(6, -1).std(axis=1).min() > 0  # real photo content, not constant


def test_full_height_crop_is_a_window_of_a_photo():
    crop = load_sample_photo_crops(size=427, count=1, seed=0)[0]  # no resize possible
    photos = load_sample_images().images
    found = any(
        np.array_equal(photo[:, left : left + 427], crop)
        for photo in photos
        for left in range(photo.shape[1] - 427 + 1)
    )
    assert found
    with pytest.raises(ValueError, match="crop size"):
        load_sample_photo_crops(size=428, count=1)
