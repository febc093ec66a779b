"""Pre-norm transformer block: ``h = x + attn(norm(x)); y = h + mlp(norm(h))`` (LLaMA style)."""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from jaxar.layers.attention import Attention, KVCache
from jaxar.layers.mlp import FeedForward
from jaxar.layers.norms import RMSNorm


class DropPath(nn.Module):
    """Stochastic depth: drops the whole residual branch per example with prob ``rate``."""

    rate: float = 0.0

    @nn.compact
    def __call__(self, x: jax.Array, *, train: bool = False) -> jax.Array:  # [B, ...]
        if not train or self.rate == 0.0:
            return x
        keep = 1.0 - self.rate
        shape = (x.shape[0],) + (1,) * (x.ndim - 1)
        mask = jax.random.bernoulli(self.make_rng("dropout"), keep, shape)
        return jnp.where(mask, x / keep, jnp.zeros_like(x))


class TransformerBlock(nn.Module):
    """RMSNorm -> Attention -> residual, RMSNorm -> SwiGLU -> residual, optional drop path.

    Submodule names follow LlamaGen (``attention``, ``feed_forward``, ``attention_norm``,
    ``ffn_norm``). Call: ``(x [B, T, D], rope, mask, cache, train) -> (y [B, T, D], cache)``.
    """

    num_heads: int
    ffn_hidden_dim: int
    num_kv_heads: int | None = None
    causal: bool = True
    norm_eps: float = 1e-5
    attn_dropout_rate: float = 0.0
    resid_dropout_rate: float = 0.0
    ffn_dropout_rate: float = 0.0
    drop_path_rate: float = 0.0
    init_std: float = 0.02
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32

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
        drop_path = DropPath(self.drop_path_rate)
        attn_out, cache = Attention(
            num_heads=self.num_heads,
            num_kv_heads=self.num_kv_heads,
            causal=self.causal,
            attn_dropout_rate=self.attn_dropout_rate,
            resid_dropout_rate=self.resid_dropout_rate,
            init_std=self.init_std,
            dtype=self.dtype,
            param_dtype=self.param_dtype,
            name="attention",
        )(
            RMSNorm(self.norm_eps, self.param_dtype, name="attention_norm")(x),
            rope=rope,
            mask=mask,
            cache=cache,
            train=train,
        )
        h = x + drop_path(attn_out, train=train)
        ffn_out = FeedForward(
            self.ffn_hidden_dim,
            dropout_rate=self.ffn_dropout_rate,
            init_std=self.init_std,
            dtype=self.dtype,
            param_dtype=self.param_dtype,
            name="feed_forward",
        )(RMSNorm(self.norm_eps, self.param_dtype, name="ffn_norm")(h), train=train)
        out = h + drop_path(ffn_out, train=train)
        return nn.with_logical_constraint(out, ("batch", "length", "embed")), cache


def block_stack(
    num_layers: int,
    drop_path: float = 0.0,
    *,
    block_cls: type[nn.Module] = TransformerBlock,
    **block_kwargs: Any,
) -> list[nn.Module]:
    """``num_layers`` blocks ``block_cls(drop_path_rate=r_i, **block_kwargs)`` with ``r_i``
    rising linearly from 0 to ``drop_path``. Call it in ``setup`` and assign the list to an
    attribute (``self.layers`` names the blocks ``layers_0``, ``layers_1``, ...)."""
    rates = np.linspace(0.0, drop_path, num_layers)
    return [block_cls(drop_path_rate=float(rate), **block_kwargs) for rate in rates]


def run_blocks(
    blocks: list[nn.Module], x: jax.Array, cache: list[KVCache] | None = None, **kwargs: Any
) -> tuple[jax.Array, list[KVCache] | None]:
    """Runs ``blocks`` in order on x [B, T, D], each with its own cache (``cache[i]``) and the
    same keyword arguments. Returns (y [B, T, D], the new per-block caches | None)."""
    new_cache = None if cache is None else []
    for i, block in enumerate(blocks):
        x, block_cache = block(x, cache=None if cache is None else cache[i], **kwargs)
        if cache is not None:
            new_cache.append(block_cache)
    return x, new_cache
