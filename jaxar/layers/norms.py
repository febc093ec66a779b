"""Normalisation layers: RMSNorm (LLaMA / LlamaGen) and an adaptive LayerNorm helper (DiT / VAR)."""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp


class RMSNorm(nn.Module):
    """Root-mean-square norm over the last axis, computed in float32, then scaled.

    ``y = x / sqrt(mean(x**2) + eps) * scale``; the result is cast back to ``x.dtype`` before
    the learned ``scale`` (shape ``[D]``, logical axis ``embed``) is applied, as in LlamaGen.
    """

    eps: float = 1e-5
    param_dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:  # [..., D] -> [..., D]
        scale = self.param(
            "scale",
            nn.with_logical_partitioning(nn.initializers.ones, ("embed",)),
            (x.shape[-1],),
            self.param_dtype,
        )
        x32 = x.astype(jnp.float32)
        normed = x32 * jax.lax.rsqrt(jnp.mean(x32 * x32, axis=-1, keepdims=True) + self.eps)
        return normed.astype(x.dtype) * scale.astype(x.dtype)


def modulate(x: jax.Array, shift: jax.Array, scale: jax.Array) -> jax.Array:
    """AdaLN modulation ``x * (1 + scale) + shift``.

    x: [B, L, D]; shift, scale: [B, D] (broadcast over L) or [B, L, D].
    """
    if shift.ndim == x.ndim - 1:
        shift, scale = shift[:, None], scale[:, None]
    return x * (1.0 + scale) + shift


def layer_norm_no_affine(x: jax.Array, eps: float = 1e-6) -> jax.Array:
    """LayerNorm over the last axis without learned scale/bias (the AdaLN base norm)."""
    x32 = x.astype(jnp.float32)
    mean = jnp.mean(x32, axis=-1, keepdims=True)
    var = jnp.mean(jnp.square(x32 - mean), axis=-1, keepdims=True)
    return ((x32 - mean) * jax.lax.rsqrt(var + eps)).astype(x.dtype)
