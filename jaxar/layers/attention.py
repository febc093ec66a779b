"""Multi-head self-attention with grouped-query heads, RoPE, masks and a functional KV cache.

The cache is a plain pytree that lives on device and has fixed shapes, so it can be carried
through ``lax.scan`` and donated::

    cache = {"k": [B, Lmax, Hkv, Dh], "v": [B, Lmax, Hkv, Dh], "index": int32 []}

``index`` is the next write slot. A call with ``T`` new tokens writes their (rotated) keys and
values at ``[index, index + T)`` and returns the cache with ``index + T``; prefill (T > 1) and
single/multi-token decode steps are the same call.

Masks are boolean (True = may attend), broadcastable to ``[B, H, T, S]`` where ``S`` is the
key length (``T`` without cache, ``Lmax`` with cache). Without an explicit mask the
attention is causal (``causal=True``) or full. With a cache, keys at slots not yet written
(``>= index + T``) are always hidden.
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxar.layers.mlp import dense_init
from jaxar.layers.rope import apply_rope

KVCache = dict[str, jax.Array]


def init_kv_cache(
    batch: int, max_len: int, num_kv_heads: int, head_dim: int, dtype: Any = jnp.float32
) -> KVCache:
    """An empty cache for one attention layer (see module docstring)."""
    if min(batch, max_len, num_kv_heads, head_dim) <= 0:
        raise ValueError(
            f"cache sizes must be positive: batch={batch} max_len={max_len} "
            f"num_kv_heads={num_kv_heads} head_dim={head_dim}"
        )
    shape = (batch, max_len, num_kv_heads, head_dim)
    return {
        "k": jnp.zeros(shape, dtype),
        "v": jnp.zeros(shape, dtype),
        "index": jnp.zeros((), jnp.int32),
    }


def init_kv_caches(
    num_layers: int, batch: int, max_len: int, num_kv_heads: int, head_dim: int, dtype: Any
) -> list[KVCache]:
    """Empty caches for a stack of ``num_layers`` attention layers (every family's cache)."""
    return [init_kv_cache(batch, max_len, num_kv_heads, head_dim, dtype) for _ in range(num_layers)]


def _broadcast_mask(mask: jax.Array, batch: int, heads: int, t: int, s: int) -> jax.Array:
    """Bool mask [T, S] | [B, T, S] | [B, 1|H, T, S] -> [B, H, T, S]."""
    mask = jnp.asarray(mask, bool)
    if mask.ndim == 2:
        mask = mask[None, None]
    elif mask.ndim == 3:
        mask = mask[:, None]
    if mask.ndim != 4 or mask.shape[-2:] != (t, s):
        raise ValueError(f"attention mask of shape {mask.shape} does not fit queries {t}, keys {s}")
    return jnp.broadcast_to(mask, (batch, heads, t, s))


def dot_product_attention(
    q: jax.Array,
    k: jax.Array,
    v: jax.Array,
    mask: jax.Array | None,
    *,
    dropout_rate: float = 0.0,
    dropout_rng: jax.Array | None = None,
) -> jax.Array:
    """Grouped-query attention with float32 softmax.

    q: [B, T, H, Dh]; k, v: [B, S, Hkv, Dh] with H a multiple of Hkv (query head h reads kv
    head h // (H / Hkv), as ``repeat_interleave``); mask: bool [B, H, T, S] or None.
    Returns [B, T, H, Dh].
    """
    b, t, h, dh = q.shape
    hkv = k.shape[2]
    groups = h // hkv
    qg = q.reshape(b, t, hkv, groups, dh)
    scores = jnp.einsum("btkgd,bskd->bkgts", qg, k, preferred_element_type=jnp.float32)
    scores = scores * (dh**-0.5)
    if mask is not None:
        mask = mask.reshape(b, hkv, groups, t, -1)
        scores = jnp.where(mask, scores, jnp.finfo(jnp.float32).min)
    weights = jax.nn.softmax(scores, axis=-1)
    if dropout_rate > 0.0 and dropout_rng is not None:
        keep = jax.random.bernoulli(dropout_rng, 1.0 - dropout_rate, weights.shape)
        weights = jnp.where(keep, weights / (1.0 - dropout_rate), 0.0)
    out = jnp.einsum("bkgts,bskd->btkgd", weights.astype(v.dtype), v)
    return out.reshape(b, t, h, dh)


def attend_and_project(
    q: jax.Array,
    k: jax.Array,
    v: jax.Array,
    mask: jax.Array | None,
    *,
    features: int,
    kernel_init: Any,
    name: str,
    use_bias: bool = True,
    dropout_rate: float = 0.0,
    dropout_rng: jax.Array | None = None,
    dtype: Any = jnp.float32,
    param_dtype: Any = jnp.float32,
) -> jax.Array:
    """``dot_product_attention`` (q [B, T, H, Dh], k, v [B, S, Hkv, Dh], mask) followed by the
    output projection ``name`` (kernel [H, Dh, features]) -> [B, T, features]. Call it from a
    compact method: the projection becomes a submodule of the calling module."""
    out = dot_product_attention(q, k, v, mask, dropout_rate=dropout_rate, dropout_rng=dropout_rng)
    out = nn.with_logical_constraint(out, ("batch", "length", "heads", "kv"))
    return nn.DenseGeneral(
        features,
        axis=(-2, -1),
        use_bias=use_bias,
        kernel_init=nn.with_logical_partitioning(kernel_init, ("heads", "kv", "embed")),
        bias_init=nn.with_logical_partitioning(nn.initializers.zeros, ("embed",)),
        dtype=dtype,
        param_dtype=param_dtype,
        name=name,
    )(out)


def update_kv_cache(cache: KVCache, k: jax.Array, v: jax.Array) -> KVCache:
    """Writes k, v [B, T, Hkv, Dh] at ``cache["index"]``; returns the advanced cache."""
    if cache["k"].shape[0] != k.shape[0] or cache["k"].shape[2:] != k.shape[2:]:
        raise ValueError(f"cache of shape {cache['k'].shape} does not fit new keys {k.shape}")
    if k.shape[1] > cache["k"].shape[1]:
        raise ValueError(
            f"{k.shape[1]} new tokens do not fit a cache of length {cache['k'].shape[1]}"
        )
    index = cache["index"]
    start = (0, index, 0, 0)
    return {
        "k": jax.lax.dynamic_update_slice(cache["k"], k.astype(cache["k"].dtype), start),
        "v": jax.lax.dynamic_update_slice(cache["v"], v.astype(cache["v"].dtype), start),
        "index": index + k.shape[1],
    }


class Attention(nn.Module):
    """Self-attention: q/k/v projections (optional GQA), RoPE, mask, KV cache, output proj.

    Call: ``(x [B, T, D], rope=(cos, sin) [(B,) T, Dh/2] | None, mask=None, cache=None,
    train=False) -> (y [B, T, D], new_cache | None)``.
    """

    num_heads: int
    num_kv_heads: int | None = None
    head_dim: int | None = None
    causal: bool = True
    use_bias: bool = False
    attn_dropout_rate: float = 0.0
    resid_dropout_rate: float = 0.0
    init_std: float = 0.02
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32

    def _proj(self, heads: int, head_dim: int, name: str) -> nn.Module:
        return nn.DenseGeneral(
            (heads, head_dim),
            use_bias=self.use_bias,
            kernel_init=nn.with_logical_partitioning(
                dense_init(self.init_std), ("embed", "heads", "kv")
            ),
            bias_init=nn.with_logical_partitioning(nn.initializers.zeros, ("heads", "kv")),
            dtype=self.dtype,
            param_dtype=self.param_dtype,
            name=name,
        )

    def _default_mask(self, batch: int, t: int, s: int, offset: jax.Array | int) -> jax.Array:
        q_pos = offset + jnp.arange(t)[:, None]
        k_pos = jnp.arange(s)[None, :]
        mask = k_pos <= q_pos if self.causal else jnp.broadcast_to(k_pos < offset + t, (t, s))
        return _broadcast_mask(mask, batch, self.num_heads, t, s)

    @nn.compact
    def __call__(
        self,
        x: jax.Array,
        *,
        rope: tuple[jax.Array, jax.Array] | None = None,
        mask: jax.Array | None = None,
        cache: KVCache | None = None,
        train: bool = False,
    ) -> tuple[jax.Array, KVCache | None]:
        b, t, dim = x.shape
        num_kv = self.num_kv_heads or self.num_heads
        head_dim = self.head_dim or dim // self.num_heads
        if self.num_heads % num_kv:
            raise ValueError(f"num_heads {self.num_heads} not a multiple of num_kv_heads {num_kv}")
        q = self._proj(self.num_heads, head_dim, "query")(x)  # [B, T, H, Dh]
        k = self._proj(num_kv, head_dim, "key")(x)  # [B, T, Hkv, Dh]
        v = self._proj(num_kv, head_dim, "value")(x)
        if rope is not None:
            q, k = apply_rope(q, *rope), apply_rope(k, *rope)
        offset = 0
        if cache is not None:
            offset = cache["index"]
            cache = update_kv_cache(cache, k, v)
            k, v = cache["k"], cache["v"]
        s = k.shape[1]
        if mask is None:
            full_mask = self._default_mask(b, t, s, offset)
        else:
            full_mask = _broadcast_mask(mask, b, self.num_heads, t, s)
            if cache is not None:  # never read unwritten cache slots
                full_mask = full_mask & (jnp.arange(s) < offset + t)
        deterministic = not train or self.attn_dropout_rate == 0.0
        y = attend_and_project(
            q,
            k,
            v,
            full_mask,
            features=dim,
            kernel_init=dense_init(self.init_std),
            name="out",
            use_bias=self.use_bias,
            dropout_rate=self.attn_dropout_rate,
            dropout_rng=None if deterministic else self.make_rng("dropout"),
            dtype=self.dtype,
            param_dtype=self.param_dtype,
        )
        y = nn.Dropout(self.resid_dropout_rate)(y, deterministic=not train)
        return y, cache
