"""Rotary position embeddings (RoPE), 1D and 2D, in LlamaGen's layout.

A table is a pair ``(cos, sin)`` of float32 arrays ``[N, Dh // 2]``: row ``n`` holds the
angles for sequence position ``n``. The first ``prefix_len`` rows belong to the condition
(class / caption) tokens and carry no position:

* ``prefix_mode="zero"`` (LlamaGen as released): cos = sin = 0, which *zeroes* the query and
  key of prefix tokens. Released checkpoints were trained this way, so it is the default for
  fidelity.
* ``prefix_mode="identity"``: cos = 1, sin = 0 (no rotation).

Pairs are interleaved: channels ``(2i, 2i + 1)`` rotate together by angle ``theta_i``.
In 2D the ``Dh // 2`` pairs split in two halves: the first half rotates with the grid row
(``n // grid``), the second with the column (``n % grid``); each half uses frequencies
``base ** (-2j / (Dh / 2))``.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

PREFIX_MODES = ("zero", "identity")


def _prefix_rows(prefix_len: int, half: int, prefix_mode: str) -> tuple[np.ndarray, np.ndarray]:
    if prefix_mode not in PREFIX_MODES:
        raise ValueError(f"prefix_mode must be one of {PREFIX_MODES}, got {prefix_mode!r}")
    cos = np.full((prefix_len, half), 0.0 if prefix_mode == "zero" else 1.0, np.float32)
    return cos, np.zeros((prefix_len, half), np.float32)


def _check_head_dim(head_dim: int, multiple: int) -> None:
    if head_dim <= 0 or head_dim % multiple:
        raise ValueError(f"RoPE head_dim must be a positive multiple of {multiple}, got {head_dim}")


def rope_table_1d(
    seq_len: int,
    head_dim: int,
    base: float = 10000.0,
    prefix_len: int = 0,
    prefix_mode: str = "zero",
) -> tuple[jax.Array, jax.Array]:
    """1D RoPE table: ``(cos, sin)`` each ``[prefix_len + seq_len, head_dim // 2]``."""
    _check_head_dim(head_dim, 2)
    half = head_dim // 2
    freqs = 1.0 / (base ** (np.arange(0, head_dim, 2)[:half].astype(np.float32) / head_dim))
    angles = np.outer(np.arange(seq_len, dtype=np.float32), freqs)  # [L, Dh/2]
    pc, ps = _prefix_rows(prefix_len, half, prefix_mode)
    cos = np.concatenate([pc, np.cos(angles)]).astype(np.float32)
    sin = np.concatenate([ps, np.sin(angles)]).astype(np.float32)
    return jnp.asarray(cos), jnp.asarray(sin)


def rope_table_2d(
    grid_size: int,
    head_dim: int,
    base: float = 10000.0,
    prefix_len: int = 0,
    prefix_mode: str = "zero",
) -> tuple[jax.Array, jax.Array]:
    """2D RoPE table over a row-major ``grid_size x grid_size`` grid.

    Returns ``(cos, sin)`` each ``[prefix_len + grid_size**2, head_dim // 2]``.
    """
    _check_head_dim(head_dim, 4)
    half = head_dim // 2  # channels per axis
    freqs = 1.0 / (base ** (np.arange(0, half, 2)[: half // 2].astype(np.float32) / half))
    pos = np.arange(grid_size, dtype=np.float32)
    row = np.repeat(pos, grid_size)  # [G*G]: n // grid
    col = np.tile(pos, grid_size)  # [G*G]: n % grid
    angles = np.concatenate([np.outer(row, freqs), np.outer(col, freqs)], axis=-1)  # [G*G, Dh/2]
    pc, ps = _prefix_rows(prefix_len, head_dim // 2, prefix_mode)
    cos = np.concatenate([pc, np.cos(angles)]).astype(np.float32)
    sin = np.concatenate([ps, np.sin(angles)]).astype(np.float32)
    return jnp.asarray(cos), jnp.asarray(sin)


def gather_rope(
    table: tuple[jax.Array, jax.Array], positions: jax.Array
) -> tuple[jax.Array, jax.Array]:
    """Rows of a table at ``positions`` ([T] or [B, T]) -> ``(cos, sin)`` [(B,) T, Dh/2]."""
    cos, sin = table
    return jnp.take(cos, positions, axis=0), jnp.take(sin, positions, axis=0)


def apply_rope(x: jax.Array, cos: jax.Array, sin: jax.Array) -> jax.Array:
    """Rotates interleaved channel pairs of ``x``.

    x: [B, T, H, Dh]; cos, sin: [T, Dh/2] or [B, T, Dh/2]. Computed in float32, returned in
    ``x.dtype``.
    """
    if cos.shape[-1] * 2 != x.shape[-1]:
        raise ValueError(f"RoPE table width {cos.shape[-1]} does not match head_dim {x.shape[-1]}")
    if cos.ndim == 2:
        cos, sin = cos[None], sin[None]
    cos, sin = cos[:, :, None, :], sin[:, :, None, :]  # [B|1, T, 1, Dh/2]
    pairs = x.astype(jnp.float32).reshape(*x.shape[:-1], -1, 2)
    even, odd = pairs[..., 0], pairs[..., 1]
    out = jnp.stack([even * cos - odd * sin, odd * cos + even * sin], axis=-1)
    return out.reshape(x.shape).astype(x.dtype)
