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


def check_writable_dir(path: PathLike, what: str = "directory") -> epath.Path:
    """Makes sure ``path`` is (or can be created as) a writable directory; returns it resolved.

    Creates missing folders and writes then removes a small probe file (local or ``gs://``),
    so a bad path fails before any work with a message naming it, instead of at the first
    write. Raises NotADirectoryError when ``path`` (or a parent) is a file, PermissionError
    when it cannot be created or written.
    """
    out = resolve(path)
    if out.exists() and not out.is_dir():
        raise NotADirectoryError(f"{what} {out} exists and is a file, not a directory")
    try:
        out.mkdir(parents=True, exist_ok=True)
    except (FileExistsError, NotADirectoryError) as err:
        raise NotADirectoryError(f"cannot create {what} {out}: a parent is a file ({err})") from err
    except OSError as err:
        raise PermissionError(f"cannot create {what} {out}: {err}") from err
    probe = out / f".jaxar_write_probe_{os.getpid()}_{id(out)}"
    try:
        probe.write_text("ok")
        probe.unlink()
    except OSError as err:
        raise PermissionError(f"{what} {out} is not writable: {err}") from err
    return out
