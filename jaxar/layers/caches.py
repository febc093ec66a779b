"""KV caches of a whole transformer stack, in either layout (``jaxar.layers.attention`` has
the one-layer cache ``{"k", "v", "index": int32 []}``, slots on ``SLOT_AXIS``):

- per layer (blocks ``layers_0 ..``): a list of one-layer caches;
- stacked (a scanned stack, ``jaxar.layers.scan``): one dict of the one-layer arrays with a
  leading ``[L]`` axis (``"index"``: int32 [L]), scanned over that axis together with the
  block params.

Samplers touch caches only through these helpers, so they work with both layouts.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp

from jaxar.layers.attention import SLOT_AXIS, KVCache, init_kv_cache, init_kv_caches

StackCache = list[KVCache] | KVCache


def init_stack_cache(
    num_layers: int,
    batch: int,
    max_len: int,
    num_kv_heads: int,
    head_dim: int,
    dtype: Any,
    stacked: bool = False,
) -> StackCache:
    """Empty caches for ``num_layers`` attention layers: a per-layer list, or with
    ``stacked`` one dict with a leading ``[num_layers]`` axis (for a scanned stack)."""
    if not stacked:
        return init_kv_caches(num_layers, batch, max_len, num_kv_heads, head_dim, dtype)
    if num_layers <= 0:
        raise ValueError(f"num_layers must be positive, got {num_layers}")
    one = init_kv_cache(batch, max_len, num_kv_heads, head_dim, dtype)
    return jax.tree.map(lambda x: jnp.broadcast_to(x, (num_layers, *x.shape)), one)


def is_stacked(cache: StackCache) -> bool:
    """True for the stacked (scanned) layout."""
    return isinstance(cache, dict)


def cache_slots(cache: StackCache) -> int:
    """Key/value slots ``S`` per row."""
    axis = SLOT_AXIS if SLOT_AXIS < 0 else SLOT_AXIS - 4  # from the end: both layouts
    return (cache if is_stacked(cache) else cache[0])["k"].shape[axis]


def set_cache_index(cache: StackCache, index: jax.Array | int) -> StackCache:
    """Every layer's next write slot set to ``index`` (int32 []; later entries go stale)."""
    index = jnp.asarray(index, jnp.int32)
    if is_stacked(cache):
        return {**cache, "index": jnp.broadcast_to(index, cache["index"].shape)}
    return [{**layer, "index": index} for layer in cache]
