"""Shared pieces of the training-free sampling accelerators (SJD, LANTERN, GSD, ZipAR).

All of them drive the LlamaGen GPT (``jaxar.generators.gpt``) through its public methods
(``prefill``, ``decode_step``) and its functional KV cache (``jaxar.layers.attention``); the
logits rules (temperature, top-k, top-p, CFG) come from ``jaxar.sampling.logits``.

* ``GuidedModel``: one image's forward passes with the CFG row layout of
  ``jaxar.sampling.autoregressive`` (conditional row first, null-condition row second, both fed
  the same tokens), returning guided logits.
* ``masked_decode_step``: ``GPT.decode_step`` with an explicit attention mask (ZipAR).
* ``target_probs``: the distribution a plain sampler draws from (greedy: one-hot argmax).
* ``rewind_cache``: moves every layer's write index (speculative rollback).
* ``nearest_neighbours``: k nearest codebook entries of every code (LANTERN, GSD).
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jaxar.generators.gpt import GPT, GPTConfig
from jaxar.layers.caches import StackCache, set_cache_index
from jaxar.layers.rope import gather_rope
from jaxar.layers.transformer import run_blocks
from jaxar.sampling.autoregressive import GPTSamplingOptions
from jaxar.sampling.logits import (
    apply_temperature,
    cfg_combine,
    cfg_scale_schedule,
    top_k_filter,
    top_p_filter,
)


def check_options(opts: GPTSamplingOptions, cfg: GPTConfig) -> int:
    """Validates options for an accelerator; returns the number of codes to generate."""
    if opts.return_logits:
        raise ValueError("accelerated samplers do not return logits (return_logits=True)")
    num = opts.num_tokens or cfg.block_size
    if not 1 <= num <= cfg.block_size:
        raise ValueError(f"num_tokens must be in [1, {cfg.block_size}], got {num}")
    return num


def is_greedy(opts: GPTSamplingOptions) -> bool:
    """Temperature 0 or top_k == 1: the target distribution is a one-hot argmax."""
    return opts.temperature == 0 or opts.top_k == 1


def target_probs(logits: jax.Array, opts: GPTSamplingOptions) -> jax.Array:
    """The distribution a plain sampler draws from. logits [..., V] (guided) -> probs [..., V].

    Greedy settings give ``one_hot(argmax(logits))`` (the plain sampler's greedy choice).
    """
    logits = logits.astype(jnp.float32)
    if is_greedy(opts):
        return jax.nn.one_hot(jnp.argmax(logits, axis=-1), logits.shape[-1], dtype=jnp.float32)
    logits = apply_temperature(logits, opts.temperature)
    logits = top_p_filter(top_k_filter(logits, opts.top_k), opts.top_p)
    return jax.nn.softmax(logits, axis=-1)


def categorical(rng: jax.Array, probs: jax.Array) -> jax.Array:
    """Draws int32 [...] from unnormalised non-negative weights [..., V]."""
    return jax.random.categorical(rng, jnp.log(probs), axis=-1).astype(jnp.int32)


def rewind_cache(cache: StackCache, index: jax.Array) -> StackCache:
    """Sets every layer's next write slot to ``index`` (entries after it become stale)."""
    return set_cache_index(cache, index)


def masked_decode_step(
    module: GPT, tokens: jax.Array, positions: jax.Array, cache: StackCache, mask: jax.Array
) -> tuple[jax.Array, StackCache]:
    """``GPT.decode_step`` with an explicit attention mask; use as ``method=`` of ``apply``.

    tokens int [B, T] at sequence positions [T]; mask bool [T, S] (S = cache length; True =
    may attend). Returns logits [B, T, V] and the cache advanced by T slots.
    """
    h = module.tok_embeddings(tokens)
    rope = gather_rope(module.rope_table(), positions)
    h, new_cache = run_blocks(module.layers, h, cache, rope=rope, mask=mask, train=False)
    return module.output(module.norm(h)).astype(jnp.float32), new_cache


@dataclasses.dataclass(frozen=True)
class GuidedModel:
    """Forward passes with the CFG row layout of ``jaxar.sampling.autoregressive``: the cache
    holds ``rows * B`` rows, conditional rows first, null-condition rows second (CFG), all fed
    the same tokens. ``num`` (codes per image) sets the CFG schedule: the scale for code ``t``
    is ``cfg_scale_schedule(t, num, ...)``.
    """

    model: GPT
    params: Any
    opts: GPTSamplingOptions
    num: int

    @property
    def rows(self) -> int:
        return 2 if self.opts.guided else 1

    def _guide(self, logits: jax.Array, code_index: jax.Array) -> jax.Array:
        """Row logits [R*B, ..., V] -> guided [B, ..., V]; code_index broadcasts over [...]."""
        if not self.opts.guided:
            return logits
        o = self.opts
        scale = cfg_scale_schedule(
            code_index, self.num, o.cfg_scale, o.cfg_schedule, o.cfg_interval
        )
        cond, uncond = jnp.split(logits, 2, axis=0)
        return cfg_combine(cond, uncond, scale[..., None])

    def prefill(self, cond: jax.Array, cache: StackCache) -> tuple[jax.Array, StackCache]:
        """cond: labels [B] (captions [B, Lc, C]). Returns guided logits for code 0 [B, V]."""
        batch = jnp.shape(cond)[0]
        rows = jnp.concatenate([cond] * self.rows, axis=0)
        force_drop = jnp.arange(self.rows * batch) >= batch if self.opts.guided else None
        logits, cache = self.model.apply(
            {"params": self.params}, rows, cache, force_drop=force_drop, method=GPT.prefill
        )
        return self._guide(logits, jnp.zeros((), jnp.int32)), cache

    def decode(
        self,
        tokens: jax.Array,
        positions: jax.Array,
        cache: StackCache,
        code_index: jax.Array,
        mask: jax.Array | None = None,
    ) -> tuple[jax.Array, StackCache]:
        """Feeds tokens [B, T] at positions [T]; returns guided logits [B, T, V] for the codes
        ``code_index`` [T] they predict, and the cache (``mask`` [T, S] optional)."""
        rows = jnp.concatenate([tokens] * self.rows, axis=0)
        variables = {"params": self.params}
        if mask is None:
            logits, cache = self.model.apply(
                variables, rows, positions, cache, method=GPT.decode_step
            )
        else:
            logits, cache = self.model.apply(
                variables, rows, positions, cache, mask, method=masked_decode_step
            )
        return self._guide(logits, code_index), cache


def nearest_neighbours(embeddings: Any, k: int, chunk: int = 1024) -> np.ndarray:
    """Indices int32 [V, k] of each code's k nearest other codes (squared L2), nearest first.

    embeddings: [V, D] (the tokenizer's codebook). Computed on the host in row chunks.
    """
    emb = np.asarray(embeddings, np.float32)
    if emb.ndim != 2:
        raise ValueError(f"codebook embeddings must be [V, D], got shape {emb.shape}")
    vocab = emb.shape[0]
    if not 0 <= k < vocab:
        raise ValueError(f"k must be in [0, {vocab - 1}] for a codebook of {vocab}, got {k}")
    out = np.zeros((vocab, k), np.int32)
    if k == 0:
        return out
    sq = (emb**2).sum(-1)
    for start in range(0, vocab, chunk):
        rows = emb[start : start + chunk]
        dist = sq[start : start + chunk, None] + sq[None] - 2.0 * rows @ emb.T  # [c, V]
        dist[np.arange(len(rows)), np.arange(start, start + len(rows))] = np.inf  # not itself
        part = np.argpartition(dist, k - 1, axis=1)[:, :k]
        order = np.argsort(np.take_along_axis(dist, part, axis=1), axis=1, kind="stable")
        out[start : start + chunk] = np.take_along_axis(part, order, axis=1)
    return out


def wrap_sampler(model: GPT, opts: GPTSamplingOptions, generate_fn: Any, *extra: Any) -> Any:
    """Jits ``generate_fn(params, cond, rng, *extra)`` and checks concrete labels on the host
    first. ``extra`` arrays (e.g. neighbour tables) are passed as arguments, not baked into
    the compiled program as constants.

    The returned ``sampler(params, cond, rng) -> (codes int32 [B, N], forward_passes int32 [B])``
    carries ``.jitted`` (taking ``*extra`` after rng) and ``.options``.
    """
    from jaxar.sampling.autoregressive import check_condition

    jitted = jax.jit(generate_fn)
    extra = tuple(jnp.asarray(x) for x in extra)

    def check(cond):
        check_condition(model.config, cond)

    def sampler(params, cond, rng):
        check(cond)
        return jitted(params, cond, rng, *extra)

    sampler.jitted = jitted
    sampler.run = generate_fn  # the traceable body, for jaxar.sampling.base.Sampler
    sampler.extra = extra
    sampler.check = check
    sampler.options = opts
    return sampler
