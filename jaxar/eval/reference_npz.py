"""Reading and writing the ``.npz`` layout of the ADM evaluation suite.

Reference batches (openai/guided-diffusion ``evaluations/``) hold ``arr_0``: uint8 images
[N, H, W, 3]; ``mu`` [D] / ``sigma`` [D, D]: pool-feature statistics (D = 2048); optionally
``mu_s`` / ``sigma_s``: the spatial (sFID) statistics. Sample batches hold ``arr_0`` (and
optionally ``arr_1``: int labels [N]). ``iter_npz_images`` streams ``arr_0`` in batches without
loading the whole array (50k 256x256 images are ~10 GB).
"""

from __future__ import annotations

import dataclasses
import os
import zipfile
from collections.abc import Iterator

import numpy as np
from numpy.typing import ArrayLike


@dataclasses.dataclass(frozen=True)
class ReferenceBatch:
    """Contents of a reference .npz. ``images`` is None when loaded with ``load_images=False``."""

    image_shape: tuple[int, ...]  # [N, H, W, 3]
    images: np.ndarray | None = None  # uint8 [N, H, W, 3]
    mu: np.ndarray | None = None  # float64 [D]
    sigma: np.ndarray | None = None  # float64 [D, D]
    mu_s: np.ndarray | None = None  # float64 [D_s]
    sigma_s: np.ndarray | None = None  # float64 [D_s, D_s]
    labels: np.ndarray | None = None  # int [N]

    @property
    def num_images(self) -> int:
        return self.image_shape[0]


def _check_images(images: np.ndarray, where: str) -> None:
    if images.dtype != np.uint8:
        raise ValueError(f"{where}: images must be uint8, got dtype {images.dtype}")
    if images.ndim != 4 or images.shape[-1] != 3:
        raise ValueError(f"{where}: images must have shape [N, H, W, 3], got {images.shape}")


def _check_stats(mu, sigma, names: tuple[str, str], where: str) -> None:
    if (mu is None) != (sigma is None):
        raise ValueError(f"{where}: {names[0]} and {names[1]} must be given together")
    if mu is None:
        return
    for name, x in zip(names, (mu, sigma)):
        if not np.issubdtype(x.dtype, np.floating):
            raise ValueError(f"{where}: {name} must be floating point, got dtype {x.dtype}")
    if mu.ndim != 1 or sigma.shape != (mu.shape[0], mu.shape[0]):
        raise ValueError(
            f"{where}: {names[0]} must be [D] and {names[1]} [D, D], got {mu.shape}, {sigma.shape}"
        )


def save_samples_npz(
    path: str | os.PathLike, images: ArrayLike, labels: ArrayLike | None = None
) -> None:
    """Writes a sample batch: ``arr_0`` uint8 [N, H, W, 3] (and ``arr_1`` labels [N])."""
    images = np.asarray(images)
    _check_images(images, "save_samples_npz")
    arrays = {"arr_0": images}
    if labels is not None:
        labels = np.asarray(labels)
        if labels.shape != (images.shape[0],) or not np.issubdtype(labels.dtype, np.integer):
            raise ValueError(f"labels must be integers [N={images.shape[0]}], got {labels.shape}")
        arrays["arr_1"] = labels
    np.savez(path, **arrays)


def save_reference(
    path: str | os.PathLike,
    images: ArrayLike,
    mu: ArrayLike | None = None,
    sigma: ArrayLike | None = None,
    mu_s: ArrayLike | None = None,
    sigma_s: ArrayLike | None = None,
) -> None:
    """Writes a reference batch: ``arr_0`` plus the optional statistics (as float64)."""
    images = np.asarray(images)
    _check_images(images, "save_reference")
    arrays = {"arr_0": images}
    for names, pair in ((("mu", "sigma"), (mu, sigma)), (("mu_s", "sigma_s"), (mu_s, sigma_s))):
        pair = tuple(None if x is None else np.asarray(x, dtype=np.float64) for x in pair)
        _check_stats(*pair, names, "save_reference")
        if pair[0] is not None:
            arrays.update(zip(names, pair))
    np.savez(path, **arrays)


def _open_npz(path: str) -> np.lib.npyio.NpzFile:
    if not os.path.isfile(path):
        raise FileNotFoundError(f"reference batch {path!r} not found")
    if not zipfile.is_zipfile(path):
        raise ValueError(f"{path!r} is not an .npz file (not a zip archive)")
    try:
        return np.load(path, allow_pickle=False)
    except Exception as e:  # noqa: BLE001
        raise ValueError(f"cannot read {path!r} as .npz: {e}") from e


def _array_header(path: str, name: str) -> tuple[tuple[int, ...], np.dtype]:
    """Shape and dtype of ``name`` inside an .npz, read from the .npy header only."""
    with zipfile.ZipFile(path) as archive, archive.open(f"{name}.npy") as f:
        shape, _, dtype = _read_npy_header(f)
    return tuple(shape), dtype


def _read_npy_header(f) -> tuple[tuple[int, ...], bool, np.dtype]:
    version = np.lib.format.read_magic(f)
    if version == (1, 0):
        return np.lib.format.read_array_header_1_0(f)
    if version == (2, 0):
        return np.lib.format.read_array_header_2_0(f)
    raise ValueError(f"unsupported .npy format version {version}")


def load_reference(
    path: str | os.PathLike, *, require_statistics: bool = True, load_images: bool = True
) -> ReferenceBatch:
    """Reads a reference (or sample) batch .npz.

    Raises FileNotFoundError for a missing file, ValueError when it is not an npz, lacks
    ``arr_0`` (or ``mu`` / ``sigma`` when ``require_statistics``), or has wrong shapes / dtypes.
    With ``load_images=False`` only the header of ``arr_0`` is read.
    """
    path = os.fspath(path)
    with _open_npz(path) as data:
        keys = set(data.files)
        required = {"arr_0"} | ({"mu", "sigma"} if require_statistics else set())
        if required - keys:
            raise ValueError(
                f"{path!r} lacks {sorted(required - keys)} (has {sorted(keys)}); a reference "
                "batch holds arr_0 (uint8 [N,H,W,3]) and mu / sigma"
            )
        get = lambda k: data[k] if k in keys else None  # noqa: E731
        images = data["arr_0"] if load_images else None
        shape, dtype = (images.shape, images.dtype) if load_images else _array_header(path, "arr_0")
        stats = {k: get(k) for k in ("mu", "sigma", "mu_s", "sigma_s")}
        labels = get("arr_1")
    _check_images(_Header(shape, dtype), path)  # type: ignore[arg-type]
    _check_stats(stats["mu"], stats["sigma"], ("mu", "sigma"), path)
    _check_stats(stats["mu_s"], stats["sigma_s"], ("mu_s", "sigma_s"), path)
    if labels is not None and labels.shape != (shape[0],):
        raise ValueError(f"{path}: arr_1 (labels) must be [N={shape[0]}], got {labels.shape}")
    stats = {k: None if v is None else v.astype(np.float64) for k, v in stats.items()}
    return ReferenceBatch(image_shape=tuple(shape), images=images, labels=labels, **stats)


def iter_npz_images(
    path: str | os.PathLike, batch_size: int, key: str = "arr_0"
) -> Iterator[np.ndarray]:
    """Streams uint8 images [<=batch_size, H, W, 3] from an .npz without loading it whole."""
    path = os.fspath(path)
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    with _open_npz(path) as data:
        if key not in data.files:
            raise ValueError(f"{path!r} lacks {key!r} (has {sorted(data.files)})")
    with zipfile.ZipFile(path) as archive, archive.open(f"{key}.npy") as f:
        shape, fortran, dtype = _read_npy_header(f)
        if fortran or dtype.hasobject:
            raise ValueError(f"{path!r}: {key} must be a C-ordered plain array")
        _check_images(_Header(shape, dtype), path)  # type: ignore[arg-type]
        row_bytes = int(np.prod(shape[1:])) * dtype.itemsize
        for start in range(0, shape[0], batch_size):
            count = min(batch_size, shape[0] - start)
            buffer = f.read(count * row_bytes)
            if len(buffer) != count * row_bytes:
                raise ValueError(f"{path!r}: {key} is truncated")
            yield np.frombuffer(buffer, dtype).reshape(count, *shape[1:])


@dataclasses.dataclass(frozen=True)
class _Header:
    """Stand-in carrying ``shape`` / ``dtype`` / ``ndim`` for validation without the data."""

    shape: tuple[int, ...]
    dtype: np.dtype

    @property
    def ndim(self) -> int:
        return len(self.shape)
