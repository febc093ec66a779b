"""Shared benchmark helpers: timing, JSON output, and this machine's measured ceilings."""

from __future__ import annotations

import json
import platform
import statistics
import time
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp


def block(tree: Any) -> Any:
    """Waits for every array in ``tree``."""
    return jax.block_until_ready(tree)


def time_fn(fn: Callable[..., Any], *args, warmup: int = 1, iters: int = 5) -> dict[str, float]:
    """Seconds per call of ``fn(*args)`` after ``warmup`` calls: median, best, all."""
    for _ in range(warmup):
        block(fn(*args))
    times = []
    for _ in range(iters):
        start = time.perf_counter()
        block(fn(*args))
        times.append(time.perf_counter() - start)
    return {"median_s": statistics.median(times), "best_s": min(times), "times_s": times}


def machine_info() -> dict[str, Any]:
    return {
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "jax": jax.__version__,
        "backend": jax.default_backend(),
        "devices": [str(d) for d in jax.devices()],
    }


def matmul_ceiling(n: int = 2048, dtype: Any = jnp.float32, iters: int = 5) -> dict[str, float]:
    """Achieved FLOP/s of one large ``[n, n] @ [n, n]`` matmul (best of ``iters``)."""
    keys = jax.random.split(jax.random.key(0))
    a = jax.random.normal(keys[0], (n, n), dtype)
    b = jax.random.normal(keys[1], (n, n), dtype)
    matmul = jax.jit(jnp.matmul)
    timing = time_fn(matmul, a, b, warmup=1, iters=iters)
    flops = 2.0 * n**3
    return {
        "matmul_n": n,
        "matmul_flops_per_s": flops / timing["best_s"],
        "matmul_median_flops_per_s": flops / timing["median_s"],
    }


def memory_bandwidth(num_floats: int = 32 * 1024 * 1024, iters: int = 5) -> dict[str, float]:
    """Achieved bytes/s of an elementwise ``x * 2 + 1`` over ``num_floats`` float32
    (reads and writes each element once)."""
    x = jnp.ones((num_floats,), jnp.float32)
    scale = jax.jit(lambda v: v * 2.0 + 1.0)
    timing = time_fn(scale, x, warmup=1, iters=iters)
    moved = 2.0 * 4 * num_floats
    return {"bandwidth_bytes_per_s": moved / timing["best_s"], "bandwidth_bytes": moved}


def read_bandwidth(num_floats: int = 64 * 1024 * 1024, iters: int = 5) -> dict[str, float]:
    """Achieved bytes/s of reading ``num_floats`` float32 once (a sum: no output traffic),
    the access pattern of streaming weights and the KV cache in a decode step."""
    x = jnp.ones((num_floats,), jnp.float32)
    timing = time_fn(jax.jit(jnp.sum), x, warmup=1, iters=iters)
    return {"read_bandwidth_bytes_per_s": 4 * num_floats / timing["best_s"]}


def print_json(record: dict[str, Any]) -> None:
    print(json.dumps(record, indent=2, default=str), flush=True)
