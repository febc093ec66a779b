"""Image datasets named by an experiment's ``data`` config.

``data.name`` is one of:
- ``digits``: scikit-learn's bundled handwritten digits (``jaxar.data.load_digits``);
- ``tfds``: a prepared TFDS dataset (``data.tfds_name``, ``data.data_dir``, ``data.split``);
- ``folder``: an image folder with one subfolder per class (``data.path``).
"""

from __future__ import annotations

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


def image_source(data: Any, split: str = "train"):
    """A random-access source of {"image", "label"} records for ``data`` (see module doc)."""
    data = as_dict(data)
    name = data.get("name", "digits")
    if name == "digits":
        images, labels = load_digits(
            image_size=data["image_size"], channels=data["channels"], split=split
        )
        return ArraySource(images, labels)
    if name == "tfds":
        split = data.get(f"{split}_split", split)
        return tfds_source(data["tfds_name"], split, data.get("data_dir"))
    if name == "folder":
        return ImageFolderSource(data[f"{split}_path"] if f"{split}_path" in data else data["path"])
    raise ValueError(f"unknown data source {name!r}; known: {SOURCES}")


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


def image_arrays(data: Any, split: str = "train", limit: int | None = None):
    """All (or the first ``limit``) images of a split in source order.

    Returns ``(images float32 [N,H,W,C] in [-1,1], labels int32 [N])``.
    """
    data = {**as_dict(data), "batch_size": as_dict(data).get("eval_batch_size", 256)}
    images, labels, seen = [], [], 0
    for batch in image_dataset(data, split=split, train=False, num_epochs=1):
        images.append(batch["image"])
        labels.append(batch["label"])
        seen += len(batch["label"])
        if limit is not None and seen >= limit:
            break
    if not images:
        raise ValueError(f"the {split!r} split of {data.get('name')!r} holds no images")
    images, labels = np.concatenate(images), np.concatenate(labels).astype(np.int32)
    return (images, labels) if limit is None else (images[:limit], labels[:limit])
