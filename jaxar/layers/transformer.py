"""Pre-norm transformer block: ``h = x + attn(norm(x)); y = h + mlp(norm(h))`` (LLaMA style)."""

from __future__ import annotations

import functools
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from jaxar.layers.attention import Attention, KVCache
from jaxar.layers.mlp import FeedForward
from jaxar.layers.norms import RMSNorm
from jaxar.layers.scan import ScannedBlocks, StackableBlock, remat_block, split_static


class DropPath(nn.Module):
    """Stochastic depth: drops the whole residual branch per example with prob ``rate``
    (``rate`` of the call, e.g. a scanned per-layer array, overrides the attribute)."""

    rate: float = 0.0

    @nn.compact
    def __call__(
        self, x: jax.Array, *, train: bool = False, rate: jax.Array | None = None
    ) -> jax.Array:  # [B, ...]
        rate = self.rate if rate is None else rate
        if not train or (isinstance(rate, (int, float)) and rate == 0.0):
            return x
        keep = 1.0 - rate
        shape = (x.shape[0],) + (1,) * (x.ndim - 1)
        mask = jax.random.bernoulli(self.make_rng("dropout"), keep, shape)
        return jnp.where(mask, (x / keep).astype(x.dtype), jnp.zeros_like(x))


class TransformerBlock(StackableBlock):
    """RMSNorm -> Attention -> residual, RMSNorm -> SwiGLU -> residual, optional drop path.

        Submodule names follow LlamaGen (``attention``, ``feed_forward``, ``attention_norm``,
        ``ffn_norm``). Call: ``(x [B, T, D], rope, mask, cache, train, kv_len) -> (y [B, T, D],
    cache)`` (``kv_len``: see ``Attention``);
        ``drop_path_rate`` (a scanned stack's per-layer rate) overrides the attribute.
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
        drop_path_rate: jax.Array | None = None,
        kv_len: int | None = None,
    ) -> tuple[jax.Array, KVCache | None]:
        drop_path = functools.partial(DropPath(self.drop_path_rate), rate=drop_path_rate)
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
            kv_len=kv_len,
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
    scan: bool = False,
    remat_policy: str = "none",
    **block_kwargs: Any,
) -> list[nn.Module] | ScannedBlocks:
    """``num_layers`` blocks ``block_cls(drop_path_rate=r_i, **block_kwargs)`` with ``r_i``
    rising linearly from 0 to ``drop_path``. Call it in ``setup`` and assign the result to an
    attribute: a list (``self.layers`` names the blocks ``layers_0``, ``layers_1``, ...) or,
    with ``scan``, one ``ScannedBlocks`` (params ``layers/...`` with a leading [L] axis).
    ``remat_policy`` (``jaxar.layers.scan.REMAT_POLICIES``) rematerialises every block."""
    if scan:
        return ScannedBlocks(
            block_cls, num_layers, float(drop_path), remat_policy, tuple(block_kwargs.items())
        )
    cls = remat_block(block_cls, remat_policy)
    rates = np.linspace(0.0, drop_path, num_layers)
    return [cls(drop_path_rate=float(rate), **block_kwargs) for rate in rates]


def run_blocks(
    blocks: list[nn.Module] | ScannedBlocks,
    x: jax.Array,
    cache: list[KVCache] | KVCache | None = None,
    **kwargs: Any,
) -> tuple[jax.Array, list[KVCache] | KVCache | None]:
    """Runs ``blocks`` (a ``block_stack``) in order on x [B, T, D] with the same keyword
    arguments: a list block by block, each with its own cache (``cache[i]``), a scanned stack
    in one scan over its stacked cache (``jaxar.layers.caches``). Returns (y [B, T, D], the
    new caches | None) in the layout of ``cache``."""
    if isinstance(blocks, ScannedBlocks):
        return blocks(x, cache, **kwargs)
    shared, static = split_static(kwargs)
    new_cache = None if cache is None else []
    for i, block in enumerate(blocks):
        x, block_cache = block.layer_step(
            x, None if cache is None else cache[i], None, shared, static
        )
        if cache is not None:
            new_cache.append(block_cache)
    return x, new_cache
