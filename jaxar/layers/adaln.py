"""VAR's adaptive-LayerNorm transformer pieces (Tian et al. 2024, ``models/basic_var.py``).

- ``VARSelfAttention``: fused-style q/k/v (q and v biased, k unbiased), attention scale
  ``0.25 / sqrt(Dh)`` or, with ``attn_l2_norm``, cosine attention ``normalize(q) * exp(s_h)
  . normalize(k)`` with a learned per-head log-scale ``s_h`` clamped at ``log(100)``.
  The attention itself and the functional KV cache are ``jaxar.layers.attention``'s.
- ``AdaLNSelfAttn``: ``x += gamma1 * attn(LN(x) * (1 + scale1) + shift1)``, then the same with
  a GELU(tanh) MLP; the six modulation vectors come from the class condition (per-block
  ``ada_lin`` or, with ``shared_aln``, a shared projection plus a per-block ``ada_gss``).
- ``AdaLNBeforeHead``: ``LN(x) * (1 + scale) + shift`` before the output head.

Initialisation follows VAR's ``init_weights`` (truncated normal ``init_std`` everywhere,
out-projections divided by ``sqrt(2 * depth)``, adaLN gammas times ``init_adaln_gamma``, the
other adaLN outputs times ``init_adaln``).
"""

from __future__ import annotations

import functools
import math
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxar.layers.attention import KVCache, attend, project_heads, slot_mask, update_kv_cache
from jaxar.layers.norms import layer_norm_no_affine, modulate
from jaxar.layers.scan import StackableBlock
from jaxar.layers.transformer import DropPath


def trunc_normal(std: float):
    return nn.initializers.truncated_normal(stddev=std)


def chunk_scaled_init(std: float, multipliers: tuple[float, ...]):
    """Truncated-normal kernel [in, n * C] whose ``i``-th output chunk is scaled by
    ``multipliers[i]`` (VAR scales the adaLN gammas and the shift/scale outputs separately)."""

    def init(key, shape, dtype=jnp.float32):
        kernel = trunc_normal(std)(key, shape, dtype)
        chunk = shape[-1] // len(multipliers)
        scale = jnp.repeat(jnp.asarray(multipliers, dtype), chunk)
        return kernel * scale

    return init


def _dense(features, axes, std, name, use_bias=True, dtype=jnp.float32, init=None):
    return nn.Dense(
        features,
        use_bias=use_bias,
        kernel_init=nn.with_logical_partitioning(init or trunc_normal(std), axes),
        bias_init=nn.with_logical_partitioning(nn.initializers.zeros, axes[-1:]),
        dtype=dtype,
        name=name,
    )


class VARSelfAttention(nn.Module):
    """Call: ``(x [B, T, D], mask=None | bool [T, S], cache=None, kv_len=None, train)`` ->
    ``(y [B, T, D], cache)``.

    Without a cache ``mask`` (True = may attend) is required for causal use; with a cache new
    keys are written at ``cache["index"]`` and every query sees all written slots (VAR's
    block-causal inference). ``kv_len`` (static int) limits attention to the first
    ``kv_len`` cache slots (the tokens of all scales so far), saving work on early scales.
    """

    num_heads: int
    attn_l2_norm: bool = False
    attn_dropout_rate: float = 0.0
    resid_dropout_rate: float = 0.0
    init_std: float = 0.02
    proj_std: float = 0.02
    dtype: Any = jnp.float32

    def _qkv(self, x: jax.Array, head_dim: int) -> tuple[jax.Array, jax.Array, jax.Array]:
        def proj(name):
            return nn.DenseGeneral(
                (self.num_heads, head_dim),
                use_bias=False,
                kernel_init=nn.with_logical_partitioning(
                    trunc_normal(self.init_std), ("embed", "heads", "kv")
                ),
                dtype=self.dtype,
                name=name,
            )(x)

        def bias(name):
            init = nn.with_logical_partitioning(nn.initializers.zeros, ("heads", "kv"))
            return self.param(name, init, (self.num_heads, head_dim)).astype(self.dtype)

        return proj("query") + bias("q_bias"), proj("key"), proj("value") + bias("v_bias")

    def _scale_queries(self, q: jax.Array, k: jax.Array) -> tuple[jax.Array, jax.Array]:
        """Folds VAR's attention scale into q (the shared kernel divides by sqrt(Dh))."""
        head_dim = q.shape[-1]
        if not self.attn_l2_norm:
            return q * 0.25, k  # 0.25 / sqrt(Dh), times the kernel's sqrt(Dh)
        log_scale = self.param(
            "scale_mul",
            nn.with_logical_partitioning(nn.initializers.constant(math.log(4.0)), ("heads",)),
            (self.num_heads,),
        )
        scale = jnp.exp(jnp.minimum(log_scale, math.log(100.0))).astype(q.dtype)

        def unit(t):
            t32 = t.astype(jnp.float32)
            norm = jnp.sqrt(jnp.sum(t32 * t32, axis=-1, keepdims=True))
            return (t32 / jnp.maximum(norm, 1e-12)).astype(t.dtype)

        return unit(q) * scale[:, None] * math.sqrt(head_dim), unit(k)

    @nn.compact
    def __call__(
        self,
        x: jax.Array,
        *,
        mask: jax.Array | None = None,
        cache: KVCache | None = None,
        kv_len: int | None = None,
        train: bool = False,
    ) -> tuple[jax.Array, KVCache | None]:
        b, t, dim = x.shape
        if dim % self.num_heads:
            raise ValueError(f"width {dim} is not divisible by num_heads {self.num_heads}")
        q, k, v = self._qkv(x, dim // self.num_heads)  # [B, T, H, Dh]
        q, k = self._scale_queries(q, k)
        if cache is not None:
            offset = cache["index"]
            cache = update_kv_cache(cache, k, v)
            k, v = cache["k"], cache["v"]  # [B, H, Lmax, Dh]
            if kv_len is not None:
                k, v = k[:, :, :kv_len], v[:, :, :kv_len]
            written = slot_mask(t, k.shape[2], offset, causal=False)
            mask = written if mask is None else (jnp.asarray(mask, bool) & written)
        deterministic = not train or self.attn_dropout_rate == 0.0
        out = attend(
            q,
            k,
            v,
            mask=mask,
            causal=False,
            cached=cache is not None,
            dropout_rate=self.attn_dropout_rate,
            dropout_rng=None if deterministic else self.make_rng("dropout"),
        )
        y = project_heads(
            out,
            features=dim,
            kernel_init=trunc_normal(self.proj_std),
            name="proj",
            dtype=self.dtype,
        )
        return nn.Dropout(self.resid_dropout_rate)(y, deterministic=not train), cache


class GeluMLP(nn.Module):
    """VAR's FFN: ``fc2(gelu_tanh(fc1 x))`` with biases, then dropout. [B, L, D] -> [B, L, D]."""

    hidden_dim: int
    dropout_rate: float = 0.0
    init_std: float = 0.02
    proj_std: float = 0.02
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array, *, train: bool = False) -> jax.Array:
        h = _dense(self.hidden_dim, ("embed", "mlp"), self.init_std, "fc1", dtype=self.dtype)(x)
        h = nn.with_logical_constraint(nn.gelu(h, approximate=True), ("batch", "length", "mlp"))
        out = _dense(x.shape[-1], ("mlp", "embed"), self.proj_std, "fc2", dtype=self.dtype)(h)
        return nn.Dropout(self.dropout_rate)(out, deterministic=not train)


class AdaLNSelfAttn(StackableBlock):
    """One VAR block. Call: ``(x [B, T, D], cond, mask, cache, kv_len, train) -> (x, cache)``.

    ``cond`` is the class embedding [B, Dc], or with ``shared_aln`` the shared projection
    [B, 6, D] (gamma1, gamma2, scale1, scale2, shift1, shift2). ``drop_path_rate`` (a scanned
    stack's per-layer rate) overrides the attribute.
    """

    num_heads: int
    mlp_ratio: float = 4.0
    norm_eps: float = 1e-6
    shared_aln: bool = False
    attn_l2_norm: bool = False
    drop_rate: float = 0.0
    attn_drop_rate: float = 0.0
    drop_path_rate: float = 0.0
    init_std: float = 0.02
    proj_std: float = 0.02
    init_adaln: float = 0.5
    init_adaln_gamma: float = 1e-5
    dtype: Any = jnp.float32

    def _modulation(self, cond: jax.Array, dim: int) -> list[jax.Array]:
        """Six modulation vectors [B, D]."""
        gammas, others = (self.init_adaln_gamma,) * 2, (self.init_adaln,) * 4
        if self.shared_aln:

            def gss_init(key, shape, dtype=jnp.float32):
                raw = jax.random.normal(key, shape, dtype) / math.sqrt(dim)
                return raw * jnp.asarray(gammas + others, dtype)[:, None]

            gss = self.param(
                "ada_gss", nn.with_logical_partitioning(gss_init, (None, "embed")), (6, dim)
            )
            mods = gss[None] + cond  # [B, 6, D]
        else:
            init = chunk_scaled_init(self.init_std, gammas + others)
            mods = _dense(6 * dim, ("embed", "mlp"), self.init_std, "ada_lin", init=init)(
                nn.silu(cond)
            ).reshape(-1, 6, dim)
        return [m[:, 0].astype(self.dtype) for m in jnp.split(mods, 6, axis=1)]

    @nn.compact
    def __call__(
        self,
        x: jax.Array,
        cond: jax.Array,
        *,
        mask: jax.Array | None = None,
        cache: KVCache | None = None,
        kv_len: int | None = None,
        train: bool = False,
        drop_path_rate: jax.Array | None = None,
    ) -> tuple[jax.Array, KVCache | None]:
        dim = x.shape[-1]
        gamma1, gamma2, scale1, scale2, shift1, shift2 = self._modulation(cond, dim)
        drop_path = functools.partial(DropPath(self.drop_path_rate), rate=drop_path_rate)
        norm = lambda h: layer_norm_no_affine(h, self.norm_eps)
        attn_out, cache = VARSelfAttention(
            self.num_heads,
            attn_l2_norm=self.attn_l2_norm,
            attn_dropout_rate=self.attn_drop_rate,
            resid_dropout_rate=self.drop_rate,
            init_std=self.init_std,
            proj_std=self.proj_std,
            dtype=self.dtype,
            name="attn",
        )(modulate(norm(x), shift1, scale1), mask=mask, cache=cache, kv_len=kv_len, train=train)
        x = x + drop_path(attn_out * gamma1[:, None], train=train)
        ffn_out = GeluMLP(
            int(round(dim * self.mlp_ratio)),
            dropout_rate=self.drop_rate,
            init_std=self.init_std,
            proj_std=self.proj_std,
            dtype=self.dtype,
            name="ffn",
        )(modulate(norm(x), shift2, scale2), train=train)
        x = x + drop_path(ffn_out * gamma2[:, None], train=train)
        return nn.with_logical_constraint(x, ("batch", "length", "embed")), cache


class AdaLNBeforeHead(nn.Module):
    """``LN(x) * (1 + scale) + shift`` with (scale, shift) = ada_lin(silu(cond)).
    x: [B, L, D], cond: [B, Dc] -> [B, L, D]."""

    norm_eps: float = 1e-6
    init_std: float = 0.02
    init_adaln: float = 0.5

    @nn.compact
    def __call__(self, x: jax.Array, cond: jax.Array) -> jax.Array:
        dim = x.shape[-1]
        init = chunk_scaled_init(self.init_std, (self.init_adaln, self.init_adaln))
        mods = _dense(2 * dim, ("embed", "mlp"), self.init_std, "ada_lin", init=init)(nn.silu(cond))
        scale, shift = jnp.split(mods.astype(x.dtype), 2, axis=-1)  # [B, D] each
        return modulate(layer_norm_no_affine(x, self.norm_eps), shift, scale)
