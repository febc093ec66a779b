"""LPIPS-style perceptual distance (Zhang et al. 2018) with a VGG16 trunk, NHWC.

Images in [-1, 1] are shifted/scaled as LPIPS's ``ScalingLayer``, passed through VGG16's conv
stack, and features are taken after relu1_2, relu2_2, relu3_3, relu4_3 and relu5_3. Each tap is
normalised to unit length over channels, the squared difference is weighted per channel by a
1x1 "linear head" (no bias), averaged over space, and the five values are summed. Grey images
are repeated to three channels.

Weights come from a local file (no downloads), ``load_lpips_params(path)`` (.npz or
.safetensors) with flat keys ``conv{b}_{i}.kernel`` [3, 3, Cin, Cout], ``conv{b}_{i}.bias`` and
``lin{k}.kernel`` [1, 1, C, 1]. To build that file from the public weights:
  1. torchvision's VGG16 ImageNet weights (``vgg16-397923b5.pth``): ``features.{0,2}`` are
     conv1_1, conv1_2; ``features.{5,7}`` conv2_*; ``features.{10,12,14}`` conv3_*;
     ``features.{17,19,21}`` conv4_*; ``features.{24,26,28}`` conv5_*; weights are OIHW.
  2. the LPIPS repository's linear heads ``weights/v0.1/vgg.pth``: ``lin{k}.model.1.weight``
     with shape [1, C, 1, 1].
``python -m jaxar.convert.lpips --vgg vgg16-397923b5.pth --lin vgg.pth --out lpips_vgg.npz``
transposes OIHW -> HWIO and writes the file (torch is needed only for that step).
"""

from __future__ import annotations

from collections.abc import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from jaxar.layers.conv import conv

VGG16_CHANNELS = (64, 128, 256, 512, 512)
VGG16_BLOCK_DEPTHS = (2, 2, 3, 3, 3)
_SHIFT = np.asarray([-0.030, -0.088, -0.188], np.float32)
_SCALE = np.asarray([0.458, 0.448, 0.450], np.float32)


def _unit_normalize(x: jax.Array, eps: float = 1e-10) -> jax.Array:
    return x / (jnp.sqrt(jnp.sum(jnp.square(x), axis=-1, keepdims=True)) + eps)


def _nonneg_init(key, shape, dtype=jnp.float32):
    return jnp.abs(jax.random.normal(key, shape, dtype)) / shape[2]


class LPIPS(nn.Module):
    """``(x, y)`` images [B, H, W, 1 or 3] in [-1, 1] -> distances [B]."""

    channels: Sequence[int] = VGG16_CHANNELS

    def _features(self, x: jax.Array) -> list[jax.Array]:
        taps = []
        for b, (width, depth) in enumerate(zip(self.channels, VGG16_BLOCK_DEPTHS), start=1):
            if b > 1:
                x = nn.max_pool(x, (2, 2), strides=(2, 2))
            for i in range(1, depth + 1):
                x = nn.relu(conv(width, 3, name=f"conv{b}_{i}")(x))
            taps.append(x)
        return taps

    @nn.compact
    def __call__(self, x: jax.Array, y: jax.Array) -> jax.Array:
        if x.shape != y.shape or x.ndim != 4 or x.shape[-1] not in (1, 3):
            raise ValueError(f"LPIPS: expected two [B, H, W, 1|3] images, got {x.shape}, {y.shape}")
        if x.shape[-1] == 1:
            x, y = jnp.repeat(x, 3, axis=-1), jnp.repeat(y, 3, axis=-1)
        both = (jnp.concatenate([x, y], axis=0).astype(jnp.float32) - _SHIFT) / _SCALE
        total = jnp.zeros((x.shape[0],), jnp.float32)
        for k, feats in enumerate(self._features(both)):
            fx, fy = jnp.split(_unit_normalize(feats), 2, axis=0)
            init = nn.with_logical_partitioning(_nonneg_init, (None, None, "conv_in", None))
            head = nn.Conv(1, (1, 1), use_bias=False, kernel_init=init, name=f"lin{k}")
            total = total + jnp.mean(head(jnp.square(fx - fy)), axis=(1, 2, 3))
        return total


def load_lpips_params(path: str) -> dict:
    """LPIPS params from a local .npz or .safetensors file (flat ``module.param`` keys)."""
    if path.endswith(".safetensors"):
        from safetensors.numpy import load_file

        flat = load_file(path)
    elif path.endswith(".npz"):
        with np.load(path) as data:
            flat = {k: data[k] for k in data.files}
    else:
        raise ValueError(f"load_lpips_params: expected a .npz or .safetensors file, got {path}")
    params: dict = {}
    for key, value in flat.items():
        module, _, name = key.partition(".")
        if name not in ("kernel", "bias"):
            raise ValueError(f"load_lpips_params: unexpected key {key!r} in {path}")
        params.setdefault(module, {})[name] = jnp.asarray(value, jnp.float32)
    expected = {
        f"conv{b}_{i}" for b, d in enumerate(VGG16_BLOCK_DEPTHS, 1) for i in range(1, d + 1)
    }
    expected |= {f"lin{k}" for k in range(5)}
    if set(params) != expected:
        missing, extra = sorted(expected - set(params)), sorted(set(params) - expected)
        raise ValueError(f"load_lpips_params: missing {missing}, unexpected {extra}")
    return params
