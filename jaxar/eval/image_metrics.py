"""PSNR and SSIM for batches of images [B, H, W, C], jitted, one value per image.

``data_range`` is the span of the pixel values: 1.0 for [0, 1], 2.0 for [-1, 1], 255 for uint8.
SSIM follows Wang et al. 2004: an 11x11 Gaussian window (sigma 1.5) applied with 'valid'
borders, K1 = 0.01, K2 = 0.03, averaged over positions and channels. As in scikit-image,
SSIM's luminance term is not shift invariant: SSIM of [-1, 1] images (data_range=2)
differs from SSIM of the same images mapped to [0, 1] (data_range=1);
report the latter, ``ssim((x + 1) / 2, (y + 1) / 2)``.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np


def _check(x: jax.Array, y: jax.Array, who: str) -> None:
    if x.shape != y.shape:
        raise ValueError(f"{who}: image shapes differ: {x.shape} vs {y.shape}")
    if x.ndim != 4:
        raise ValueError(f"{who}: expected images [B, H, W, C], got shape {x.shape}")


def psnr(x: jax.Array, y: jax.Array, data_range: float = 1.0) -> jax.Array:
    """10 log10(data_range^2 / MSE) per image. [B, H, W, C] x2 -> [B]; inf where equal."""
    _check(x, y, "psnr")
    return _psnr(jnp.asarray(x, jnp.float32), jnp.asarray(y, jnp.float32), data_range)


@jax.jit
def _psnr(x: jax.Array, y: jax.Array, data_range: float) -> jax.Array:
    mse = jnp.mean(jnp.square(x - y), axis=(1, 2, 3))
    return jnp.where(
        mse == 0, jnp.inf, 10.0 * jnp.log10(data_range**2 / jnp.where(mse == 0, 1, mse))
    )


def gaussian_window(size: int = 11, sigma: float = 1.5) -> np.ndarray:
    """Normalised 1D Gaussian taps. [size]"""
    x = np.arange(size, dtype=np.float64) - (size - 1) / 2
    w = np.exp(-0.5 * (x / sigma) ** 2)
    return (w / w.sum()).astype(np.float32)


def _blur(x: jax.Array, window: jax.Array) -> jax.Array:
    """Separable valid filtering of [B, H, W, C] -> [B, H-k+1, W-k+1, C]."""
    k = window.shape[0]
    h_out, w_out = x.shape[1] - k + 1, x.shape[2] - k + 1
    rows = sum(window[i] * x[:, i : i + h_out] for i in range(k))
    return sum(window[j] * rows[:, :, j : j + w_out] for j in range(k))


def ssim(
    x: jax.Array, y: jax.Array, data_range: float = 1.0, window_size: int = 11, sigma: float = 1.5
) -> jax.Array:
    """Mean structural similarity per image. [B, H, W, C] x2 -> [B]; H, W >= window_size."""
    _check(x, y, "ssim")
    if min(x.shape[1], x.shape[2]) < window_size:
        raise ValueError(
            f"ssim: images {x.shape[1]}x{x.shape[2]} smaller than the {window_size} window"
        )
    window = jnp.asarray(gaussian_window(window_size, sigma))
    return _ssim(jnp.asarray(x, jnp.float32), jnp.asarray(y, jnp.float32), data_range, window)


@jax.jit
def _ssim(x: jax.Array, y: jax.Array, data_range: float, window: jax.Array) -> jax.Array:
    c1, c2 = (0.01 * data_range) ** 2, (0.03 * data_range) ** 2
    mu_x, mu_y = _blur(x, window), _blur(y, window)
    var_x = _blur(x * x, window) - mu_x**2
    var_y = _blur(y * y, window) - mu_y**2
    cov = _blur(x * y, window) - mu_x * mu_y
    num = (2 * mu_x * mu_y + c1) * (2 * cov + c2)
    den = (mu_x**2 + mu_y**2 + c1) * (var_x + var_y + c2)
    return jnp.mean(num / den, axis=(1, 2, 3))
