"""SwiGLU feed-forward block with LlamaGen's hidden-size rule."""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp


def find_multiple(n: int, k: int) -> int:
    """Smallest multiple of ``k`` that is >= ``n``."""
    return n if n % k == 0 else n + k - (n % k)


def ffn_hidden_dim(
    dim: int, multiple_of: int = 256, ffn_dim_multiplier: float | None = None
) -> int:
    """LlamaGen / LLaMA SwiGLU width: ``int(2 * 4 * dim / 3)``, times the optional multiplier,
    rounded up to a multiple of ``multiple_of`` (GPT-B: 768 -> 2048)."""
    if dim <= 0 or multiple_of <= 0:
        raise ValueError(f"dim and multiple_of must be positive, got {dim}, {multiple_of}")
    hidden = int(2 * (4 * dim) / 3)
    if ffn_dim_multiplier is not None:
        hidden = int(ffn_dim_multiplier * hidden)
    return find_multiple(hidden, multiple_of)


def dense_init(std: float = 0.02):
    return nn.initializers.normal(stddev=std)


class FeedForward(nn.Module):
    """``w2(silu(w1 x) * w3 x)`` followed by dropout. x: [B, L, D] -> [B, L, D]."""

    hidden_dim: int
    dropout_rate: float = 0.0
    init_std: float = 0.02
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array, *, train: bool = False) -> jax.Array:
        dim = x.shape[-1]

        def dense(features, axes, name):
            return nn.Dense(
                features,
                use_bias=False,
                kernel_init=nn.with_logical_partitioning(dense_init(self.init_std), axes),
                dtype=self.dtype,
                param_dtype=self.param_dtype,
                name=name,
            )

        gate = dense(self.hidden_dim, ("embed", "mlp"), "w1")(x)
        up = dense(self.hidden_dim, ("embed", "mlp"), "w3")(x)
        hidden = nn.with_logical_constraint(nn.silu(gate) * up, ("batch", "length", "mlp"))
        out = dense(dim, ("mlp", "embed"), "w2")(hidden)
        return nn.Dropout(self.dropout_rate)(out, deterministic=not train)
