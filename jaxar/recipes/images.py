"""Image datasets named by an experiment's ``data`` config.

``data.name`` is one of:
- ``digits``: scikit-learn's bundled handwritten digits (``jaxar.data.load_digits``);
- ``tfds``: a prepared TFDS dataset (``data.tfds_name``, ``data.data_dir``, ``data.split``);
- ``folder``: an image folder with one subfolder per class (``data.path``).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import numpy as np

from jaxar.data import (
    ArraySource,
    ImageFolderSource,
    load_digits,
    make_image_dataset,
    tfds_source,
)
from jaxar.recipes.config import as_dict

SOURCES = ("digits", "tfds", "folder")
# Fields every source needs, and those of each source (``folder`` takes ``<split>_path`` or
# ``path``).
REQUIRED_FIELDS = ("image_size", "channels")
SOURCE_FIELDS = {"digits": (), "tfds": ("tfds_name",), "folder": ("path",)}


def check_data_config(data: Any, split: str = "train") -> dict[str, Any]:
    """``data`` as a dict; a one-line ValueError naming the first missing or unknown field."""
    data = as_dict(data)
    name = data.get("name", "digits")
    if name not in SOURCES:
        raise ValueError(f"data.name={name!r} is not a known source; accepted: {list(SOURCES)}")
    for field in (*REQUIRED_FIELDS, *SOURCE_FIELDS[name]):
        if field == "path" and f"{split}_path" in data:
            continue
        if data.get(field) in (None, ""):
            extra = f" (or data.{split}_path)" if field == "path" else ""
            raise ValueError(f"data.name={name!r} needs data.{field}{extra}; it is not set")
    return data


def image_source(data: Any, split: str = "train"):
    """A random-access source of {"image", "label"} records for ``data`` (see module doc)."""
    data = check_data_config(data, split)
    name = data.get("name", "digits")
    if name == "digits":
        images, labels = load_digits(
            image_size=data["image_size"], channels=data["channels"], split=split
        )
        return ArraySource(images, labels)
    if name == "tfds":
        split = data.get(f"{split}_split", split)
        return tfds_source(data["tfds_name"], split, data.get("data_dir"))
    return ImageFolderSource(data.get(f"{split}_path") or data["path"])


def image_dataset(data: Any, *, split: str = "train", train: bool = True, num_epochs=None):
    """The grain dataset of normalised image batches for ``data``."""
    data = as_dict(data)
    return make_image_dataset(
        image_source(data, split),
        global_batch_size=data["batch_size"],
        image_size=data["image_size"],
        channels=data["channels"],
        train=train,
        seed=data.get("seed", 0),
        num_epochs=num_epochs,
        random_flip=data.get("random_flip", False) and train,
        worker_count=data.get("worker_count", 0),
        drop_remainder=train,
    )


def image_batches(
    data: Any, split: str = "train", limit: int | None = None, batch_size: int | None = None
) -> Iterator[dict[str, np.ndarray]]:
    """Streams a split (or its first ``limit`` images) in source order, one batch at a time.

    Yields ``{"image": float32 [b, H, W, C] in [-1, 1], "label": int32 [b]}`` with
    ``b <= batch_size`` (default ``data.eval_batch_size`` or 256); only a few batches are in
    memory at once. With several processes each streams its own part of the split.
    """
    data = as_dict(data)
    data = {**data, "batch_size": batch_size or data.get("eval_batch_size", 256)}
    if limit is not None and limit < 1:
        raise ValueError(f"limit must be None or >= 1, got {limit}")
    seen = 0
    for batch in image_dataset(data, split=split, train=False, num_epochs=1):
        if limit is not None and seen + len(batch["label"]) > limit:
            batch = {k: v[: limit - seen] for k, v in batch.items()}
        seen += len(batch["label"])
        yield {"image": batch["image"], "label": batch["label"].astype(np.int32)}
        if limit is not None and seen >= limit:
            return


def image_arrays(data: Any, split: str = "train", limit: int | None = None):
    """All (or the first ``limit``) images of a small split in memory, in source order.

    For previews and tiny sets (digits); stream large splits with ``image_batches``.
    Returns ``(images float32 [N,H,W,C] in [-1,1], labels int32 [N])``.
    """
    batches = list(image_batches(data, split=split, limit=limit))
    if not batches:
        raise ValueError(f"the {split!r} split of {as_dict(data).get('name')!r} holds no images")
    images = np.concatenate([b["image"] for b in batches])
    return images, np.concatenate([b["label"] for b in batches])
