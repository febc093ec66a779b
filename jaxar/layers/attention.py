"""Multi-head self-attention with grouped-query heads, RoPE, masks and a functional KV cache.

The cache is a plain pytree that lives on device and has fixed shapes, so it can be carried
through ``lax.scan`` and donated::

    cache = {"k": [B, Hkv, Lmax, Dh], "v": [B, Hkv, Lmax, Dh], "index": int32 []}

``index`` is the next write slot. A call with ``T`` new tokens writes their (rotated) keys and
values at ``[index, index + T)`` and returns the cache with ``index + T``; prefill (T > 1) and
single/multi-token decode steps are the same call.

Masks are boolean (True = may attend), broadcastable to ``[B, H, T, S]`` where ``S`` is the
key length (``T`` without cache, ``Lmax`` with cache); they are never broadcast to that size.
Without an explicit mask the attention is causal (``causal=True``) or full: without a cache
that is a flag to ``jax.nn.dot_product_attention`` (a fused kernel where the backend has
one); with a cache it is the [T, S] ``slot_mask`` computed from ``index`` alone. With a cache,
keys at slots not yet written (``>= index + T``) are always hidden.
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxar.layers.mlp import dense_init
from jaxar.layers.rope import apply_rope

KVCache = dict[str, jax.Array]

# Where the cache keeps its slots: [B, Hkv, Lmax, Dh]. Heads come before slots so a decode
# step's score and mix products are plain batched mat-vecs over contiguous rows; with slots
# before heads XLA transposes the whole cache of every layer at every step (3.6x slower decode
# attention on CPU at 16 rows x 257 slots, bench/RESULTS.md).
SLOT_AXIS = -2


def init_kv_cache(
    batch: int, max_len: int, num_kv_heads: int, head_dim: int, dtype: Any = jnp.float32
) -> KVCache:
    """An empty cache for one attention layer (see module docstring)."""
    if min(batch, max_len, num_kv_heads, head_dim) <= 0:
        raise ValueError(
            f"cache sizes must be positive: batch={batch} max_len={max_len} "
            f"num_kv_heads={num_kv_heads} head_dim={head_dim}"
        )
    shape = (batch, num_kv_heads, max_len, head_dim)
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


def _mask4(mask: jax.Array, t: int, s: int) -> jax.Array:
    """Bool mask [T, S] | [B, T, S] | [B|1, 1|H, T, S] -> 4-d [B|1, 1|H, T, S] (no copies:
    the batch and head axes stay 1 unless the caller's mask has them)."""
    mask = jnp.asarray(mask, bool)
    if mask.ndim == 2:
        mask = mask[None, None]
    elif mask.ndim == 3:
        mask = mask[:, None]
    if mask.ndim != 4 or mask.shape[-2:] != (t, s):
        raise ValueError(f"attention mask of shape {mask.shape} does not fit queries {t}, keys {s}")
    return mask


def slot_mask(t: int, s: int, offset: jax.Array | int, causal: bool) -> jax.Array:
    """The mask a cache implies, from lengths alone: bool [T, S] where query i (at sequence
    position ``offset + i``) may read slot j iff j was written (``j < offset + T``) and, if
    ``causal``, ``j <= offset + i``. T x S booleans, never [B, H, T, S]."""
    k_pos = jnp.arange(s)[None, :]
    if causal:
        return k_pos <= offset + jnp.arange(t)[:, None]
    return jnp.broadcast_to(k_pos < offset + t, (t, s))


def dot_product_attention(
    q: jax.Array,
    k: jax.Array,
    v: jax.Array,
    mask: jax.Array | None,
    *,
    heads_first: bool = False,
    dropout_rate: float = 0.0,
    dropout_rng: jax.Array | None = None,
) -> jax.Array:
    """Grouped-query attention with float32 scores and softmax.

    q: [B, T, H, Dh]; k, v: [B, S, Hkv, Dh], or [B, Hkv, S, Dh] with ``heads_first`` (the
    cache layout), H a multiple of Hkv (query head h reads kv head h // (H / Hkv), as
    ``repeat_interleave``); mask: bool broadcastable to [B, H, T, S] (see ``_mask4``) or None.
    Returns [B, T, H, Dh] in v's dtype.
    """
    b, t, h, dh = q.shape
    hkv = k.shape[1 if heads_first else 2]
    groups = h // hkv
    kv = "bksd" if heads_first else "bskd"
    qg = q.reshape(b, t, hkv, groups, dh)
    scores = jnp.einsum(f"btkgd,{kv}->bkgts", qg, k, preferred_element_type=jnp.float32)
    scores = scores * (dh**-0.5)
    if mask is not None:
        mask = _mask4(mask, t, scores.shape[-1])
        mb, mh = mask.shape[:2]
        mask = mask.reshape(mb, hkv if mh > 1 else 1, groups if mh > 1 else 1, t, -1)
        scores = jnp.where(mask, scores, jnp.finfo(jnp.float32).min)
    weights = jax.nn.softmax(scores, axis=-1)
    if dropout_rate > 0.0 and dropout_rng is not None:
        keep = jax.random.bernoulli(dropout_rng, 1.0 - dropout_rate, weights.shape)
        weights = jnp.where(keep, weights / (1.0 - dropout_rate), 0.0)
    out = jnp.einsum(f"bkgts,{kv}->btkgd", weights.astype(v.dtype), v)
    return out.reshape(b, t, h, dh)


def fused_attention(
    q: jax.Array, k: jax.Array, v: jax.Array, mask: jax.Array | None, *, causal: bool
) -> jax.Array:
    """Attention without a cache through ``jax.nn.dot_product_attention``, so XLA / cuDNN can
    pick a fused kernel (``jax.nn`` handles GQA; scores and softmax in float32). q [B, T, H, Dh],
    k, v [B, T, Hkv, Dh]; ``causal`` is given as a flag and ``mask`` (broadcastable, see
    ``_mask4``) only when the caller has one, so no [B, H, T, S] tensor is built."""
    t = q.shape[1]
    if mask is not None:
        mask = _mask4(mask, t, k.shape[1])
    k, v = k.astype(q.dtype), v.astype(q.dtype)
    return jax.nn.dot_product_attention(q, k, v, mask=mask, is_causal=causal)


def attend(
    q: jax.Array,
    k: jax.Array,
    v: jax.Array,
    *,
    mask: jax.Array | None,
    causal: bool,
    cached: bool,
    dropout_rate: float = 0.0,
    dropout_rng: jax.Array | None = None,
) -> jax.Array:
    """The one dispatch every attention layer uses. q [B, T, H, Dh] -> [B, T, H, Dh].

    ``cached``: k, v are a layer's cache [B, Hkv, S, Dh] and ``mask`` already holds what the
    cache implies (``slot_mask``, [T, S]; a caller's mask and-ed in). Otherwise k, v are the
    fresh [B, T, Hkv, Dh] and attention is ``causal`` unless an explicit ``mask`` is given; it
    goes through ``fused_attention`` except with attention dropout in training, which
    ``jax.nn.dot_product_attention`` does not do."""
    dropout = dropout_rate > 0.0 and dropout_rng is not None
    if not cached and not dropout:
        return fused_attention(q, k, v, mask, causal=causal and mask is None)
    if not cached and mask is None and causal:
        mask = slot_mask(q.shape[1], k.shape[1], 0, True)
    return dot_product_attention(
        q, k, v, mask, heads_first=cached, dropout_rate=dropout_rate, dropout_rng=dropout_rng
    )


def project_heads(
    out: jax.Array,
    *,
    features: int,
    kernel_init: Any,
    name: str,
    use_bias: bool = True,
    dtype: Any = jnp.float32,
    param_dtype: Any = jnp.float32,
) -> jax.Array:
    """The output projection ``name`` (kernel [H, Dh, features]) of attended heads
    [B, T, H, Dh] -> [B, T, features]. Call it from a compact method: the projection becomes a
    submodule of the calling module."""
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
    """Writes k, v [B, T, Hkv, Dh] at slots ``[index, index + T)``; returns the advanced cache."""
    b, t, hkv, dh = k.shape
    if cache["k"].shape[0] != b or cache["k"].shape[1] != hkv or cache["k"].shape[3] != dh:
        raise ValueError(
            f"cache of shape {cache['k'].shape} ([B, Hkv, Lmax, Dh]) does not fit new keys "
            f"{k.shape} ([B, T, Hkv, Dh])"
        )
    if t > cache["k"].shape[2]:
        raise ValueError(f"{t} new tokens do not fit a cache of length {cache['k'].shape[2]}")
    index = cache["index"]
    start = (0, 0, index, 0)

    def write(buffer, new):
        return jax.lax.dynamic_update_slice(buffer, new.swapaxes(1, 2).astype(buffer.dtype), start)

    return {"k": write(cache["k"], k), "v": write(cache["v"], v), "index": index + t}


class Attention(nn.Module):
    """Self-attention: q/k/v projections (optional GQA), RoPE, mask, KV cache, output proj.

    Call: ``(x [B, T, D], rope=(cos, sin) [(B,) T, Dh/2] | None, mask=None, cache=None,
    kv_len=None, train=False) -> (y [B, T, D], new_cache | None)``. ``kv_len`` (a static int,
    with a cache) reads only the first ``kv_len`` slots: a decode step that knows the cache is
    written below it reads no more than it needs (a caller's mask then covers ``kv_len`` keys).
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

    @nn.compact
    def __call__(
        self,
        x: jax.Array,
        *,
        rope: tuple[jax.Array, jax.Array] | None = None,
        mask: jax.Array | None = None,
        cache: KVCache | None = None,
        kv_len: int | None = None,
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
        if cache is not None:
            offset = cache["index"]
            cache = update_kv_cache(cache, k, v)
            k, v = cache["k"], cache["v"]  # [B, Hkv, Lmax, Dh]
            if kv_len is not None:  # the caller knows no slot at or past kv_len is written
                k, v = k[:, :, :kv_len], v[:, :, :kv_len]
            written = slot_mask(t, k.shape[SLOT_AXIS], offset, self.causal and mask is None)
            mask = written if mask is None else _mask4(mask, t, written.shape[-1]) & written
        deterministic = not train or self.attn_dropout_rate == 0.0
        out = attend(
            q,
            k,
            v,
            mask=mask,
            causal=self.causal,
            cached=cache is not None,
            dropout_rate=self.attn_dropout_rate,
            dropout_rng=None if deterministic else self.make_rng("dropout"),
        )
        y = project_heads(
            out,
            features=dim,
            kernel_init=dense_init(self.init_std),
            name="out",
            use_bias=self.use_bias,
            dtype=self.dtype,
            param_dtype=self.param_dtype,
        )
        y = nn.Dropout(self.resid_dropout_rate)(y, deterministic=not train)
        return y, cache
