"""Path handling for workdirs and artefacts: local folders and ``gs://`` URLs alike.

Every read and write of a workdir, checkpoint, metrics file, grid or data shard goes through
``etils.epath``, so ``gs://bucket/run`` works the same way as ``runs/demo``. ``resolve`` is the
one place that turns a user's path into an absolute one: local paths are made absolute (a
stored reference must not depend on the directory a run started in); URLs are kept as given.
"""

from __future__ import annotations

import os
import re

from etils import epath

PathLike = str | os.PathLike

_URL = re.compile(r"^[a-zA-Z][a-zA-Z0-9+.-]*://")


def is_url(path: PathLike) -> bool:
    """True for ``scheme://...`` paths (``gs://``, ``s3://``, ...)."""
    return bool(_URL.match(os.fspath(path)))


def resolve(path: PathLike) -> epath.Path:
    """An absolute ``epath.Path``: local paths made absolute, URLs unchanged."""
    text = os.fspath(path)
    if not text:
        raise ValueError("empty path")
    if is_url(text):
        return epath.Path(text)
    return epath.Path(os.path.abspath(os.path.expanduser(text)))


def join(path: PathLike, *parts: str) -> epath.Path:
    """``resolve(path) / parts...``."""
    out = resolve(path)
    for part in parts:
        out = out / part
    return out
