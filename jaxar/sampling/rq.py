"""RQ-Transformer sampling, one jitted call: ``lax.scan`` over positions carrying the spatial
KV cache, with an inner ``lax.scan`` over the code depth carrying the depth KV cache.

Position ``t``: the spatial context ``u_t`` (from the class token for t = 0, else from one
cached spatial step on the code stack of position ``t - 1``) starts the depth transformer,
which draws codes ``0..D-1`` one at a time. With CFG, conditional and null-class rows run in
one batch and both halves are fed the same codes. Forward passes per image: L spatial steps
(prefill + L - 1) and L * D depth steps.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxar.checks import labels_checker
from jaxar.generators.rq_transformer import RQTransformer, RQTransformerConfig, init_rq_caches
from jaxar.sampling.base import SamplingOptions, jitted_sampler
from jaxar.sampling.logits import (
    cfg_combine,
    cfg_scale_schedule,
    sample_from_logits,
)


@dataclasses.dataclass(frozen=True)
class RQSamplingOptions(SamplingOptions):
    """The common settings (guidance ramps with the position index) plus ``return_logits``."""

    return_logits: bool = False


def _apply(model, params, method, *args, **kwargs):
    return model.apply({"params": params}, *args, method=method, **kwargs)


def _depth_decode(model, params, context, rng, position, batch, opts):
    """Draws the D codes of one position from spatial contexts [R, E].

    Returns codes int32 [B, D] and guided logits [B, D, V] (or None)."""
    cfg = model.config
    rows = context.shape[0]
    _, cache = init_rq_caches(cfg, rows)
    scale = cfg_scale_schedule(position, cfg.block_size, opts.cfg_scale, opts.cfg_schedule)
    key = jax.random.fold_in(rng, position)

    def step(carry, depth):
        cache, inputs, running = carry
        logits, cache = _apply(
            model, params, RQTransformer.run_depth, inputs[:, None], depth[None], cache
        )
        logits = logits[:, 0]
        if opts.guided:
            logits = cfg_combine(logits[:batch], logits[batch:], scale)
        code = sample_from_logits(
            jax.random.fold_in(key, depth), logits, opts.temperature, opts.top_k, opts.top_p
        )
        fed = jnp.concatenate([code, code]) if opts.guided else code
        emb = _apply(model, params, RQTransformer.embed_codes, fed[:, None], depth[None])[:, 0]
        running = running + emb if cfg.cumsum_depth_context else emb
        return (cache, running, running), (code, logits if opts.return_logits else None)

    init = (cache, context, jnp.zeros_like(context))
    _, (codes, logits) = jax.lax.scan(step, init, jnp.arange(cfg.code_depth))
    return codes.T, None if logits is None else logits.swapaxes(0, 1)


def generate(
    model: RQTransformer, params: Any, labels: jax.Array, rng: jax.Array, opts: RQSamplingOptions
) -> jax.Array | tuple[jax.Array, jax.Array]:
    """Traceable sampler: labels [B] -> codes int32 [B, L, D] (and logits [B, L, D, V])."""
    cfg = model.config
    params = nn.unbox(params)
    batch = labels.shape[0]
    rows = 2 * batch if opts.guided else batch
    both = jnp.concatenate([labels, labels]) if opts.guided else labels
    force_drop = jnp.arange(rows) >= batch if opts.guided else None
    start = _apply(model, params, RQTransformer.embed_condition, both, force_drop=force_drop)
    spatial_cache, _ = init_rq_caches(cfg, rows)
    context, spatial_cache = _apply(model, params, RQTransformer.run_spatial, start, spatial_cache)

    def position_step(carry, position):
        spatial_cache, context = carry
        codes, logits = _depth_decode(model, params, context[:, 0], rng, position, batch, opts)
        fed = jnp.concatenate([codes, codes]) if opts.guided else codes
        h = _apply(model, params, RQTransformer.spatial_input, fed[:, None], position[None])
        context, spatial_cache = _apply(model, params, RQTransformer.run_spatial, h, spatial_cache)
        return (spatial_cache, context), (codes, logits)

    carry, (codes, logits) = jax.lax.scan(
        position_step, (spatial_cache, context), jnp.arange(cfg.block_size - 1)
    )
    last = jnp.asarray(cfg.block_size - 1)
    last_codes, last_logits = _depth_decode(model, params, carry[1][:, 0], rng, last, batch, opts)
    codes = jnp.concatenate([codes.swapaxes(0, 1), last_codes[:, None]], axis=1)
    if not opts.return_logits:
        return codes
    return codes, jnp.concatenate([logits.swapaxes(0, 1), last_logits[:, None]], axis=1)


def make_rq_sampler(
    cfg: RQTransformerConfig,
    grid: tuple[int, int] | None = None,
    decode_fn: Callable[[jax.Array], jax.Array] | None = None,
    **sampling_kwargs: Any,
) -> Callable[[Any, jax.Array, jax.Array], Any]:
    """A jitted ``(params, labels [B], rng) -> codes int32 [B, h, w, D]`` (``grid`` = (h, w),
    default square). ``decode_fn`` (codes [B, h, w, D] -> images) runs in the same jit."""
    model = RQTransformer(cfg)
    opts = RQSamplingOptions(**sampling_kwargs)
    if grid is None:
        side = int(round(cfg.block_size**0.5))
        grid = (side, side)
    if grid[0] * grid[1] != cfg.block_size:
        raise ValueError(f"grid {grid} does not hold block_size {cfg.block_size} positions")

    def run(params, labels, rng):
        out = generate(model, params, labels, rng, opts)
        codes = out[0] if opts.return_logits else out
        codes = codes.reshape(codes.shape[0], *grid, cfg.code_depth)
        if decode_fn is not None:
            return decode_fn(codes)
        return (codes, out[1]) if opts.return_logits else codes

    check = labels_checker(cfg.num_classes)
    passes = {"spatial": cfg.block_size, "depth": cfg.block_size * cfg.code_depth}
    return jitted_sampler(run, check, opts, forward_passes_per_image=passes)
