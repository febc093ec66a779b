"""Vector quantization (VQ-VAE / VQGAN) with LlamaGen's choices.

Nearest-neighbour lookup in a [K, D] codebook, optionally on l2-normalised codes and inputs
(cosine similarity), codebook loss + beta * commitment loss, an optional entropy loss, and
optionally exponential-moving-average codebook updates with dead-code restarts.

With ``use_ema`` the codebook is not a parameter: it and its EMA statistics live in the
``vq_stats`` collection, updated when ``train=True`` and that collection is mutable. Restarts
(``dead_code_steps > 0``, EMA only) re-initialise codes unused for that many training steps
from random encoder outputs of the current batch, drawn with the ``quantizer`` rng stream.
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxar.quantizers.base import (
    QuantizerOutput,
    check_latents,
    code_counts,
    codebook_param,
    entropy_loss,
    l2_normalize,
    squared_distances,
    straight_through,
    uniform_codebook_init,
    usage_and_perplexity,
)

STATS = "vq_stats"


class VectorQuantizer(nn.Module):
    """``z`` [B, h, w, D] -> nearest codes [B, h, w] and their embeddings [B, h, w, D]."""

    codebook_size: int = 16384
    code_dim: int = 8
    beta: float = 0.25
    l2_norm: bool = True
    entropy_weight: float = 0.0
    entropy_temperature: float = 0.01
    use_ema: bool = False
    ema_decay: float = 0.99
    ema_eps: float = 1e-5
    dead_code_steps: int = 0

    def setup(self):
        if self.codebook_size < 2 or self.code_dim < 1:
            raise ValueError(f"VQ: bad codebook {self.codebook_size} x {self.code_dim}")
        if self.dead_code_steps > 0 and not self.use_ema:
            raise ValueError("VQ: dead-code restart (dead_code_steps > 0) needs use_ema=True")
        if not 0.0 < self.ema_decay < 1.0:
            raise ValueError(f"VQ: ema_decay must be in (0, 1), got {self.ema_decay}")
        shape = (self.codebook_size, self.code_dim)
        init = uniform_codebook_init(self.codebook_size)
        if not self.use_ema:
            self.codebook = codebook_param(self, "codebook", *shape, init)
            return
        self.ema_codebook = self.variable(
            STATS, "codebook", lambda: init(self.make_rng("params"), shape)
        )
        # Starting the EMA at (count 1, sum = codebook) keeps never-used codes where they are.
        self.cluster_size = self.variable(STATS, "cluster_size", jnp.ones, (self.codebook_size,))
        self.embed_sum = self.variable(STATS, "embed_sum", lambda: self.ema_codebook.value)
        self.unused_steps = self.variable(
            STATS, "unused_steps", jnp.zeros, (self.codebook_size,), jnp.int32
        )

    def embeddings(self) -> jax.Array:
        """The codebook as used for lookup (l2-normalised if configured). [K, D]"""
        codebook = self.ema_codebook.value if self.use_ema else self.codebook
        return l2_normalize(codebook) if self.l2_norm else codebook

    def _prepare(self, z: jax.Array) -> jax.Array:
        check_latents(z, self.code_dim, "VectorQuantizer")
        z = z.astype(jnp.float32)
        return l2_normalize(z) if self.l2_norm else z

    def encode_to_codes(self, z: jax.Array) -> jax.Array:
        """[B, h, w, D] -> int32 [B, h, w]."""
        z = self._prepare(z)
        distances = squared_distances(z.reshape(-1, self.code_dim), self.embeddings())
        return jnp.argmin(distances, axis=-1).astype(jnp.int32).reshape(z.shape[:-1])

    def decode_codes(self, codes: jax.Array) -> jax.Array:
        """int [B, h, w] -> embeddings [B, h, w, D]."""
        return jnp.take(self.embeddings(), codes, axis=0)

    def __call__(self, z: jax.Array, train: bool = False) -> QuantizerOutput:
        dtype = z.dtype
        z = self._prepare(z)
        embeddings = self.embeddings()
        z_flat = z.reshape(-1, self.code_dim)  # [N, D]
        distances = squared_distances(z_flat, embeddings)  # [N, K]
        codes = jnp.argmin(distances, axis=-1).astype(jnp.int32)
        quantized = jnp.take(embeddings, codes, axis=0).reshape(z.shape)
        losses = {
            "codebook": jnp.mean(jnp.square(quantized - jax.lax.stop_gradient(z))),
            "commitment": jnp.mean(jnp.square(jax.lax.stop_gradient(quantized) - z)),
        }
        loss = self.beta * losses["commitment"]
        if not self.use_ema:
            loss = loss + losses["codebook"]
        if self.entropy_weight > 0:
            losses["entropy"] = entropy_loss(-distances, self.entropy_temperature)
            loss = loss + self.entropy_weight * losses["entropy"]
        if self.use_ema and train and self.is_mutable_collection(STATS):
            self._ema_update(jax.lax.stop_gradient(z_flat), codes)
        return QuantizerOutput(
            quantized=straight_through(z, quantized).astype(dtype),
            codes=codes.reshape(z.shape[:-1]),
            loss=loss,
            losses=losses,
            stats=usage_and_perplexity(codes, self.codebook_size),
        )

    def _ema_update(self, z_flat: jax.Array, codes: jax.Array) -> None:
        """EMA of per-code counts and sums of assigned inputs; codebook = smoothed mean."""
        decay, k = self.ema_decay, self.codebook_size
        counts = code_counts(codes, k)  # [K]
        sums = jnp.zeros((k, self.code_dim), jnp.float32).at[codes].add(z_flat)  # [K, D]
        cluster_size = decay * self.cluster_size.value + (1 - decay) * counts
        embed_sum = decay * self.embed_sum.value + (1 - decay) * sums
        total = jnp.sum(cluster_size)
        smoothed = (cluster_size + self.ema_eps) / (total + k * self.ema_eps) * total
        codebook = embed_sum / smoothed[:, None]
        unused = jnp.where(counts > 0, 0, self.unused_steps.value + 1)
        if self.dead_code_steps > 0:
            dead = unused >= self.dead_code_steps  # [K]
            picks = jax.random.randint(self.make_rng("quantizer"), (k,), 0, z_flat.shape[0])
            fresh = z_flat[picks]  # [K, D]
            codebook = jnp.where(dead[:, None], fresh, codebook)
            embed_sum = jnp.where(dead[:, None], fresh, embed_sum)
            cluster_size = jnp.where(dead, 1.0, cluster_size)
            unused = jnp.where(dead, 0, unused)
        self.ema_codebook.value = codebook
        self.cluster_size.value = cluster_size
        self.embed_sum.value = embed_sum
        self.unused_steps.value = unused.astype(jnp.int32)
