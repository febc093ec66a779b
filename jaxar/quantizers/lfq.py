"""Lookup-free quantization (LFQ, MAGVIT-v2, Yu et al. 2024).

Each latent channel is binarised to +-1 (straight-through); the implicit codebook is
{-1, 1}^d with 2^d entries and index sum_i bit_i 2^(d-1-i). MAGVIT-v2's entropy loss is the
mean per-sample entropy (pushes each latent to a confident code) minus the entropy of the
batch-averaged distribution (spreads the batch over the codebook), where p(c | z) is a
softmax over codes of 2 <z, c> / temperature. It materialises [N, 2^d] and so allows d <= 16.
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from jaxar.quantizers.base import (
    QuantizerOutput,
    check_latents,
    straight_through,
    usage_and_perplexity,
)

MAX_ENTROPY_BITS = 16


def _entropy(probs: jax.Array, axis: int = -1) -> jax.Array:
    return -jnp.sum(probs * jnp.log(jnp.maximum(probs, 1e-8)), axis=axis)


class LookupFreeQuantizer(nn.Module):
    """``z`` [B, h, w, d] -> codes int32 [B, h, w] in [0, 2^d)."""

    code_dim: int = 14
    beta: float = 0.25
    entropy_weight: float = 0.1
    sample_entropy_weight: float = 1.0
    codebook_entropy_weight: float = 1.0
    temperature: float = 0.01

    def setup(self):
        if not 1 <= self.code_dim <= 30:
            raise ValueError(f"LFQ: code_dim must be in [1, 30], got {self.code_dim}")
        if self.entropy_weight > 0 and self.code_dim > MAX_ENTROPY_BITS:
            raise ValueError(f"LFQ: the entropy loss needs code_dim <= {MAX_ENTROPY_BITS}")

    @property
    def codebook_size(self) -> int:
        return 2**self.code_dim

    def _bits(self) -> jax.Array:
        return jnp.asarray(2 ** np.arange(self.code_dim - 1, -1, -1), jnp.int32)  # [d]

    def all_codes(self) -> jax.Array:
        """The implicit codebook, row k = decode_codes(k). [2^d, d]"""
        return self.decode_codes(jnp.arange(self.codebook_size, dtype=jnp.int32))

    def encode_to_codes(self, z: jax.Array) -> jax.Array:
        """[B, h, w, d] -> int32 [B, h, w]."""
        check_latents(z, self.code_dim, "LookupFreeQuantizer")
        return jnp.sum((z > 0).astype(jnp.int32) * self._bits(), axis=-1).astype(jnp.int32)

    def decode_codes(self, codes: jax.Array) -> jax.Array:
        """int [...] -> +-1 values [..., d]."""
        bits = (codes[..., None] // self._bits()) % 2
        return bits.astype(jnp.float32) * 2.0 - 1.0

    def entropy_terms(self, z_flat: jax.Array) -> tuple[jax.Array, jax.Array]:
        """(mean per-sample entropy, codebook entropy) of p(c|z). ``z_flat``: [N, d]."""
        logits = 2.0 * z_flat @ self.all_codes().T / self.temperature  # [N, 2^d]
        probs = jax.nn.softmax(logits, axis=-1)
        return jnp.mean(_entropy(probs)), _entropy(jnp.mean(probs, axis=0))

    def __call__(self, z: jax.Array, train: bool = False) -> QuantizerOutput:
        check_latents(z, self.code_dim, "LookupFreeQuantizer")
        dtype = z.dtype
        z = z.astype(jnp.float32)
        hard = jnp.where(z > 0, 1.0, -1.0)
        codes = self.encode_to_codes(z)
        losses = {"commitment": jnp.mean(jnp.square(z - jax.lax.stop_gradient(hard)))}
        loss = self.beta * losses["commitment"]
        if self.entropy_weight > 0:
            sample, codebook = self.entropy_terms(z.reshape(-1, self.code_dim))
            losses.update(sample_entropy=sample, codebook_entropy=codebook)
            entropy = self.sample_entropy_weight * sample - self.codebook_entropy_weight * codebook
            losses["entropy"] = entropy
            loss = loss + self.entropy_weight * entropy
        return QuantizerOutput(
            quantized=straight_through(z, hard).astype(dtype),
            codes=codes,
            loss=loss,
            losses=losses,
            stats=usage_and_perplexity(codes, self.codebook_size),
        )
