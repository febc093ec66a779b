"""Residual quantization (RQ-VAE, Lee et al. 2022) with one codebook shared over depths.

Depth d quantizes what depths < d left over: r_0 = z, c_d = argmin ||r_d - e||, r_{d+1} =
r_d - e[c_d]; the quantized latent is the sum over depths. Codes are [B, h, w, depth].
The commitment loss is RQ-VAE's: the mean over depths of ||z - sg(partial sum up to d)||^2;
the codebook loss pulls each chosen code to the residual it quantized.
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxar.quantizers.base import (
    QuantizerOutput,
    check_latents,
    codebook_param,
    squared_distances,
    straight_through,
    usage_and_perplexity,
)


class ResidualQuantizer(nn.Module):
    """``z`` [B, h, w, D] -> codes [B, h, w, depth], quantized = sum of depth embeddings."""

    codebook_size: int = 16384
    code_dim: int = 256
    depth: int = 4
    beta: float = 0.25

    def setup(self):
        if self.depth < 1 or self.codebook_size < 2:
            raise ValueError(f"RQ: bad depth {self.depth} / codebook size {self.codebook_size}")
        init = nn.initializers.normal(stddev=1.0 / self.code_dim**0.5)
        self.codebook = codebook_param(self, "codebook", self.codebook_size, self.code_dim, init)

    def _lookup(self, residual: jax.Array) -> jax.Array:
        """[N, D] -> int32 [N]"""
        return jnp.argmin(squared_distances(residual, self.codebook), axis=-1).astype(jnp.int32)

    def _quantize(self, z: jax.Array) -> tuple[jax.Array, list[jax.Array], list[jax.Array]]:
        """Returns codes [N, depth], per-depth embeddings and per-depth residual inputs."""
        residual = jax.lax.stop_gradient(z)
        codes, embeds, residuals = [], [], []
        for _ in range(self.depth):
            code = self._lookup(residual)
            embed = jnp.take(self.codebook, code, axis=0)
            codes.append(code)
            embeds.append(embed)
            residuals.append(residual)
            residual = residual - jax.lax.stop_gradient(embed)
        return jnp.stack(codes, axis=-1), embeds, residuals

    def encode_to_codes(self, z: jax.Array) -> jax.Array:
        """[B, h, w, D] -> int32 [B, h, w, depth]."""
        check_latents(z, self.code_dim, "ResidualQuantizer")
        codes, _, _ = self._quantize(z.reshape(-1, self.code_dim).astype(jnp.float32))
        return codes.reshape(*z.shape[:-1], self.depth)

    def partial_sums(self, codes: jax.Array) -> jax.Array:
        """Cumulative sums of the depth embeddings (the RQ-Transformer's inputs).
        int [B, h, w, depth] -> [B, h, w, depth, D]; the last entry equals decode_codes."""
        if codes.ndim != 4 or codes.shape[-1] != self.depth:
            raise ValueError(f"RQ: expected codes [B, h, w, {self.depth}], got {codes.shape}")
        return jnp.cumsum(jnp.take(self.codebook, codes, axis=0), axis=-2)

    def decode_codes(self, codes: jax.Array) -> jax.Array:
        """int [B, h, w, depth] -> [B, h, w, D]."""
        return self.partial_sums(codes)[..., -1, :]

    def __call__(self, z: jax.Array, train: bool = False) -> QuantizerOutput:
        check_latents(z, self.code_dim, "ResidualQuantizer")
        dtype = z.dtype
        z = z.astype(jnp.float32)
        z_flat = z.reshape(-1, self.code_dim)
        codes, embeds, residuals = self._quantize(z_flat)
        partial = jnp.cumsum(jnp.stack(embeds, axis=0), axis=0)  # [depth, N, D]
        commitment = jnp.mean(jnp.square(z_flat[None] - jax.lax.stop_gradient(partial)))
        codebook = jnp.mean(jnp.square(jnp.stack(embeds, 0) - jnp.stack(residuals, 0)))
        quantized = partial[-1].reshape(z.shape)
        return QuantizerOutput(
            quantized=straight_through(z, quantized).astype(dtype),
            codes=codes.reshape(*z.shape[:-1], self.depth),
            loss=codebook + self.beta * commitment,
            losses={"codebook": codebook, "commitment": commitment},
            stats=usage_and_perplexity(codes, self.codebook_size),
        )
