"""Numpy image transforms and their grain wrappers.

Plain functions work on one image (``uint8 [H, W, C]``); the ``grain`` transform classes apply
them to dict records ``{"image": ..., "label": ...}``. A record whose image cannot be decoded is
marked with an ``"error"`` key (instead of raising) so the pipeline can filter and count it.
"""

from __future__ import annotations

import io
import logging
import threading
from typing import Any

import grain
import jax
import jax.numpy as jnp
import numpy as np
from PIL import Image

logger = logging.getLogger(__name__)

ERROR_KEY = "error"

# PIL modes mapped to the mode we decode into (one of L, RGB, RGBA).
_PIL_MODE_TARGET = {
    "1": "L",
    "L": "L",
    "LA": "L",
    "I": "L",
    "I;16": "L",
    "F": "L",
    "P": "RGB",
    "PA": "RGBA",
    "RGB": "RGB",
    "RGBA": "RGBA",
    "RGBX": "RGB",
    "CMYK": "RGB",
    "YCbCr": "RGB",
    "LAB": "RGB",
    "HSV": "RGB",
}


def decode_image(data: bytes) -> np.ndarray:
    """Decodes encoded image bytes (PNG, JPEG, ...) with PIL -> uint8 [H, W, C], C in {1, 3, 4}.

    Raises ValueError when the bytes are not a readable image.
    """
    try:
        with Image.open(io.BytesIO(data)) as img:
            img.load()
            target = _PIL_MODE_TARGET.get(img.mode, "RGB")
            if img.mode == "P" and "transparency" in img.info:
                target = "RGBA"
            array = np.asarray(img.convert(target) if img.mode != target else img)
    except Exception as err:  # PIL raises many types (OSError, SyntaxError, ...).
        raise ValueError(f"cannot decode image ({len(data)} bytes): {err}") from err
    if array.ndim == 2:
        array = array[:, :, None]
    return np.ascontiguousarray(array, dtype=np.uint8)


def convert_channels(image: np.ndarray, channels: int) -> np.ndarray:
    """uint8 [H, W] or [H, W, C] -> uint8 [H, W, channels].

    Grey -> RGB repeats the channel, RGBA -> RGB drops alpha, RGB -> grey uses the ITU-R 601-2
    luma weights (exactly as PIL's "L" mode). Any other channel count raises ValueError.
    """
    if channels not in (1, 3):
        raise ValueError(f"channels must be 1 or 3, got {channels}")
    if image.dtype != np.uint8:
        raise ValueError(f"expected a uint8 image, got dtype {image.dtype}")
    if image.ndim == 2:
        image = image[:, :, None]
    if image.ndim != 3:
        raise ValueError(f"expected an image [H, W] or [H, W, C], got shape {image.shape}")
    in_channels = image.shape[-1]
    if in_channels == 4:
        image, in_channels = image[:, :, :3], 3
    if in_channels not in (1, 3):
        raise ValueError(
            f"unsupported number of image channels {in_channels} (shape {image.shape}); "
            "expected 1 (grey), 3 (RGB) or 4 (RGBA)"
        )
    if in_channels == channels:
        return image
    if channels == 3:
        return np.repeat(image, 3, axis=-1)
    # PIL's fixed-point form of L = 0.299 R + 0.587 G + 0.114 B (same results as convert("L")).
    weights = np.array([19595, 38470, 7471], dtype=np.uint32)
    grey = (image.astype(np.uint32) @ weights + 0x8000) >> 16
    return grey.astype(np.uint8)[:, :, None]


def resize_and_center_crop(image: np.ndarray, size: int) -> np.ndarray:
    """uint8 [H, W, C] -> uint8 [size, size, C]: shorter side to ``size``, then a center crop.

    Large reductions first halve with a box filter, then resize with bicubic (as the ADM /
    LlamaGen ``center_crop_arr``). Images already ``size x size`` are returned unchanged.
    """
    if size <= 0:
        raise ValueError(f"image size must be positive, got {size}")
    height, width, channels = image.shape
    if (height, width) == (size, size):
        return image
    img = Image.fromarray(image[:, :, 0] if channels == 1 else image)
    while min(img.size) >= 2 * size:
        img = img.resize(tuple(s // 2 for s in img.size), resample=Image.BOX)
    scale = size / min(img.size)
    new_size = tuple(max(size, round(s * scale)) for s in img.size)
    img = img.resize(new_size, resample=Image.BICUBIC)
    array = np.asarray(img)
    top = (array.shape[0] - size) // 2
    left = (array.shape[1] - size) // 2
    array = array[top : top + size, left : left + size]
    return array[:, :, None] if array.ndim == 2 else array


def normalize(image: np.ndarray) -> np.ndarray:
    """uint8 [..., C] in 0..255 -> float32 in [-1, 1]."""
    return image.astype(np.float32) / np.float32(127.5) - np.float32(1.0)


def to_uint8(image: Any) -> Any:
    """Inverse of ``normalize``: float in [-1, 1] -> uint8, rounded half to even and clipped.

    numpy in, numpy out; a jax array (or tracer, inside jit) in, a jax array out."""
    if isinstance(image, jax.Array):
        scaled = (jnp.asarray(image, jnp.float32) + 1.0) * 127.5
        return jnp.clip(jnp.rint(scaled), 0, 255).astype(jnp.uint8)
    scaled = (np.asarray(image, dtype=np.float32) + 1.0) * 127.5
    return np.clip(np.rint(scaled), 0, 255).astype(np.uint8)


class DecodeAndPrepare(grain.transforms.Map):
    """Record -> {"image": uint8 [S, S, C], "label": int32 scalar}, or a record with "error".

    Accepts an ``image`` that is encoded bytes or a uint8 array. Decoding failures (and records
    a source already marked unreadable) come out as ``{"error": msg, ...}`` for ``DropCorrupt``.
    Channel-count errors are configuration errors and raise.
    """

    def __init__(self, image_size: int, channels: int):
        if channels not in (1, 3):
            raise ValueError(f"channels must be 1 or 3, got {channels}")
        if image_size <= 0:
            raise ValueError(f"image_size must be positive, got {image_size}")
        self.image_size = image_size
        self.channels = channels

    def map(self, record: dict[str, Any]) -> dict[str, Any]:
        label = np.int32(record.get("label", -1))
        if record.get(ERROR_KEY) is not None:
            return {ERROR_KEY: str(record[ERROR_KEY]), "label": label}
        image = record["image"]
        if isinstance(image, (bytes, np.bytes_)) or (
            isinstance(image, np.ndarray) and image.dtype.kind in "SO"
        ):
            try:
                image = decode_image(image.item() if isinstance(image, np.ndarray) else image)
            except ValueError as err:
                return {ERROR_KEY: str(err), "label": label}
        image = convert_channels(np.asarray(image), self.channels)
        image = resize_and_center_crop(image, self.image_size)
        return {"image": image, "label": label}


class DropCorrupt(grain.transforms.Filter):
    """Keeps records without an "error" key; logs and counts (per process) the dropped ones."""

    def __init__(self):
        self.num_dropped = 0
        self._lock = threading.Lock()

    def filter(self, record: dict[str, Any]) -> bool:
        if record.get(ERROR_KEY) is None:
            return True
        with self._lock:
            self.num_dropped += 1
        logger.warning("dropping unreadable example: %s", record[ERROR_KEY])
        return False

    def __getstate__(self):  # Locks do not pickle (worker processes).
        return {"num_dropped": self.num_dropped}

    def __setstate__(self, state):
        self.num_dropped = state["num_dropped"]
        self._lock = threading.Lock()


class RandomFlip(grain.transforms.RandomMap):
    """Flips ``image`` [H, W, C] left-right with probability 1/2 using grain's per-record rng."""

    def random_map(self, record: dict[str, Any], rng: np.random.Generator) -> dict[str, Any]:
        if rng.random() < 0.5:
            record = {**record, "image": np.ascontiguousarray(record["image"][:, ::-1])}
        return record


class Normalize(grain.transforms.Map):
    """uint8 ``image`` -> float32 in [-1, 1]; ``label`` stays int32."""

    def map(self, record: dict[str, Any]) -> dict[str, Any]:
        return {"image": normalize(record["image"]), "label": np.int32(record["label"])}
