"""Finite scalar quantization (FSQ, Mentzer et al. 2023).

Each of the d latent channels is squashed with tanh into a range of L_i values and rounded
(straight-through); the implicit codebook is the product grid of size prod(L_i). Quantized
values are normalised to [-1, 1]. No codebook, no auxiliary losses.
"""

from __future__ import annotations

from collections.abc import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from jaxar.quantizers.base import QuantizerOutput, check_latents, usage_and_perplexity


def round_ste(x: jax.Array) -> jax.Array:
    """Round with a straight-through (identity) gradient."""
    return x + jax.lax.stop_gradient(jnp.round(x) - x)


class FiniteScalarQuantizer(nn.Module):
    """``z`` [B, h, w, len(levels)] -> codes int32 [B, h, w] in [0, prod(levels))."""

    levels: Sequence[int] = (8, 8, 8, 5, 5, 5)
    eps: float = 1e-3

    def setup(self):
        if len(self.levels) < 1 or min(self.levels) < 2:
            raise ValueError(f"FSQ: levels must be integers >= 2, got {self.levels}")

    @property
    def codebook_size(self) -> int:
        return int(np.prod(self.levels))

    @property
    def code_dim(self) -> int:
        return len(self.levels)

    def _constants(self):
        levels = np.asarray(self.levels, np.float32)
        basis = np.cumprod([1] + list(self.levels[:-1])).astype(np.int64)
        return levels, jnp.asarray(basis, jnp.int32), np.floor(levels / 2)

    def bound(self, z: jax.Array) -> jax.Array:
        """Squash each channel into [-(L-1)/2, (L-1)/2] (shifted by 1/2 for even L)."""
        levels, _, _ = self._constants()
        half_l = (levels - 1) * (1 + self.eps) / 2
        offset = np.where(levels % 2 == 0, 0.5, 0.0)
        shift = np.arctanh(offset / half_l)
        return jnp.tanh(z + shift) * half_l - offset

    def quantize(self, z: jax.Array) -> jax.Array:
        """[..., d] -> grid values normalised to [-1, 1], straight-through."""
        _, _, half_width = self._constants()
        return round_ste(self.bound(z)) / half_width

    def codes_from_quantized(self, q: jax.Array) -> jax.Array:
        """Normalised grid values [..., d] -> int32 indices [...]."""
        _, basis, half_width = self._constants()
        digits = jnp.round(q * half_width + half_width).astype(jnp.int32)
        return jnp.sum(digits * basis, axis=-1).astype(jnp.int32)

    def decode_codes(self, codes: jax.Array) -> jax.Array:
        """int [...] -> normalised grid values [..., d]."""
        levels, basis, half_width = self._constants()
        digits = (codes[..., None] // basis) % jnp.asarray(levels, jnp.int32)
        return (digits.astype(jnp.float32) - half_width) / half_width

    def encode_to_codes(self, z: jax.Array) -> jax.Array:
        """[B, h, w, d] -> int32 [B, h, w]."""
        check_latents(z, self.code_dim, "FiniteScalarQuantizer")
        return self.codes_from_quantized(self.quantize(z.astype(jnp.float32)))

    def __call__(self, z: jax.Array, train: bool = False) -> QuantizerOutput:
        check_latents(z, self.code_dim, "FiniteScalarQuantizer")
        quantized = self.quantize(z.astype(jnp.float32))
        codes = self.codes_from_quantized(quantized)
        zero = jnp.zeros((), jnp.float32)
        return QuantizerOutput(
            quantized=quantized.astype(z.dtype),
            codes=codes,
            loss=zero,
            losses={},
            stats=usage_and_perplexity(codes, self.codebook_size),
        )
