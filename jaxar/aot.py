"""Ahead-of-time compile check: does a step compile for a target mesh, and what does it cost?

``compile_for_mesh`` builds a ``(data, fsdp, tensor)`` mesh from the devices of this process
(fake CPU devices are enough: ``XLA_FLAGS=--xla_force_host_platform_device_count=N``, see
``ensure_host_devices``), lowers and compiles ``jax.jit(fn)`` with the given shardings on
abstract arguments (``jax.ShapeDtypeStruct``; nothing is allocated) and reports the per-device
memory of the compiled program and its FLOPs.

What transfers to a TPU: sharding errors, shapes, and the argument / output bytes per device
(exact: they follow from shapes and shardings). Temporary bytes and FLOPs come from the CPU
compiler and are an estimate of the TPU figures (other fusion, no bf16 native ops).
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import re
import time
from collections.abc import Callable, Sequence
from typing import Any

import jax
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from jaxar import sharding

_DEVICE_FLAG = "--xla_force_host_platform_device_count"


@dataclasses.dataclass(frozen=True)
class AotReport:
    """Per-device figures of one compiled program (bytes, FLOPs)."""

    mesh_shape: dict[str, int]
    device_count: int
    platform: str
    argument_bytes: int
    output_bytes: int
    alias_bytes: int  # outputs written into donated arguments
    temp_bytes: int
    generated_code_bytes: int
    peak_bytes: int  # argument + output - alias + temp: a live-memory upper bound
    flops: float | None
    bytes_accessed: float | None
    compile_seconds: float

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def to_json(self, indent: int | None = 1) -> str:
        return json.dumps(self.to_dict(), indent=indent, sort_keys=True)

    def summary(self) -> str:
        mib = lambda n: f"{n / 2**20:.1f} MiB"
        flops = "n/a" if self.flops is None else f"{self.flops / 1e9:.3f} GFLOP"
        mesh = "x".join(f"{k}={v}" for k, v in self.mesh_shape.items())
        return (
            f"mesh {mesh} on {self.device_count} {self.platform} devices, per device: "
            f"arguments {mib(self.argument_bytes)}, outputs {mib(self.output_bytes)} "
            f"(aliased {mib(self.alias_bytes)}), temporaries {mib(self.temp_bytes)}, "
            f"peak <= {mib(self.peak_bytes)}, {flops}"
        )


@dataclasses.dataclass(frozen=True)
class AotTarget:
    """A function to check and how to call it (see ``compile_for_mesh`` for the fields)."""

    fn: Callable[..., Any]
    abstract_args: Sequence[Any]
    in_shardings: Any = None
    out_shardings: Any = None
    donate_argnums: int | Sequence[int] = ()


def ensure_host_devices(count: int) -> None:
    """Asks for ``count`` fake CPU devices (CPU platform). Must run before JAX starts its
    backends; afterwards it only checks, raising ValueError when fewer devices exist.
    """
    from jax._src import xla_bridge

    if xla_bridge.backends_are_initialized():
        if jax.device_count() < count:
            raise ValueError(
                f"{count} devices needed but JAX already started with {jax.device_count()}; "
                f"set XLA_FLAGS={_DEVICE_FLAG}={count} before starting Python"
            )
        return
    flags = re.sub(rf"{_DEVICE_FLAG}=\d+", "", os.environ.get("XLA_FLAGS", "")).strip()
    os.environ["XLA_FLAGS"] = f"{flags} {_DEVICE_FLAG}={count}".strip()
    jax.config.update("jax_platforms", "cpu")


def mesh_for(mesh_shape: Sequence[int], device_count: int | None = None) -> Mesh:
    """A ``(data, fsdp, tensor)`` mesh over the first devices of this process."""
    if len(mesh_shape) != len(sharding.MESH_AXES):
        raise ValueError(f"mesh_shape must give {sharding.MESH_AXES} sizes, got {mesh_shape}")
    if any(size < 1 for size in mesh_shape):
        raise ValueError(f"mesh sizes must be >= 1, got {tuple(mesh_shape)}")
    needed = math.prod(mesh_shape)
    device_count = needed if device_count is None else device_count
    if device_count != needed:
        raise ValueError(f"mesh {tuple(mesh_shape)} needs {needed} devices, not {device_count}")
    available = jax.devices()
    if len(available) < needed:
        raise ValueError(
            f"mesh {tuple(mesh_shape)} needs {needed} devices but only {len(available)} exist; "
            f"run with XLA_FLAGS={_DEVICE_FLAG}={needed} (CPU) or call ensure_host_devices first"
        )
    return sharding.make_mesh(*mesh_shape, devices=available[:needed])


def _to_shardings(specs: Any, mesh: Mesh) -> Any:
    """PartitionSpec / None leaves -> NamedSharding; a callable gets the mesh."""
    if callable(specs) and not isinstance(specs, PartitionSpec):
        return specs(mesh)
    if specs is None:
        return None
    return jax.tree.map(
        lambda spec: NamedSharding(mesh, spec if spec is not None else PartitionSpec()),
        specs,
        is_leaf=lambda x: x is None or isinstance(x, PartitionSpec),
    )


def _abstract(tree: Any) -> Any:
    return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), tree)


def _cost(compiled) -> dict[str, float]:
    cost = compiled.cost_analysis()
    if isinstance(cost, (list, tuple)):  # older jax: one dict per program
        cost = cost[0] if cost else {}
    return dict(cost or {})


def compile_for_mesh(
    fn: Callable[..., Any],
    abstract_args: Sequence[Any],
    mesh_shape: Sequence[int] = (1, 1, 1),
    in_shardings: Any = None,
    out_shardings: Any = None,
    device_count: int | None = None,
    donate_argnums: int | Sequence[int] = (),
    rules=sharding.DEFAULT_RULES,
) -> AotReport:
    """Compiles ``jax.jit(fn)`` for a ``(data, fsdp, tensor)`` mesh and reports its cost.

    ``abstract_args``: the positional arguments as pytrees of ``jax.ShapeDtypeStruct`` (or
    arrays). ``in_shardings`` / ``out_shardings``: pytrees of ``PartitionSpec`` matching the
    arguments / outputs (None leaves: replicated; None overall: let XLA choose), or a callable
    ``mesh -> shardings`` (e.g. built with ``sharding.logical_to_sharding``). ``fn`` runs inside
    ``sharding.use_mesh`` so logical constraints resolve. Raises ValueError when the mesh does
    not fit the available devices.
    """
    mesh = mesh_for(mesh_shape, device_count)
    args = tuple(_abstract(arg) for arg in abstract_args)
    jit_kwargs = {"donate_argnums": donate_argnums}
    if in_shardings is not None:
        jit_kwargs["in_shardings"] = _to_shardings(in_shardings, mesh)
    if out_shardings is not None:
        jit_kwargs["out_shardings"] = _to_shardings(out_shardings, mesh)
    start = time.perf_counter()
    with sharding.use_mesh(mesh, rules):
        compiled = jax.jit(fn, **jit_kwargs).lower(*args).compile()
    seconds = time.perf_counter() - start
    memory = compiled.memory_analysis()
    cost = _cost(compiled)
    argument, output = memory.argument_size_in_bytes, memory.output_size_in_bytes
    alias, temp = memory.alias_size_in_bytes, memory.temp_size_in_bytes
    return AotReport(
        mesh_shape=dict(zip(sharding.MESH_AXES, (int(s) for s in mesh_shape))),
        device_count=math.prod(mesh_shape),
        platform=mesh.devices.flat[0].platform,
        argument_bytes=int(argument),
        output_bytes=int(output),
        alias_bytes=int(alias),
        temp_bytes=int(temp),
        generated_code_bytes=int(memory.generated_code_size_in_bytes),
        peak_bytes=int(argument + output - alias + temp),
        flops=cost.get("flops"),
        bytes_accessed=cost.get("bytes accessed"),
        compile_seconds=round(seconds, 3),
    )


def compile_target(target: AotTarget, mesh_shape: Sequence[int], **kwargs) -> AotReport:
    """``compile_for_mesh`` on an ``AotTarget``."""
    return compile_for_mesh(
        target.fn,
        target.abstract_args,
        mesh_shape,
        in_shardings=target.in_shardings,
        out_shardings=target.out_shardings,
        donate_argnums=target.donate_argnums,
        **kwargs,
    )
