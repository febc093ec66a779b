"""What every quantizer returns, and helpers they share.

Quantizers are linen modules with ``__call__(z, train=False) -> QuantizerOutput``,
``encode_to_codes(z)`` and ``decode_codes(codes)``; ``z`` is a channels-last latent map
[B, h, w, D]. ``quantized`` carries a straight-through gradient to ``z``.
"""

from __future__ import annotations

from typing import Any

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp


@flax.struct.dataclass
class QuantizerOutput:
    """Result of a quantizer's forward pass.

    quantized: float [B, h, w, D], equal in value to ``decode_codes(codes)``.
    codes: int32 [B, h, w] (or [B, h, w, depth]; a tuple of [B, s, s] maps for multi-scale).
    loss: scalar, the weighted sum of ``losses`` to add to the training objective.
    losses: named unweighted terms (``codebook``, ``commitment``, ``entropy``, ...).
    stats: ``usage`` (% of the codebook hit in this batch) and ``perplexity``.
    """

    quantized: jax.Array
    codes: Any
    loss: jax.Array
    losses: dict[str, jax.Array]
    stats: dict[str, jax.Array]


def straight_through(z: jax.Array, quantized: jax.Array) -> jax.Array:
    """Forward value ``quantized``, gradient of the identity w.r.t. ``z``."""
    return z + jax.lax.stop_gradient(quantized - z)


def code_counts(codes: jax.Array, codebook_size: int) -> jax.Array:
    """How often each code occurs. ``codes``: int, any shape -> float32 [K]."""
    return jnp.zeros((codebook_size,), jnp.float32).at[codes.reshape(-1)].add(1.0)


def usage_and_perplexity(codes: jax.Array, codebook_size: int) -> dict[str, jax.Array]:
    """``usage``: % of the K codes used at least once; ``perplexity``: exp of the entropy of
    the empirical code distribution (K for a uniform assignment, 1 for a single code)."""
    counts = code_counts(codes, codebook_size)
    probs = counts / jnp.maximum(counts.sum(), 1.0)
    entropy = -jnp.sum(jnp.where(probs > 0, probs * jnp.log(jnp.where(probs > 0, probs, 1.0)), 0))
    return {
        "usage": 100.0 * jnp.mean((counts > 0).astype(jnp.float32)),
        "perplexity": jnp.exp(entropy),
    }


def l2_normalize(x: jax.Array, axis: int = -1, eps: float = 1e-12) -> jax.Array:
    """``x / max(||x||, eps)`` along ``axis`` (as torch.nn.functional.normalize)."""
    norm = jnp.sqrt(jnp.sum(jnp.square(x), axis=axis, keepdims=True))
    return x / jnp.maximum(norm, eps)


def squared_distances(z_flat: jax.Array, codebook: jax.Array) -> jax.Array:
    """||z - e||^2 for every pair. ``z_flat``: [N, D], ``codebook``: [K, D] -> [N, K]."""
    z_flat = z_flat.astype(jnp.float32)
    codebook = codebook.astype(jnp.float32)
    return (
        jnp.sum(jnp.square(z_flat), axis=1, keepdims=True)
        + jnp.sum(jnp.square(codebook), axis=1)[None, :]
        - 2.0 * z_flat @ codebook.T
    )


def entropy_loss(logits: jax.Array, temperature: float = 0.01) -> jax.Array:
    """Mean per-sample entropy minus the entropy of the batch-averaged distribution.

    Minimising it makes each assignment confident while spreading the batch over the codebook
    (LlamaGen / MAGVIT). ``logits``: [N, K] affinities (e.g. negative distances).
    """
    logits = logits.reshape(-1, logits.shape[-1]).astype(jnp.float32) / temperature
    probs = jax.nn.softmax(logits, axis=-1)
    log_probs = jax.nn.log_softmax(logits, axis=-1)
    sample_entropy = -jnp.mean(jnp.sum(probs * log_probs, axis=-1))
    avg_probs = jnp.mean(probs, axis=0)
    avg_entropy = -jnp.sum(avg_probs * jnp.log(avg_probs + 1e-5))
    return sample_entropy - avg_entropy


def check_latents(z: jax.Array, dim: int, who: str) -> None:
    """Raises ValueError unless ``z`` is a float [B, h, w, dim] array."""
    if z.ndim != 4:
        raise ValueError(f"{who}: expected latents [B, h, w, {dim}], got shape {z.shape}")
    if z.shape[-1] != dim:
        raise ValueError(f"{who}: expected {dim} latent channels, got {z.shape[-1]}")
    if not jnp.issubdtype(z.dtype, jnp.floating):
        raise ValueError(f"{who}: latents must be floating point, got {z.dtype}")


def codebook_param(module: nn.Module, name: str, size: int, dim: int, init) -> jax.Array:
    """A [K, D] codebook parameter annotated ('codebook', None)."""
    return module.param(name, nn.with_logical_partitioning(init, ("codebook", None)), (size, dim))


def uniform_codebook_init(codebook_size: int):
    """U(-1/K, 1/K) init, as taming/LlamaGen."""

    def init(key, shape, dtype=jnp.float32):
        return jax.random.uniform(key, shape, dtype, -1.0 / codebook_size, 1.0 / codebook_size)

    return init
