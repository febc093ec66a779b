"""Convolutional building blocks of the VQGAN-style autoencoders (NHWC layout).

The blocks follow taming-transformers / LlamaGen: pre-activation residual blocks with
GroupNorm + swish, single-head spatial self-attention, stride-2 convolution with asymmetric
(0, 1) padding for downsampling and nearest-neighbour x2 + 3x3 convolution for upsampling.
Sub-module names mirror LlamaGen's (``norm1``, ``conv1``, ``nin_shortcut``, ``q``, ``proj_out``)
so that checkpoints convert by renaming.
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

_CONV_INIT = nn.initializers.variance_scaling(1.0, "fan_avg", "uniform")


def conv(
    features: int,
    kernel_size: int = 3,
    stride: int = 1,
    padding: str | int = "SAME",
    name: str | None = None,
    use_bias: bool = True,
    shard_out: bool = True,
) -> nn.Conv:
    """A 2D conv with logical-axis annotated params (kernel [kh, kw, conv_in, conv_out]).

    ``shard_out=False`` leaves the output-channel axis unsharded: use it for convs with very
    few output channels (RGB/grey images, discriminator logits) that cannot be split.
    """
    out_axis = "conv_out" if shard_out else None
    if isinstance(padding, int):
        padding = ((padding, padding), (padding, padding))
    return nn.Conv(
        features,
        (kernel_size, kernel_size),
        strides=(stride, stride),
        padding=padding,
        use_bias=use_bias,
        kernel_init=nn.with_logical_partitioning(_CONV_INIT, (None, None, "conv_in", out_axis)),
        bias_init=nn.with_logical_partitioning(nn.initializers.zeros, (out_axis,)),
        name=name,
    )


def group_norm(num_groups: int, channels: int, name: str | None = None) -> nn.GroupNorm:
    """GroupNorm(eps=1e-6) with annotated scale/bias; ``num_groups`` must divide ``channels``."""
    if channels % num_groups:
        raise ValueError(f"GroupNorm: {num_groups} groups do not divide {channels} channels")
    return nn.GroupNorm(
        num_groups=num_groups,
        epsilon=1e-6,
        scale_init=nn.with_logical_partitioning(nn.initializers.ones, ("conv_out",)),
        bias_init=nn.with_logical_partitioning(nn.initializers.zeros, ("conv_out",)),
        name=name,
    )


class ResnetBlock(nn.Module):
    """norm -> swish -> conv3x3 -> norm -> swish -> dropout -> conv3x3, plus a 1x1 shortcut
    when the channel count changes. ``x``: [B, H, W, C_in] -> [B, H, W, out_channels]."""

    out_channels: int
    norm_groups: int = 32
    dropout: float = 0.0

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        in_channels = x.shape[-1]
        h = nn.swish(group_norm(self.norm_groups, in_channels, name="norm1")(x))
        h = conv(self.out_channels, name="conv1")(h)
        h = nn.swish(group_norm(self.norm_groups, self.out_channels, name="norm2")(h))
        if self.dropout > 0:
            h = nn.Dropout(self.dropout, deterministic=not train)(h)
        h = conv(self.out_channels, name="conv2")(h)
        if in_channels != self.out_channels:
            x = conv(self.out_channels, kernel_size=1, padding=0, name="nin_shortcut")(x)
        return x + h


class AttnBlock(nn.Module):
    """Single-head self-attention over all H*W positions with 1x1-conv q/k/v/proj_out and a
    residual connection. ``x``: [B, H, W, C] -> [B, H, W, C]."""

    norm_groups: int = 32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        b, height, width, c = x.shape
        h = group_norm(self.norm_groups, c, name="norm")(x)
        q = conv(c, 1, padding=0, name="q")(h).reshape(b, height * width, c)  # [B, L, C]
        k = conv(c, 1, padding=0, name="k")(h).reshape(b, height * width, c)
        v = conv(c, 1, padding=0, name="v")(h).reshape(b, height * width, c)
        weights = jnp.einsum("bqc,bkc->bqk", q, k) * (c**-0.5)  # [B, L, L]
        weights = jax.nn.softmax(weights.astype(jnp.float32), axis=-1).astype(v.dtype)
        h = jnp.einsum("bqk,bkc->bqc", weights, v).reshape(b, height, width, c)
        return x + conv(c, 1, padding=0, name="proj_out")(h)


class Downsample(nn.Module):
    """Halves H and W: zero-pad one row/column at the bottom/right, then a stride-2 3x3 conv
    (or 2x2 average pooling without conv). [B, H, W, C] -> [B, H/2, W/2, C]."""

    with_conv: bool = True

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        if not self.with_conv:
            return nn.avg_pool(x, (2, 2), strides=(2, 2))
        x = jnp.pad(x, ((0, 0), (0, 1), (0, 1), (0, 0)))
        return conv(x.shape[-1], 3, stride=2, padding="VALID", name="conv")(x)


class Upsample(nn.Module):
    """Doubles H and W by nearest-neighbour repetition, then a 3x3 conv.
    [B, H, W, C] -> [B, 2H, 2W, C]."""

    with_conv: bool = True

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        x = jnp.repeat(jnp.repeat(x, 2, axis=1), 2, axis=2)
        if self.with_conv:
            x = conv(x.shape[-1], 3, name="conv")(x)
        return x
