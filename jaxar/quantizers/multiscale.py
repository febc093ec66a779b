"""VAR's multi-scale residual quantizer (Tian et al. 2024, ``VectorQuantizer2``).

For scales s_1 < ... < s_K (the last equals the latent size h = w): area-downsample the
residual to s_k x s_k, quantize it with a shared codebook, bicubic-upsample the embeddings
back to h x w, refine them with a 3x3 conv ``Phi`` (h <- (1 - r) h + r conv(h), r = 0.5, one
of ``num_phi`` convs picked by the scale's relative position, VAR's PhiPartiallyShared),
add to f_hat and subtract from the residual. Resizing reproduces torch's
``interpolate(mode='area')`` and ``interpolate(mode='bicubic', align_corners=False)``.
"""

from __future__ import annotations

from collections.abc import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from jaxar.layers.conv import conv
from jaxar.quantizers.base import (
    QuantizerOutput,
    check_latents,
    codebook_param,
    l2_normalize,
    squared_distances,
    straight_through,
    uniform_codebook_init,
    usage_and_perplexity,
)


def area_matrix(size_in: int, size_out: int) -> np.ndarray:
    """Adaptive average pooling as a [size_out, size_in] matrix (torch 'area' mode)."""
    m = np.zeros((size_out, size_in), np.float32)
    for i in range(size_out):
        start = (i * size_in) // size_out
        end = -(-((i + 1) * size_in) // size_out)
        m[i, start:end] = 1.0 / (end - start)
    return m


def _cubic_weights(t: float, a: float = -0.75) -> list[float]:
    def near(x):  # |x| <= 1
        return ((a + 2) * x - (a + 3)) * x * x + 1

    def far(x):  # 1 < |x| < 2
        return ((a * x - 5 * a) * x + 8 * a) * x - 4 * a

    return [far(t + 1), near(t), near(1 - t), far(2 - t)]


def bicubic_matrix(size_in: int, size_out: int) -> np.ndarray:
    """Bicubic resize (a = -0.75, half-pixel centres, clamped borders) as a
    [size_out, size_in] matrix, matching torch's ``align_corners=False``."""
    m = np.zeros((size_out, size_in), np.float64)
    scale = size_in / size_out
    for i in range(size_out):
        src = (i + 0.5) * scale - 0.5
        base = int(np.floor(src))
        for offset, w in zip(range(-1, 3), _cubic_weights(src - base)):
            m[i, min(max(base + offset, 0), size_in - 1)] += w
    return m.astype(np.float32)


def resize(x: jax.Array, size: int, kind: str) -> jax.Array:
    """[B, h, w, C] -> [B, size, size, C] with 'area' or 'bicubic' resampling."""
    make = area_matrix if kind == "area" else bicubic_matrix
    mh = jnp.asarray(make(x.shape[1], size))
    mw = jnp.asarray(make(x.shape[2], size))
    return jnp.einsum("Hh,bhwc,Ww->bHWc", mh, x, mw)


def phi_index(scale_index: int, num_scales: int, num_phi: int) -> int:
    """Which shared Phi serves scale ``scale_index`` (VAR's tick rule)."""
    k = num_phi
    ticks = (
        np.linspace(1 / 3 / k, 1 - 1 / 3 / k, k)
        if k == 4
        else np.linspace(1 / 2 / k, 1 - 1 / 2 / k, k)
    )
    return int(np.argmin(np.abs(ticks - scale_index / (num_scales - 1))))


class MultiScaleQuantizer(nn.Module):
    """``z`` [B, S, S, C] (S = scales[-1]) -> a tuple of code maps [B, s_k, s_k]."""

    codebook_size: int = 4096
    code_dim: int = 32
    scales: Sequence[int] = (1, 2, 3, 4, 5, 6, 8, 10, 13, 16)
    beta: float = 0.25
    quant_resi: float = 0.5
    num_phi: int = 4
    l2_norm: bool = False

    def setup(self):
        scales = tuple(self.scales)
        if len(scales) < 2 or list(scales) != sorted(set(scales)) or scales[0] < 1:
            raise ValueError(f"MSVQ: scales must be >= 2 increasing sizes, got {scales}")
        init = uniform_codebook_init(self.codebook_size)
        self.codebook = codebook_param(self, "codebook", self.codebook_size, self.code_dim, init)
        if abs(self.quant_resi) > 1e-6:
            self.phis = [conv(self.code_dim, 3, name=f"phi_{i}") for i in range(self.num_phi)]

    def _phi(self, h: jax.Array, scale_index: int) -> jax.Array:
        if abs(self.quant_resi) <= 1e-6:
            return h
        ratio = abs(self.quant_resi)
        phi = self.phis[phi_index(scale_index, len(self.scales), self.num_phi)]
        return h * (1 - ratio) + phi(h) * ratio

    def _lookup(self, rest: jax.Array) -> jax.Array:
        """[B, s, s, C] -> int32 [B, s, s]"""
        flat = rest.reshape(-1, self.code_dim)
        codebook = jax.lax.stop_gradient(self.codebook)
        if self.l2_norm:
            codes = jnp.argmax(l2_normalize(flat) @ l2_normalize(codebook).T, axis=-1)
        else:
            codes = jnp.argmin(squared_distances(flat, codebook), axis=-1)
        return codes.astype(jnp.int32).reshape(rest.shape[:-1])

    def _embed_up(self, codes: jax.Array, scale_index: int) -> jax.Array:
        """Code map [B, s, s] -> Phi(bicubic-up(embeddings)) [B, S, S, C]."""
        h = jnp.take(self.codebook, codes, axis=0)
        if scale_index != len(self.scales) - 1:
            h = resize(h, self.scales[-1], "bicubic")
        return self._phi(h, scale_index)

    def _check(self, z: jax.Array) -> None:
        check_latents(z, self.code_dim, "MultiScaleQuantizer")
        if z.shape[1] != self.scales[-1] or z.shape[2] != self.scales[-1]:
            raise ValueError(
                f"MSVQ: latent map {z.shape[1]}x{z.shape[2]} must equal the last scale "
                f"{self.scales[-1]}x{self.scales[-1]}"
            )

    def _run(self, z: jax.Array) -> tuple[list[jax.Array], jax.Array, jax.Array]:
        """Returns (per-scale codes, f_hat [B, S, S, C], VAR's vq loss)."""
        last = len(self.scales) - 1
        f_rest = jax.lax.stop_gradient(z)
        f_hat = jnp.zeros_like(z)
        codes_list, loss = [], 0.0
        for si, s in enumerate(self.scales):
            rest = f_rest if si == last else resize(f_rest, s, "area")
            codes = self._lookup(rest)
            h = self._embed_up(codes, si)
            f_hat = f_hat + h
            f_rest = f_rest - jax.lax.stop_gradient(h)
            codes_list.append(codes)
            commit = jnp.mean(jnp.square(jax.lax.stop_gradient(f_hat) - z))
            loss = (
                loss + self.beta * commit + jnp.mean(jnp.square(f_hat - jax.lax.stop_gradient(z)))
            )
        return codes_list, f_hat, loss / len(self.scales)

    def encode_to_codes(self, z: jax.Array) -> tuple[jax.Array, ...]:
        """[B, S, S, C] -> tuple of int32 [B, s_k, s_k], small to large."""
        self._check(z)
        return tuple(self._run(z.astype(jnp.float32))[0])

    def _as_maps(self, codes: Sequence[jax.Array]) -> list[jax.Array]:
        if len(codes) != len(self.scales):
            raise ValueError(f"MSVQ: expected {len(self.scales)} code maps, got {len(codes)}")
        maps = []
        for c, s in zip(codes, self.scales):
            if c.shape[1:] not in ((s, s), (s * s,)):
                raise ValueError(f"MSVQ: codes for scale {s} must be [B, {s}, {s}], got {c.shape}")
            maps.append(c.reshape(c.shape[0], s, s))
        return maps

    def decode_codes(self, codes: Sequence[jax.Array]) -> jax.Array:
        """Tuple of [B, s_k, s_k] (or flat [B, s_k^2]) -> f_hat [B, S, S, C]."""
        maps = self._as_maps(codes)
        return sum(self._embed_up(c, si) for si, c in enumerate(maps))

    def next_scale_inputs(self, codes: Sequence[jax.Array]) -> jax.Array:
        """Teacher-forcing inputs of next-scale prediction (VAR's idxBl_to_var_input): after
        each scale but the last, the accumulated f_hat area-downsampled to the next scale,
        flattened and concatenated. -> [B, sum_{k>=1} s_k^2, C]."""
        maps = self._as_maps(codes)
        f_hat, inputs = 0.0, []
        for si in range(len(self.scales) - 1):
            f_hat = f_hat + self._embed_up(maps[si], si)
            nxt = resize(f_hat, self.scales[si + 1], "area")
            inputs.append(nxt.reshape(nxt.shape[0], -1, self.code_dim))
        return jnp.concatenate(inputs, axis=1)

    def __call__(self, z: jax.Array, train: bool = False) -> QuantizerOutput:
        self._check(z)
        dtype = z.dtype
        z = z.astype(jnp.float32)
        codes_list, f_hat, loss = self._run(z)
        flat = jnp.concatenate([c.reshape(-1) for c in codes_list])
        return QuantizerOutput(
            quantized=straight_through(z, f_hat).astype(dtype),
            codes=tuple(codes_list),
            loss=loss,
            losses={"vq": loss},
            stats=usage_and_perplexity(flat, self.codebook_size),
        )
