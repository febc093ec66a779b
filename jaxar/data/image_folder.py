"""``ImageFolderSource``: ``root/<class_name>/**/<image>`` as a random-access source.

Class names are the sorted sub-folder names; their position is the label. Unreadable images are
never fatal: ``verify=True`` checks every file with PIL while indexing (dropping the bad ones),
and files that still fail to decode at read time come back as records marked with an
``"error"`` key, which the pipeline filters. Both are counted in ``num_skipped`` /
``skipped_files`` (read-time counts are per process: with grain worker processes they stay in
the workers) and logged as warnings.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Sequence
from typing import Any

import numpy as np
from PIL import Image

from jaxar.data.transforms import ERROR_KEY, decode_image

logger = logging.getLogger(__name__)

IMAGE_EXTENSIONS = (
    ".jpg",
    ".jpeg",
    ".png",
    ".bmp",
    ".gif",
    ".ppm",
    ".pgm",
    ".tif",
    ".tiff",
    ".webp",
)


def _verify_image(path: str) -> str | None:
    """None when PIL can parse ``path``, else the error message."""
    try:
        with Image.open(path) as img:
            img.verify()
    except Exception as err:  # PIL raises many types for bad files.
        return f"{type(err).__name__}: {err}"
    return None


def _list_files(folder: str, extensions: tuple[str, ...]) -> list[str]:
    """Sorted paths of files under ``folder`` (recursively) whose suffix is in ``extensions``."""
    found = []
    for dirpath, dirnames, filenames in os.walk(folder, followlinks=True):
        dirnames.sort()
        for filename in sorted(filenames):
            if filename.lower().endswith(extensions):
                found.append(os.path.join(dirpath, filename))
    return found


class ImageFolderSource:
    """Images under ``root/<class>/`` -> records ``{"image": uint8 [H, W, C], "label": int}``.

    Attributes:
      class_names: sorted class folder names; ``label == class_names.index(folder)``.
      files, labels: the indexed (readable) files and their labels.
      num_skipped, skipped_files: unreadable files found while indexing or reading.
    """

    def __init__(
        self,
        root: str | os.PathLike,
        extensions: Sequence[str] = IMAGE_EXTENSIONS,
        *,
        verify: bool = True,
        decode: bool = True,
    ):
        self.root = os.fspath(root)
        self.decode = decode
        exts = tuple(e.lower() if e.startswith(".") else "." + e.lower() for e in extensions)
        if not exts:
            raise ValueError("extensions must name at least one file suffix, e.g. ('.png',)")
        if not os.path.isdir(self.root):
            raise ValueError(f"image folder {self.root!r} does not exist or is not a directory")
        self.class_names = sorted(
            e.name for e in os.scandir(self.root) if e.is_dir() and not e.name.startswith(".")
        )
        if not self.class_names:
            raise ValueError(
                f"image folder {self.root!r} has no class sub-folders; expected root/<class>/<img>"
            )
        self.skipped_files: list[str] = []
        self._lock = threading.Lock()
        self.files, self.labels = self._index(exts, verify)

    def _index(self, exts: tuple[str, ...], verify: bool) -> tuple[list[str], np.ndarray]:
        files, labels = [], []
        for label, name in enumerate(self.class_names):
            class_files = _list_files(os.path.join(self.root, name), exts)
            if not class_files:
                logger.warning("class folder %r has no images with suffix in %s", name, exts)
            for path in class_files:
                error = _verify_image(path) if verify else None
                if error is not None:
                    self._record_skip(path, error)
                    continue
                files.append(path)
                labels.append(label)
        if not files:
            raise ValueError(
                f"image folder {self.root!r} holds no readable images with suffix in {exts} "
                f"(skipped {self.num_skipped} unreadable)"
            )
        if self.num_skipped:
            logger.warning("skipped %d unreadable images in %r", self.num_skipped, self.root)
        return files, np.asarray(labels, dtype=np.int32)

    def _record_skip(self, path: str, error: str) -> None:
        with self._lock:
            self.skipped_files.append(path)
        logger.warning("skipping unreadable image %s (%s)", path, error)

    @property
    def num_skipped(self) -> int:
        return len(self.skipped_files)

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, index: int) -> dict[str, Any]:
        path, label = self.files[index], int(self.labels[index])
        try:
            with open(path, "rb") as f:
                data = f.read()
            image = decode_image(data) if self.decode else data
        except (OSError, ValueError) as err:
            self._record_skip(path, str(err))
            return {"image": None, "label": label, ERROR_KEY: f"{path}: {err}"}
        return {"image": image, "label": label}

    def __getstate__(self) -> dict[str, Any]:  # Locks do not pickle (grain worker processes).
        state = dict(self.__dict__)
        del state["_lock"]
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        return (
            f"ImageFolderSource(root={self.root!r}, examples={len(self)}, "
            f"classes={self.num_classes}, skipped={self.num_skipped})"
        )
