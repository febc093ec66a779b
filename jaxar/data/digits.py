"""The bundled default data: scikit-learn's handwritten digits and sample photos.

``load_digits`` turns sklearn's 1797 8x8 digits (values 0..16) into uint8 images upsampled
bilinearly to ``image_size``, with a fixed stratified train/test split. Nothing is downloaded.
"""

from __future__ import annotations

import os
from typing import NamedTuple

import numpy as np
from PIL import Image

TEST_FRACTION = 0.1
SPLIT_SEED = 0
SPLITS = ("train", "test", "all")


def _digits_to_uint8(raw: np.ndarray, image_size: int) -> np.ndarray:
    """float [N, 8, 8] in 0..16 -> uint8 [N, S, S] in 0..255, bilinear upsampling with PIL."""
    scaled = raw.astype(np.float32) * np.float32(255.0 / 16.0)
    if image_size != raw.shape[1]:
        size = (image_size, image_size)
        scaled = np.stack(
            [np.asarray(Image.fromarray(x, mode="F").resize(size, Image.BILINEAR)) for x in scaled]
        )
    return np.clip(np.rint(scaled), 0, 255).astype(np.uint8)


def stratified_test_mask(labels: np.ndarray, fraction: float, seed: int) -> np.ndarray:
    """bool [N]: a seeded ``fraction`` of each class (rounded) marked as test."""
    rng = np.random.default_rng(seed)
    mask = np.zeros(labels.shape[0], dtype=bool)
    for value in np.unique(labels):
        members = np.flatnonzero(labels == value)
        count = int(round(fraction * members.size))
        mask[rng.permutation(members)[:count]] = True
    return mask


def load_digits(
    image_size: int = 16, channels: int = 1, split: str = "train"
) -> tuple[np.ndarray, np.ndarray]:
    """sklearn digits -> (images uint8 [N, S, S, C] in 0..255, labels int32 [N] in 0..9).

    ``split`` is "train" (90%), "test" (10%, stratified by class, fixed seed) or "all" (1797).
    Examples keep sklearn's order within a split.
    """
    from sklearn.datasets import load_digits as sklearn_digits

    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    if channels not in (1, 3):
        raise ValueError(f"channels must be 1 or 3, got {channels}")
    if image_size < 8:
        raise ValueError(f"image_size must be >= 8 (the digits are 8x8), got {image_size}")
    data = sklearn_digits()
    labels = data.target.astype(np.int32)
    images = _digits_to_uint8(data.images, image_size)[..., None]
    if channels == 3:
        images = np.repeat(images, 3, axis=-1)
    if split != "all":
        test = stratified_test_mask(labels, TEST_FRACTION, SPLIT_SEED)
        keep = test if split == "test" else ~test
        images, labels = images[keep], labels[keep]
    return np.ascontiguousarray(images), labels


def load_sample_photo_crops(size: int = 32, count: int = 64, seed: int = 0) -> np.ndarray:
    """Random square crops of sklearn's bundled photos (china.jpg, flower.jpg).

    Returns uint8 [count, size, size, 3]. Each crop picks a photo, a scale (the crop side spans
    ``size`` to the photo's shorter side, resized back to ``size`` with bicubic) and a position.
    """
    from sklearn.datasets import load_sample_images

    photos = load_sample_images().images  # 2 x uint8 [427, 640, 3]
    shortest = min(min(p.shape[:2]) for p in photos)
    if not 1 <= size <= shortest:
        raise ValueError(f"crop size must be in [1, {shortest}], got {size}")
    if count < 0:
        raise ValueError(f"count must be >= 0, got {count}")
    rng = np.random.default_rng(seed)
    crops = np.empty((count, size, size, 3), dtype=np.uint8)
    for i in range(count):
        photo = photos[rng.integers(len(photos))]
        side = int(rng.integers(size, min(photo.shape[:2]) + 1))
        top = int(rng.integers(photo.shape[0] - side + 1))
        left = int(rng.integers(photo.shape[1] - side + 1))
        crop = photo[top : top + side, left : left + side]
        if side != size:
            crop = np.asarray(Image.fromarray(crop).resize((size, size), Image.BICUBIC))
        crops[i] = crop
    return crops


class PreparedTfds(NamedTuple):
    """A prepared local TFDS dataset: pass ``name`` and ``data_dir`` to ``tfds_source``."""

    name: str
    data_dir: str
    builder: object


def prepare_digits_tfds(
    data_dir: str | os.PathLike, image_size: int = 16, channels: int = 1
) -> PreparedTfds:
    """Builds the local TFDS dataset ``jaxar_digits`` (splits train/test) as ArrayRecord files.

    No network: the builder reads sklearn's bundled digits. The config is chosen by
    ``image_size`` and ``channels``; the default (16, 1) is the dataset's default config, so
    ``tfds_source("jaxar_digits", "train", data_dir)`` reads it. Other sizes are read with
    the returned ``name`` (``"jaxar_digits/size32_ch3"``). Preparing twice is a no-op.
    """
    from jaxar.data.tfds_builders.digits_dataset import JaxarDigits, config_name

    data_dir = os.fspath(data_dir)
    builder = JaxarDigits(config=config_name(image_size, channels), data_dir=data_dir)
    builder.download_and_prepare(file_format="array_record")
    name = f"{builder.name}/{builder.builder_config.name}"
    return PreparedTfds(name=name, data_dir=data_dir, builder=builder)
