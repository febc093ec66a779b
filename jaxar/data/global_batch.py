"""Host batches -> globally sharded jax arrays (one call per step, any number of processes)."""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

BATCH_SPEC = P(("data", "fsdp"))


def _batch_axes(spec: P) -> tuple[str, ...]:
    first = spec[0] if len(spec) else None
    if first is None:
        return ()
    return tuple(first) if isinstance(first, (tuple, list)) else (first,)


def local_batch_shards(mesh: Mesh, spec: P = BATCH_SPEC) -> int:
    """How many distinct batch slices this process's devices hold under ``spec``."""
    sharding = NamedSharding(mesh, spec)
    splits = math.prod(mesh.shape[a] for a in _batch_axes(spec))
    indices = sharding.addressable_devices_indices_map((splits,))
    return len({index[0].indices(splits) for index in indices.values()})


def host_to_global(
    batch: Mapping[str, Any], mesh: Mesh, spec: P = BATCH_SPEC
) -> dict[str, jax.Array]:
    """This process's batch ``{k: [B_local, ...]}`` (nested dicts too) -> global ``jax.Array`` s
    ``[B_global, ...]``; what the training loop feeds every step.

    The leading (batch) dimension is split over the mesh axes in ``spec[0]`` (default
    ``("data", "fsdp")``), the rest replicated, via ``jax.make_array_from_process_local_data``.
    ``B_global = B_local * process_count`` when each process holds a distinct batch slice.
    Raises ValueError when ``B_local`` does not split evenly over this process's batch shards.
    """
    for axis in _batch_axes(spec):
        if axis not in mesh.shape:
            raise ValueError(f"spec {spec} names mesh axis {axis!r}; mesh has {dict(mesh.shape)}")
    shards = local_batch_shards(mesh, spec)
    sharding = NamedSharding(mesh, spec)

    def put(path, value):
        value = np.asarray(value)
        name = f"batch{jax.tree_util.keystr(path)}"
        if value.ndim == 0:
            raise ValueError(f"{name} is a scalar; every entry needs a batch dimension")
        if value.shape[0] % shards:
            raise ValueError(
                f"{name} has local batch size {value.shape[0]}, not divisible by the "
                f"{shards} batch shards on this process's {len(mesh.local_devices)} local "
                f"devices (mesh {dict(mesh.shape)}, spec {spec})"
            )
        return jax.make_array_from_process_local_data(sharding, value)

    return jax.tree_util.tree_map_with_path(put, dict(batch))
