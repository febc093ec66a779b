"""PatchGAN discriminator (pix2pix / taming ``NLayerDiscriminator``), NHWC.

conv4x4/s2 + LeakyReLU(0.2), then ``num_layers - 1`` blocks conv4x4/s2 + norm + LeakyReLU with
channels ``ch * min(2^n, 8)``, one conv4x4/s1 block, and a conv4x4/s1 to one logit per patch.
The original uses BatchNorm in training mode; since the discriminator is only ever used for
training, ``BatchStatNorm`` normalises with the current batch's statistics and keeps no running
averages, so the module is stateless.
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxar.layers.conv import conv


class BatchStatNorm(nn.Module):
    """Normalise each channel with the batch's mean/variance, then scale and shift."""

    eps: float = 1e-5

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        c = x.shape[-1]
        scale = self.param(
            "scale", nn.with_logical_partitioning(nn.initializers.normal(0.02), ("conv_out",)), (c,)
        )
        bias = self.param(
            "bias", nn.with_logical_partitioning(nn.initializers.zeros, ("conv_out",)), (c,)
        )
        mean = jnp.mean(x, axis=(0, 1, 2))
        var = jnp.var(x, axis=(0, 1, 2))
        return (x - mean) * jax.lax.rsqrt(var + self.eps) * (1.0 + scale) + bias


class PatchDiscriminator(nn.Module):
    """Images [B, H, W, C] -> patch logits [B, h, w, 1]."""

    ch: int = 64
    num_layers: int = 3

    @nn.compact
    def __call__(self, images: jax.Array) -> jax.Array:
        if images.ndim != 4:
            raise ValueError(f"PatchDiscriminator: expected [B, H, W, C], got {images.shape}")
        size = min(images.shape[1:3])
        for _ in range(self.num_layers):
            size = size // 2
        if size - 2 < 1:  # the two stride-1 4x4 convs each remove one row
            raise ValueError(
                f"PatchDiscriminator: images of size {images.shape[1]}x{images.shape[2]} are too "
                f"small for {self.num_layers} layers"
            )
        h = nn.leaky_relu(conv(self.ch, 4, stride=2, padding=1, name="conv_0")(images), 0.2)
        mult = 1
        for n in range(1, self.num_layers + 1):
            mult = min(2**n, 8)
            stride = 2 if n < self.num_layers else 1
            h = conv(self.ch * mult, 4, stride=stride, padding=1, use_bias=False, name=f"conv_{n}")(
                h
            )
            h = nn.leaky_relu(BatchStatNorm(name=f"norm_{n}")(h), 0.2)
        return conv(1, 4, stride=1, padding=1, name="logits", shard_out=False)(h)
