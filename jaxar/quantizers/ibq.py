"""Index backpropagation quantization (IBQ, Shi et al. 2024).

Logits are z . codebook^T; the forward pass uses the hard one-hot of the argmax, the backward
pass the softmax over ALL codes (straight-through on the index distribution), so every code
receives gradient each step and the codebook stays in use. Quantized = one_hot . codebook;
codebook + beta * commitment losses as in VQ, optional entropy loss.
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxar.quantizers.base import (
    QuantizerOutput,
    check_latents,
    codebook_param,
    entropy_loss,
    usage_and_perplexity,
)


class IndexBackpropQuantizer(nn.Module):
    """``z`` [B, h, w, D] -> codes int32 [B, h, w] = argmax_k <z, e_k>."""

    codebook_size: int = 16384
    code_dim: int = 256
    beta: float = 0.25
    entropy_weight: float = 0.0
    entropy_temperature: float = 0.01

    def setup(self):
        if self.codebook_size < 2:
            raise ValueError(f"IBQ: bad codebook size {self.codebook_size}")
        init = nn.initializers.normal(stddev=1.0 / self.code_dim**0.5)
        self.codebook = codebook_param(self, "codebook", self.codebook_size, self.code_dim, init)

    def _logits(self, z: jax.Array) -> jax.Array:
        check_latents(z, self.code_dim, "IndexBackpropQuantizer")
        return z.reshape(-1, self.code_dim).astype(jnp.float32) @ self.codebook.T  # [N, K]

    def encode_to_codes(self, z: jax.Array) -> jax.Array:
        """[B, h, w, D] -> int32 [B, h, w]."""
        return jnp.argmax(self._logits(z), axis=-1).astype(jnp.int32).reshape(z.shape[:-1])

    def decode_codes(self, codes: jax.Array) -> jax.Array:
        """int [B, h, w] -> [B, h, w, D]."""
        return jnp.take(self.codebook, codes, axis=0)

    def __call__(self, z: jax.Array, train: bool = False) -> QuantizerOutput:
        logits = self._logits(z)
        codes = jnp.argmax(logits, axis=-1).astype(jnp.int32)  # [N]
        soft = jax.nn.softmax(logits, axis=-1)
        hard = jax.nn.one_hot(codes, self.codebook_size, dtype=soft.dtype)
        index = hard - jax.lax.stop_gradient(soft) + soft  # value: hard, gradient: soft
        quantized = (index @ self.codebook).reshape(z.shape)
        z32 = z.astype(jnp.float32)
        losses = {
            "codebook": jnp.mean(jnp.square(quantized - jax.lax.stop_gradient(z32))),
            "commitment": jnp.mean(jnp.square(jax.lax.stop_gradient(quantized) - z32)),
        }
        loss = losses["codebook"] + self.beta * losses["commitment"]
        if self.entropy_weight > 0:
            losses["entropy"] = entropy_loss(logits, self.entropy_temperature)
            loss = loss + self.entropy_weight * losses["entropy"]
        return QuantizerOutput(
            quantized=quantized.astype(z.dtype),
            codes=codes.reshape(z.shape[:-1]),
            loss=loss,
            losses=losses,
            stats=usage_and_perplexity(codes, self.codebook_size),
        )
