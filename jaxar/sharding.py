"""Device meshes, the logical-axis vocabulary and sharded initialisation.

One vocabulary of logical axis names is used by every module (see ``LOGICAL_AXES``);
``DEFAULT_RULES`` map them onto the three mesh axes ``data``, ``fsdp`` and ``tensor``.
Parameters are annotated with ``nn.with_logical_partitioning`` and activations with
``nn.with_logical_constraint``; ``sharded_init`` turns an init function into a jitted one
whose outputs land directly in their shardings.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.experimental.mesh_utils
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

MESH_AXES = ("data", "fsdp", "tensor")

# The one vocabulary of logical axis names used across jaxar.
LOGICAL_AXES = (
    "batch",  # examples
    "length",  # sequence / token positions
    "embed",  # model width
    "mlp",  # feed-forward hidden width
    "heads",  # attention heads
    "kv",  # per-head width
    "vocab",  # output classes / code vocabulary
    "codebook",  # quantizer codebook entries
    "conv_in",  # conv input channels
    "conv_out",  # conv output channels
    "layers",  # the stacked layer axis of a scanned transformer stack (scan_layers)
)

# Logical axis -> mesh axes. Batch is split over data and fsdp; weights are split over fsdp
# along their embedding dimension and over tensor along heads / mlp / vocab.
DEFAULT_RULES: tuple[tuple[str, Any], ...] = (
    ("batch", ("data", "fsdp")),
    ("length", None),
    ("embed", "fsdp"),
    ("mlp", "tensor"),
    ("heads", "tensor"),
    ("kv", None),
    ("vocab", "tensor"),
    ("codebook", None),
    ("conv_in", None),
    ("conv_out", "fsdp"),
    ("layers", None),
)


def make_mesh(
    data: int = -1,
    fsdp: int = 1,
    tensor: int = 1,
    devices: Sequence[jax.Device] | None = None,
) -> Mesh:
    """Builds a ``(data, fsdp, tensor)`` mesh. One size may be -1: it takes the rest.

    Raises ValueError when the sizes do not multiply to the number of devices.
    """
    devices = list(jax.devices() if devices is None else devices)
    sizes = [data, fsdp, tensor]
    if sizes.count(-1) > 1:
        raise ValueError(f"at most one mesh axis may be -1, got {dict(zip(MESH_AXES, sizes))}")
    if any(s == 0 or s < -1 for s in sizes):
        raise ValueError(f"mesh axis sizes must be positive or -1, got {sizes}")
    known = math.prod(s for s in sizes if s != -1)
    if -1 in sizes:
        if len(devices) % known:
            raise ValueError(f"{len(devices)} devices cannot be split into mesh sizes {sizes}")
        sizes[sizes.index(-1)] = len(devices) // known
    if math.prod(sizes) != len(devices):
        raise ValueError(
            f"mesh {dict(zip(MESH_AXES, sizes))} needs {math.prod(sizes)} devices, "
            f"but {len(devices)} are given"
        )
    try:
        grid = jax.experimental.mesh_utils.create_device_mesh(sizes, devices=devices)
    except Exception:  # noqa: BLE001 - fake CPU devices have no topology; plain reshape is fine
        grid = np.asarray(devices, dtype=object).reshape(sizes)
    return Mesh(grid, MESH_AXES)


def rules_with_overrides(overrides: dict[str, Any] | None = None) -> tuple[tuple[str, Any], ...]:
    """Default rules with some logical axes re-mapped (e.g. ``{"embed": None}``)."""
    overrides = dict(overrides or {})
    unknown = set(overrides) - set(LOGICAL_AXES)
    if unknown:
        raise ValueError(f"unknown logical axes {sorted(unknown)}; known: {LOGICAL_AXES}")
    return tuple((name, overrides.get(name, axes)) for name, axes in DEFAULT_RULES)


def logical_to_sharding(tree: Any, mesh: Mesh, rules=DEFAULT_RULES) -> Any:
    """Maps a pytree (possibly holding ``nn.Partitioned`` boxes) to NamedShardings.

    Leaves without logical annotations are replicated.
    """
    specs = nn.get_partition_spec(tree)
    return nn.logical_to_mesh_sharding(specs, mesh, list(rules))


def replicated(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, PartitionSpec())


def batch_sharding(mesh: Mesh, ndim: int = 1) -> NamedSharding:
    """Sharding for a batch array: leading axis over (data, fsdp), the rest replicated."""
    return NamedSharding(mesh, PartitionSpec(("data", "fsdp"), *([None] * (ndim - 1))))


@contextlib.contextmanager
def use_mesh(mesh: Mesh, rules=DEFAULT_RULES):
    """Context in which logical constraints inside modules resolve against ``mesh``."""
    with mesh, nn.logical_axis_rules(list(rules)):
        yield


def sharded_init(
    init_fn: Callable[..., Any], mesh: Mesh, *args, rules=DEFAULT_RULES
) -> tuple[Any, Any]:
    """Runs ``init_fn(*args)`` so its outputs are created directly in their shardings.

    ``init_fn`` may return ``nn.Partitioned``-boxed leaves; they are unboxed. Returns
    ``(tree, shardings)``. The abstract tree (``jax.eval_shape``) doubles as the orbax
    restore target.
    """
    with use_mesh(mesh, rules):
        abstract = jax.eval_shape(init_fn, *args)
        shardings = logical_to_sharding(abstract, mesh, rules)
        tree = jax.jit(lambda *a: nn.unbox(init_fn(*a)), out_shardings=shardings)(*args)
    return tree, shardings


def abstract_with_sharding(tree: Any, shardings: Any) -> Any:
    """ShapeDtypeStructs carrying target shardings (a restore target for orbax)."""
    return jax.tree.map(
        lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), tree, shardings
    )
