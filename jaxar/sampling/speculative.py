"""Speculative Jacobi Decoding (SJD, Teng et al., ICLR 2025), training-free, on device.

A window of ``window`` draft tokens is refined in parallel, Jacobi-style. One iteration is ONE
forward pass of the GPT over ``[last accepted code, draft_0, ..., draft_{W-2}]`` at their raster
positions (the KV cache is first rewound to the accepted prefix), giving the target
distribution ``p_j`` of every window position ``j`` conditioned on the drafts before it. Then:

1. verify drafts left to right with the speculative criterion: accept ``x_j`` with probability
   ``min(1, p_j(x_j) / q_j(x_j))`` where ``q_j`` is the distribution ``x_j`` was drawn from
   (the previous iteration's ``p`` at that position; new window slots start as uniformly random
   tokens with a point-mass ``q``, as in the reference code); stop at the first rejection;
2. the first rejected position is resampled from ``normalise(max(0, p_j - q_j))`` so the output
   distribution equals the plain sampler's (speculative-sampling theorem), and accepted +
   resampled codes are committed (at least one per pass);
3. the drafts after it are replaced by fresh samples of this pass's ``p_j`` (the Jacobi update)
   and the window slides, new slots filled with random tokens.

With greedy settings (temperature 0 or top_k=1) ``p`` is the one-hot argmax, so a draft is
accepted iff it equals the argmax and the output equals the plain greedy sampler's exactly.

The verification rule is pluggable (``AcceptRule``): LANTERN (``lantern.py``) and GSD
(``gsd.py``) reuse this loop with relaxed rules. Images of a batch run independently
(``jax.vmap`` of a per-image ``lax.while_loop``), each counting its own forward passes
(prefill included; the plain sampler needs ``num_tokens`` passes).
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxar.generators.gpt import GPT, GPTConfig, init_gpt_cache
from jaxar.sampling.accel_common import (
    GuidedModel,
    categorical,
    check_options,
    is_greedy,
    rewind_cache,
    target_probs,
    wrap_sampler,
)
from jaxar.sampling.autoregressive import GPTSamplingOptions, model_of

# (target p [W, V], draft q [W, V], draft tokens x int [W], guided logits [W, V])
#   -> (acceptance probability [W], unnormalised resampling weights on rejection [W, V])
AcceptRule = Callable[[jax.Array, jax.Array, jax.Array, jax.Array], tuple[jax.Array, jax.Array]]

_TINY = 1e-12


def take_token(probs: jax.Array, tokens: jax.Array) -> jax.Array:
    """probs [W, V], tokens int [W] -> probs[j, tokens[j]] [W]."""
    return jnp.take_along_axis(probs, tokens[:, None], axis=-1)[:, 0]


def sjd_rule(
    target: jax.Array, draft: jax.Array, tokens: jax.Array, logits: jax.Array
) -> tuple[jax.Array, jax.Array]:
    """Speculative acceptance ``min(1, p(x) / q(x))``; residual ``max(0, p - q)``."""
    del logits
    ratio = take_token(target, tokens) / jnp.maximum(take_token(draft, tokens), _TINY)
    return jnp.minimum(ratio, 1.0), jnp.maximum(target - draft, 0.0)


def _verify(
    rule: AcceptRule,
    p: jax.Array,
    q: jax.Array,
    drafts: jax.Array,
    logits: jax.Array,
    valid: jax.Array,
    rng: jax.Array,
    greedy: bool,
) -> tuple[jax.Array, jax.Array]:
    """Accepted prefix length a [] and the resampled token at position a []."""
    k_u, k_res = jax.random.split(rng)
    accept_prob, residual = rule(p, q, drafts, logits)
    width = drafts.shape[0]
    u = jnp.full((width,), 0.5) if greedy else jax.random.uniform(k_u, (width,))
    ok = (u < accept_prob) & valid
    a = jnp.sum(jnp.cumprod(ok.astype(jnp.int32)))
    at = jnp.minimum(a, width - 1)
    weights = residual[at]
    weights = jnp.where(jnp.sum(weights) > _TINY, weights, p[at])  # p == q: fall back to p
    return a, categorical(k_res, weights)


def _slide(
    p: jax.Array, shift: jax.Array, rng: jax.Array, vocab: int
) -> tuple[jax.Array, jax.Array]:
    """New window after committing ``shift`` codes: Jacobi samples of this pass's ``p`` for
    the surviving positions, random point-mass drafts for the new ones. -> (x [W], q [W, V])."""
    k_jac, k_init = jax.random.split(rng)
    width = p.shape[0]
    src = jnp.arange(width) + shift
    keep = src < width
    src = jnp.minimum(src, width - 1)
    jacobi = categorical(k_jac, p)[src]
    fresh = jax.random.randint(k_init, (width,), 0, vocab, jnp.int32)
    tokens = jnp.where(keep, jacobi, fresh)
    q = jnp.where(keep[:, None], p[src], jax.nn.one_hot(fresh, vocab, dtype=p.dtype))
    return tokens, q


def _jacobi_one(
    guided: GuidedModel, rule: AcceptRule, window: int, cond: jax.Array, rng: jax.Array
) -> tuple[jax.Array, jax.Array]:
    """One image: codes int32 [N] and forward passes int32 [] (prefill included)."""
    cfg = guided.model.config
    num, vocab, prefix = guided.num, cfg.vocab_size, cfg.cls_token_num
    greedy = is_greedy(guided.opts)
    cache = init_gpt_cache(cfg, guided.rows, max_len=prefix + num + window)
    logits0, cache = guided.prefill(cond[None], cache)
    logits0 = logits0[0]
    codes = jnp.zeros((num + window,), jnp.int32)
    codes = codes.at[0].set(
        categorical(jax.random.fold_in(rng, 0), target_probs(logits0, guided.opts))
    )
    drafts, q = _slide(
        jnp.ones((window, vocab)) / vocab, jnp.int32(window), jax.random.fold_in(rng, 1), vocab
    )
    j = jnp.arange(window)

    def body(carry):
        cache, n, codes, drafts, q, passes = carry
        keys = jax.random.split(jax.random.fold_in(rng, passes + 1))
        inputs = jnp.concatenate([codes[n - 1][None], drafts[:-1]])
        positions = jnp.minimum(prefix + n - 1 + j, prefix + cfg.block_size - 1)
        cache = rewind_cache(cache, prefix + n - 1)
        logits, cache = guided.decode(inputs[None], positions, cache, n + j)
        logits = logits[0]
        p = target_probs(logits, guided.opts)
        a, fix = _verify(rule, p, q, drafts, logits, n + j < num, keys[0], greedy)
        committed = jnp.where(j < a, drafts, fix)
        codes = jax.lax.dynamic_update_slice(codes, committed, (n,))
        shift = jnp.where(a < window, a + 1, window)
        drafts, q = _slide(p, shift, keys[1], vocab)
        return cache, jnp.minimum(n + shift, num), codes, drafts, q, passes + 1

    init = (cache, jnp.int32(1), codes, drafts, q, jnp.int32(1))
    _, _, codes, _, _, passes = jax.lax.while_loop(lambda c: c[1] < num, body, init)
    return codes[:num], passes


def check_window(window: Any) -> None:
    """ValueError unless ``window`` is a positive Python int."""
    if not isinstance(window, int) or window < 1:
        raise ValueError(f"window must be a positive int, got {window!r}")


def jacobi_generate(
    model: GPT,
    params: Any,
    cond: jax.Array,
    rng: jax.Array,
    opts: GPTSamplingOptions,
    window: int,
    rule: AcceptRule = sjd_rule,
) -> tuple[jax.Array, jax.Array]:
    """Traceable speculative Jacobi decoding. cond: labels [B] (or captions [B, Lc, C]).

    Returns codes int32 [B, N] and forward passes per image int32 [B]. Image ``i`` uses
    ``fold_in(rng, i)``, so results do not depend on how the batch is split over devices.
    """
    num = check_options(opts, model.config)
    check_window(window)
    guided = GuidedModel(model, nn.unbox(params), opts, num)
    one = functools.partial(_jacobi_one, guided, rule, window)
    keys = jax.vmap(lambda i: jax.random.fold_in(rng, i))(jnp.arange(jnp.shape(cond)[0]))
    return jax.vmap(one)(cond, keys)


def make_sjd_sampler(
    model_or_cfg: GPT | GPTConfig, *, window: int = 16, **sampling_kwargs: Any
) -> Callable[[Any, jax.Array, jax.Array], tuple[jax.Array, jax.Array]]:
    """A jitted ``(params, labels [B], rng) -> (codes int32 [B, N], forward_passes int32 [B])``
    running SJD with ``window`` draft tokens (``sampling_kwargs``: see ``GPTSamplingOptions``)."""
    model = model_of(model_or_cfg)
    opts = GPTSamplingOptions(**sampling_kwargs)
    check_options(opts, model.config)
    check_window(window)

    def run(params, cond, rng):
        return jacobi_generate(model, params, cond, rng, opts, window)

    return wrap_sampler(model, opts, run)
