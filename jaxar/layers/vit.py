"""The ViT block of MAE-style models (timm's ``vision_transformer.Block``, as MAR uses it).

``x = x + drop_path(proj(attn(LN(x))))``, ``x = x + drop_path(fc2(gelu(fc1(LN(x)))))``:
LayerNorm with affine parameters (eps 1e-6), a fused ``qkv`` projection with bias, exact
(erf) GELU, dropout after the attention and MLP projections and on the attention weights.
Submodule names follow timm's state dict (``norm1``, ``attn/qkv``, ``attn/proj``, ``norm2``,
``mlp/fc1``, ``mlp/fc2``) so converters rename mechanically. Weights are Xavier-uniform with
zero biases (MAR's ``_init_weights``).

Attention is bidirectional; ``mask`` (bool, True = may attend; [B, 1, S] key padding or
[B, T, S]) excludes padded or dropped tokens.
"""

from __future__ import annotations

import functools
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxar.layers.attention import attend
from jaxar.layers.scan import StackableBlock
from jaxar.layers.transformer import DropPath


def xavier_dense(features: int, axes: tuple, name: str, dtype: Any, use_bias: bool = True):
    """A Dense with Xavier-uniform kernel and zero bias (logical axes ``axes``)."""
    return nn.Dense(
        features,
        use_bias=use_bias,
        kernel_init=nn.with_logical_partitioning(nn.initializers.xavier_uniform(), axes),
        bias_init=nn.with_logical_partitioning(nn.initializers.zeros, axes[-1:]),
        dtype=dtype,
        name=name,
    )


def layer_norm(eps: float, name: str, dtype: Any = jnp.float32) -> nn.LayerNorm:
    """LayerNorm with scale and bias (annotated ``embed``), statistics in float32."""
    return nn.LayerNorm(
        epsilon=eps,
        dtype=dtype,
        scale_init=nn.with_logical_partitioning(nn.initializers.ones, ("embed",)),
        bias_init=nn.with_logical_partitioning(nn.initializers.zeros, ("embed",)),
        name=name,
    )


class ViTAttention(nn.Module):
    """Fused-qkv multi-head self-attention. ``(x [B, T, D], mask) -> [B, T, D]``."""

    num_heads: int
    attn_dropout_rate: float = 0.0
    proj_dropout_rate: float = 0.0
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array, *, mask: jax.Array | None, train: bool) -> jax.Array:
        b, t, dim = x.shape
        if dim % self.num_heads:
            raise ValueError(f"width {dim} is not divisible by num_heads {self.num_heads}")
        head_dim = dim // self.num_heads
        qkv = xavier_dense(3 * dim, ("embed", "heads"), "qkv", self.dtype)(x)
        q, k, v = jnp.split(qkv.reshape(b, t, 3, self.num_heads, head_dim), 3, axis=2)
        q, k, v = q[:, :, 0], k[:, :, 0], v[:, :, 0]  # [B, T, H, Dh]
        if mask is not None:
            mask = jnp.broadcast_to(jnp.asarray(mask, bool), (b, t, t))
        dropout = train and self.attn_dropout_rate > 0.0
        out = attend(
            q, k, v, mask=mask, causal=False, cached=False,
            dropout_rate=self.attn_dropout_rate,
            dropout_rng=self.make_rng("dropout") if dropout else None,
        )  # fmt: skip
        out = xavier_dense(dim, ("heads", "embed"), "proj", self.dtype)(out.reshape(b, t, dim))
        return nn.Dropout(self.proj_dropout_rate)(out, deterministic=not train)


class ViTBlock(StackableBlock):
    """timm ``Block`` (see module doc). Call: ``(x [B, T, D], mask=None, train=False) ->
    (y [B, T, D], None)`` (the second value is the cache slot ``block_stack`` expects)."""

    num_heads: int
    mlp_ratio: float = 4.0
    norm_eps: float = 1e-6
    attn_dropout_rate: float = 0.0
    proj_dropout_rate: float = 0.0
    drop_path_rate: float = 0.0
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(
        self,
        x: jax.Array,
        *,
        mask: jax.Array | None = None,
        cache: Any = None,
        train: bool = False,
        drop_path_rate: jax.Array | None = None,
    ) -> tuple[jax.Array, Any]:
        if cache is not None:
            raise ValueError("ViTBlock has no KV cache")
        dim = x.shape[-1]
        drop_path = functools.partial(DropPath(self.drop_path_rate), rate=drop_path_rate)
        h = ViTAttention(
            self.num_heads, self.attn_dropout_rate, self.proj_dropout_rate, self.dtype,
            name="attn",
        )(layer_norm(self.norm_eps, "norm1", self.dtype)(x), mask=mask, train=train)  # fmt: skip
        x = x + drop_path(h, train=train)
        hidden = int(dim * self.mlp_ratio)
        h = layer_norm(self.norm_eps, "norm2", self.dtype)(x)
        h = MLP(hidden, self.proj_dropout_rate, self.dtype, name="mlp")(h, train=train)
        x = x + drop_path(h, train=train)
        return nn.with_logical_constraint(x, ("batch", "length", "embed")), None


class MLP(nn.Module):
    """``fc2(dropout(gelu(fc1 x)))`` then dropout (timm ``Mlp``, exact GELU)."""

    hidden_dim: int
    dropout_rate: float = 0.0
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array, *, train: bool = False) -> jax.Array:
        h = xavier_dense(self.hidden_dim, ("embed", "mlp"), "fc1", self.dtype)(x)
        h = nn.Dropout(self.dropout_rate)(nn.gelu(h, approximate=False), deterministic=not train)
        h = nn.with_logical_constraint(h, ("batch", "length", "mlp"))
        out = xavier_dense(x.shape[-1], ("mlp", "embed"), "fc2", self.dtype)(h)
        return nn.Dropout(self.dropout_rate)(out, deterministic=not train)
