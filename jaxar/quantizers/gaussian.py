"""The KL bottleneck of continuous tokenizers (LDM's ``AutoencoderKL``, MAR's KL-16 VAE).

The encoder (through ``quant_conv``) predicts the moments of a diagonal Gaussian posterior,
``[mean, logvar]`` concatenated on the channel axis; ``logvar`` is clamped to [-30, 20] as LDM
does. Training decodes a sample ``mean + exp(logvar / 2) * eps`` (or the mean, with
``sample_latents=False``); evaluation and ``encode_to_codes`` use the mean. The loss is
``kl_weight`` times the KL divergence to N(0, I), averaged over every latent element.

LDM sums both the reconstruction and the KL over each image and averages over the batch;
jaxar's reconstruction loss is a per-pixel mean, so LDM's ``kl_weight`` corresponds to
``kl_weight * latent_elements / pixel_elements`` here (KL-16 at 256 px: 16 / 768 of it).
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxar.quantizers.base import QuantizerOutput, check_latents

LOGVAR_RANGE = (-30.0, 20.0)


def split_moments(moments: jax.Array) -> tuple[jax.Array, jax.Array]:
    """``[B, h, w, 2D]`` moments -> (mean, clamped logvar), each ``[B, h, w, D]`` float32."""
    mean, logvar = jnp.split(moments.astype(jnp.float32), 2, axis=-1)
    return mean, jnp.clip(logvar, *LOGVAR_RANGE)


def gaussian_kl(mean: jax.Array, logvar: jax.Array) -> jax.Array:
    """Elementwise KL(N(mean, exp(logvar)) || N(0, 1))."""
    return 0.5 * (jnp.square(mean) + jnp.exp(logvar) - 1.0 - logvar)


class DiagonalGaussianBottleneck(nn.Module):
    """Moments [B, h, w, 2 * code_dim] -> latents [B, h, w, code_dim]. No parameters.

    ``codes`` are the posterior means (float); ``decode_codes`` is the identity, so a
    generator over continuous tokens hands its latents straight to the decoder."""

    code_dim: int
    kl_weight: float = 1e-6
    sample_latents: bool = True

    def __call__(self, moments: jax.Array, train: bool = False) -> QuantizerOutput:
        check_latents(moments, 2 * self.code_dim, "DiagonalGaussianBottleneck")
        mean, logvar = split_moments(moments)
        latents = mean
        if train and self.sample_latents:
            noise = jax.random.normal(self.make_rng("quantizer"), mean.shape, jnp.float32)
            latents = mean + jnp.exp(0.5 * logvar) * noise
        kl = jnp.mean(gaussian_kl(mean, logvar))
        stats = {"mean_abs": jnp.mean(jnp.abs(mean)), "std": jnp.mean(jnp.exp(0.5 * logvar))}
        return QuantizerOutput(
            quantized=latents.astype(moments.dtype), codes=mean, loss=self.kl_weight * kl,
            losses={"kl": kl}, stats=stats,
        )  # fmt: skip

    def encode_to_codes(self, moments: jax.Array) -> jax.Array:
        """The posterior means, float32 [B, h, w, code_dim]."""
        check_latents(moments, 2 * self.code_dim, "DiagonalGaussianBottleneck")
        return split_moments(moments)[0]

    def decode_codes(self, latents: jax.Array) -> jax.Array:
        check_latents(latents, self.code_dim, "DiagonalGaussianBottleneck.decode_codes")
        return latents
