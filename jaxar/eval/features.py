"""Streaming feature extraction: image batches -> Inception features, sharded over a mesh.

Batches (numpy uint8 [B,H,W,3] or float [-1,1], or dicts holding them under ``"image"``) are
re-chunked into fixed global batches of ``batch_size`` rows, the last one padded; each batch is
placed with its leading axis split over the mesh's (data, fsdp) axes, run through one jitted
function, and the padding rows are dropped. With several processes every process feeds its own
local batches (all processes must yield the same number of batches); the results are gathered.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from typing import Any

import jax
import numpy as np
from jax.experimental import multihost_utils
from jax.sharding import Mesh

from jaxar.eval.inception import InceptionV3
from jaxar.eval.reference_npz import iter_npz_images
from jaxar.sharding import batch_sharding, make_mesh, replicated

ApplyFn = Callable[[Any, jax.Array], Mapping[str, jax.Array]]
DEFAULT_KEYS = ("pool", "logits_unbiased")


def inception_apply_fn(model: InceptionV3) -> ApplyFn:
    """``(variables, images [B,H,W,3]) -> {"pool", "logits", "logits_unbiased", "spatial"}``."""
    return lambda variables, images: model.apply(variables, images)


def _images_of(batch: Any) -> np.ndarray:
    images = batch["image"] if isinstance(batch, Mapping) else batch
    images = np.asarray(images)
    if images.ndim != 4:
        raise ValueError(f"image batches must be [B,H,W,C], got shape {images.shape}")
    return images


def rebatch(batches: Iterable[Any], batch_size: int) -> Iterator[np.ndarray]:
    """Re-chunks image batches of any sizes into ``batch_size`` rows (the last may be short)."""
    pending: list[np.ndarray] = []
    count = 0
    for batch in batches:
        images = _images_of(batch)
        if pending and images.shape[1:] != pending[0].shape[1:]:
            raise ValueError(f"image shape changed from {pending[0].shape[1:]} to {images.shape}")
        pending.append(images)
        count += images.shape[0]
        while count >= batch_size:
            joined = np.concatenate(pending)
            yield joined[:batch_size]
            pending, count = [joined[batch_size:]], count - batch_size
    if count:
        yield np.concatenate(pending)


def _pad(images: np.ndarray, batch_size: int) -> tuple[np.ndarray, np.ndarray]:
    """Pads [b,...] to [batch_size,...] with copies of the last row -> (images, valid mask)."""
    valid = np.zeros(batch_size, bool)
    valid[: images.shape[0]] = True
    if images.shape[0] < batch_size:
        fill = np.repeat(images[-1:], batch_size - images.shape[0], axis=0)
        images = np.concatenate([images, fill])
    return images, valid


@functools.lru_cache(maxsize=16)
def _jitted_step(apply_fn: ApplyFn, keys: tuple[str, ...]) -> Callable:
    """One jitted step per (apply_fn, keys), so repeated extractions do not recompile."""

    def step(variables, images):
        out = apply_fn(variables, images)
        missing = set(keys) - set(out)
        if missing:
            raise ValueError(f"apply_fn outputs {sorted(out)}, lacks {sorted(missing)}")
        return {k: out[k] for k in keys}

    return jax.jit(step)


def extract_features(
    apply_fn: ApplyFn,
    variables: Any,
    batches: Iterable[Any],
    *,
    batch_size: int,
    mesh: Mesh | None = None,
    keys: Sequence[str] = DEFAULT_KEYS,
) -> dict[str, np.ndarray]:
    """Runs ``apply_fn`` over all images -> ``{key: float32 [N, ...]}`` in input order.

    batch_size: rows per process per step; must be divisible by the local number of devices
        along the mesh's (data, fsdp) axes. ``mesh`` defaults to all devices on ``data``.
    """
    mesh = make_mesh() if mesh is None else mesh
    shards = mesh.shape["data"] * mesh.shape["fsdp"]
    local_shards = max(1, shards // jax.process_count())
    if batch_size < 1 or batch_size % local_shards:
        raise ValueError(
            f"batch_size {batch_size} must be a positive multiple of the {local_shards} local "
            "batch shards of the mesh"
        )
    variables = jax.device_put(variables, replicated(mesh))
    jitted = _jitted_step(apply_fn, tuple(keys))
    results: dict[str, list[np.ndarray]] = {k: [] for k in keys}
    for images in rebatch(batches, batch_size):
        images, valid = _pad(images, batch_size)
        sharding = batch_sharding(mesh, images.ndim)
        global_images = jax.make_array_from_process_local_data(sharding, images)
        out = jitted(variables, global_images)
        if jax.process_count() > 1:
            out, valid = multihost_utils.process_allgather((out, valid), tiled=True)
        for k in keys:
            results[k].append(np.asarray(out[k], dtype=np.float32)[np.asarray(valid)])
    if not results[keys[0]]:
        raise ValueError("no images were given")
    return {k: np.concatenate(v) for k, v in results.items()}


def extract_npz_features(
    apply_fn: ApplyFn,
    variables: Any,
    path: str | os.PathLike,
    *,
    batch_size: int,
    mesh: Mesh | None = None,
    keys: Sequence[str] = DEFAULT_KEYS,
) -> dict[str, np.ndarray]:
    """Features of the ``arr_0`` images of an ADM-layout .npz, streamed in batches."""
    batches = iter_npz_images(path, batch_size)
    return extract_features(
        apply_fn, variables, batches, batch_size=batch_size, mesh=mesh, keys=keys
    )
