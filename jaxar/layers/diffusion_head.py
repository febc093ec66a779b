"""MAR's per-token denoiser ``SimpleMLPAdaLN`` (Li et al. 2024, ``models/diffloss.py``).

``DiffusionMLP(in_channels, width, depth)(x [N, C], t [N], c [N, Z]) -> [N, out_channels]``
(``out_channels`` defaults to ``2 * in_channels``: eps then the learned-range variance values,
see ``jaxar.layers.diffusion``)::

    t_emb = Dense(SiLU(Dense(timestep_embedding(t, 256))))      # cos then sin, max_period 1e4
    y = t_emb + Dense(c)
    h = Dense(x)
    depth x: shift, scale, gate = Dense(SiLU(y)).split(3)
             h = h + gate * Dense(SiLU(Dense(LN(h) * (1 + scale) + shift)))   # LN: affine
    shift, scale = Dense(SiLU(y)).split(2)
    out = Dense(LN(h) * (1 + scale) + shift)                     # LN: no affine

Both LayerNorms use eps 1e-6. Initialisation is MAR's ``initialize_weights``: xavier-uniform
kernels and zero biases for every Dense, normal(0.02) kernels for the two time-embedding
Denses, zeros (kernel and bias) for every adaLN modulation Dense and for the final Dense, so
a freshly initialised head outputs exactly zero.

Parameter names (torch ``state_dict`` key -> flax path; Linear ``weight`` -> ``kernel`` is
transposed ``[out, in] -> [in, out]``, LayerNorm ``weight`` -> ``scale``; ``bias`` -> ``bias``):

==========================================  ============================================
torch (``net.`` prefix inside ``DiffLoss``)  jaxar ``params``
==========================================  ============================================
``time_embed.mlp.0.{weight,bias}``          ``time_embed_mlp_0/{kernel,bias}``
``time_embed.mlp.2.{weight,bias}``          ``time_embed_mlp_2/{kernel,bias}``
``cond_embed.{weight,bias}``                ``cond_embed/{kernel,bias}``
``input_proj.{weight,bias}``                ``input_proj/{kernel,bias}``
``res_blocks.{i}.in_ln.{weight,bias}``      ``res_blocks_{i}/in_ln/{scale,bias}``
``res_blocks.{i}.mlp.0.{weight,bias}``      ``res_blocks_{i}/mlp_0/{kernel,bias}``
``res_blocks.{i}.mlp.2.{weight,bias}``      ``res_blocks_{i}/mlp_2/{kernel,bias}``
``res_blocks.{i}.adaLN_modulation.1.*``     ``res_blocks_{i}/adaLN_modulation_1/{kernel,bias}``
``final_layer.adaLN_modulation.1.*``        ``final_layer/adaLN_modulation_1/{kernel,bias}``
``final_layer.linear.{weight,bias}``        ``final_layer/linear/{kernel,bias}``
==========================================  ============================================

(``final_layer.norm_final`` has no parameters.) The rule is mechanical: ``.`` before a
Sequential index or list index becomes ``_`` (``mlp.0`` -> ``mlp_0``, ``res_blocks.3`` ->
``res_blocks_3``), ``time_embed.mlp`` -> ``time_embed_mlp``, other ``.`` are path separators.

``dtype`` is the compute dtype (params are ``param_dtype``, float32 by default); the output
is in ``dtype``. Kernels carry logical axes (``embed`` for the head width, ``mlp`` for the
residual MLP hidden and the modulation outputs) via ``nn.with_logical_partitioning``.
"""

from __future__ import annotations

import math
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxar.layers.mlp import dense_init
from jaxar.layers.norms import modulate


def timestep_embedding(t: jax.Array, dim: int, max_period: float = 10000.0) -> jax.Array:
    """Sinusoidal embedding [N, dim] of (possibly fractional) timesteps [N]:
    ``[cos(t * f_k), sin(t * f_k)]`` with ``f_k = max_period ** (-k / (dim // 2))``, zero-padded
    to ``dim`` when it is odd (GLIDE / DiT / MAR)."""
    half = dim // 2
    freqs = jnp.exp(-math.log(max_period) * jnp.arange(half, dtype=jnp.float32) / half)
    args = t.astype(jnp.float32)[:, None] * freqs[None]
    emb = jnp.concatenate([jnp.cos(args), jnp.sin(args)], axis=-1)
    if dim % 2:
        emb = jnp.concatenate([emb, jnp.zeros_like(emb[:, :1])], axis=-1)
    return emb


def _dense(features, axes, name, dtype, param_dtype, kernel_init=None, zero=False):
    if zero:
        kernel_init = nn.initializers.zeros
    elif kernel_init is None:
        kernel_init = nn.initializers.xavier_uniform()
    return nn.Dense(
        features,
        kernel_init=nn.with_logical_partitioning(kernel_init, axes),
        bias_init=nn.with_logical_partitioning(nn.initializers.zeros, axes[-1:]),
        dtype=dtype,
        param_dtype=param_dtype,
        name=name,
    )


class DiffusionResBlock(nn.Module):
    """MAR's ``ResBlock``: ``x + gate * mlp(modulate(LN(x), shift, scale))``; x, y: [N, W]."""

    width: int
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array, y: jax.Array) -> jax.Array:
        w, dt, pdt = self.width, self.dtype, self.param_dtype
        mod = _dense(3 * w, ("embed", "mlp"), "adaLN_modulation_1", dt, pdt, zero=True)(nn.silu(y))
        shift, scale, gate = jnp.split(mod, 3, axis=-1)
        h = nn.LayerNorm(
            epsilon=1e-6,
            dtype=dt,
            param_dtype=pdt,
            scale_init=nn.with_logical_partitioning(nn.initializers.ones, ("embed",)),
            bias_init=nn.with_logical_partitioning(nn.initializers.zeros, ("embed",)),
            name="in_ln",
        )(x)
        h = modulate(h, shift, scale)
        h = _dense(w, ("embed", "mlp"), "mlp_0", dt, pdt)(h)
        h = _dense(w, ("mlp", "embed"), "mlp_2", dt, pdt)(nn.silu(h))
        return x + gate * h


class DiffusionFinalLayer(nn.Module):
    """MAR's ``FinalLayer``: ``linear(modulate(LN_no_affine(x), shift, scale))``."""

    width: int
    out_channels: int
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array, y: jax.Array) -> jax.Array:
        w, dt, pdt = self.width, self.dtype, self.param_dtype
        mod = _dense(2 * w, ("embed", "mlp"), "adaLN_modulation_1", dt, pdt, zero=True)(nn.silu(y))
        shift, scale = jnp.split(mod, 2, axis=-1)
        h = nn.LayerNorm(
            epsilon=1e-6, use_scale=False, use_bias=False, dtype=dt, name="norm_final"
        )(x)
        h = modulate(h, shift, scale)
        return _dense(self.out_channels, ("embed", None), "linear", dt, pdt, zero=True)(h)


class DiffusionMLP(nn.Module):
    """MAR's ``SimpleMLPAdaLN`` denoiser; see the module docstring for structure and names.

    Call: ``(x [N, in_channels], t [N] timesteps (int or float), c [N, Z]) -> [N, out]``.
    """

    in_channels: int
    width: int
    depth: int
    out_channels: int | None = None  # default 2 * in_channels (eps + learned variance)
    frequency_embedding_size: int = 256
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32

    @property
    def num_outputs(self) -> int:
        return 2 * self.in_channels if self.out_channels is None else self.out_channels

    def _check(self, x: jax.Array, t: jax.Array, c: jax.Array) -> None:
        for name, value in (
            ("in_channels", self.in_channels),
            ("width", self.width),
            ("frequency_embedding_size", self.frequency_embedding_size),
            ("out_channels", self.num_outputs),
        ):
            if value < 1:
                raise ValueError(f"DiffusionMLP.{name} must be >= 1, got {value}")
        if self.depth < 0:
            raise ValueError(f"DiffusionMLP.depth must be >= 0, got {self.depth}")
        if x.ndim != 2 or x.shape[1] != self.in_channels:
            raise ValueError(f"x must be [N, in_channels={self.in_channels}], got {x.shape}")
        n = x.shape[0]
        if t.shape != (n,):
            raise ValueError(f"t must be [N] = [{n}], got shape {t.shape}")
        if c.ndim != 2 or c.shape[0] != n:
            raise ValueError(f"c must be [N, Z] with N = {n}, got shape {c.shape}")

    @nn.compact
    def __call__(self, x: jax.Array, t: jax.Array, c: jax.Array) -> jax.Array:
        x, t, c = jnp.asarray(x), jnp.asarray(t), jnp.asarray(c)
        self._check(x, t, c)
        w, dt, pdt = self.width, self.dtype, self.param_dtype
        t_freq = timestep_embedding(t, self.frequency_embedding_size).astype(dt)
        t_emb = _dense(w, (None, "embed"), "time_embed_mlp_0", dt, pdt, dense_init(0.02))(t_freq)
        t_emb = _dense(w, ("mlp", "embed"), "time_embed_mlp_2", dt, pdt, dense_init(0.02))(
            nn.silu(t_emb)
        )
        y = t_emb + _dense(w, (None, "embed"), "cond_embed", dt, pdt)(c.astype(dt))
        h = _dense(w, (None, "embed"), "input_proj", dt, pdt)(x.astype(dt))
        for i in range(self.depth):
            h = DiffusionResBlock(w, dtype=dt, param_dtype=pdt, name=f"res_blocks_{i}")(h, y)
        return DiffusionFinalLayer(
            w, self.num_outputs, dtype=dt, param_dtype=pdt, name="final_layer"
        )(h, y)
