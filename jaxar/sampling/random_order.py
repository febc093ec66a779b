"""RandAR sampling in raster or random order with parallel decoding, one jitted call.

RandAR decodes ``n_k`` tokens at step ``k`` (``parallel_decoding_schedule``: a cosine ramp
from 1 token to many, ``num_inference_steps`` forward passes in all; ``block_size`` steps is
plain one-token-a-step decoding). Step ``k`` feeds, after the cache, the tokens drawn at step
``k - 1`` interleaved with their position instructions, then the ``n_k`` position
instructions to query::

    [x(s), p(s+1), x(s+1), ..., p(s+n-1), x(s+n-1), p(s'), ..., p(s'+n'-1)]

starting at the cache slot just after ``p(s)``: the query slots written at step ``k - 1``
beyond ``p(s)`` are overwritten, so the cache always holds the training sequence
``[cls, p, x, p, x, ...]``. The first query of a step sees exactly the training context; later
queries of the same step see the earlier queries' position tokens instead of their tokens (as
in RandAR). Steps have different widths, so every step is padded to the widest (padding sits
at the end, is never attended to by real entries, and is overwritten or masked later); the
per-step layout is a static table and the loop is one ``lax.scan`` carrying the KV cache.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from jaxar.checks import labels_checker
from jaxar.generators.randar import (
    RandAR,
    RandARConfig,
    check_order,
    init_randar_cache,
    random_orders,
)
from jaxar.layers.caches import set_cache_index
from jaxar.sampling.base import SamplingOptions, jitted_sampler
from jaxar.sampling.logits import (
    cfg_combine,
    cfg_scale_schedule,
    sample_from_logits,
)

ORDERS = ("random", "raster")
KIND_PAD, KIND_TOKEN, KIND_POSITION = 0, 1, 2


def parallel_decoding_schedule(num_steps: int, block_size: int) -> tuple[int, ...]:
    """Tokens decoded at each step (RandAR's cosine rule); sums to ``block_size``.

    After step k (0-based) about ``(1 - cos(pi/2 (k + 1) / T)) L + 1`` tokens are done; every
    step decodes at least one token, the first exactly one.
    """
    if not 1 <= num_steps <= block_size:
        raise ValueError(f"num_steps must be in [1, {block_size}], got {num_steps}")
    counts, done, current = [], 0, 1
    while done < block_size:
        counts.append(current)
        target = int(
            (1.0 - math.cos(math.pi / 2.0 * (len(counts) + 1) / num_steps)) * block_size + 1
        )
        target = min(target, block_size)
        nxt = max(target - done - current, 1)
        done += current
        current = min(nxt, block_size - done)
    return tuple(counts)


@dataclasses.dataclass(frozen=True)
class RandomOrderOptions(SamplingOptions):
    """The common settings (``cfg_schedule="linear"`` ramps with the number decoded) plus
    RandAR's own."""

    order: str = "random"  # "random": a fresh permutation per image; "raster"
    num_inference_steps: int | None = None  # None: cfg.num_inference_steps
    return_logits: bool = False

    def __post_init__(self):
        super().__post_init__()
        if self.order not in ORDERS:
            raise ValueError(f"order must be one of {ORDERS}, got {self.order!r}")


@dataclasses.dataclass(frozen=True)
class StepTables:
    """Static per-step layout for steps 1..K-1 (numpy): kinds/index [K-1, W] (entry kind and
    order index), query_slot/query_index [K-1, Q], cache_index/start [K-1]."""

    counts: tuple[int, ...]
    kinds: np.ndarray
    index: np.ndarray
    query_slot: np.ndarray
    query_index: np.ndarray
    cache_index: np.ndarray
    start: np.ndarray
    cache_len: int


def step_tables(counts: tuple[int, ...]) -> StepTables:
    """Builds the padded step layouts for a schedule (see module docstring)."""
    length, steps = sum(counts), len(counts)
    starts = np.concatenate([[0], np.cumsum(counts)[:-1]]).astype(np.int32)
    width = max([2 * counts[k - 1] - 1 + counts[k] for k in range(1, steps)], default=1)
    queries = max(counts)
    kinds = np.zeros((max(steps - 1, 0), width), np.int32)
    index = np.zeros_like(kinds)
    query_slot = np.zeros((max(steps - 1, 0), queries), np.int32)
    query_index = np.full_like(query_slot, length)  # out of range: dropped
    for k in range(1, steps):
        prev, n_prev, n = starts[k - 1], counts[k - 1], counts[k]
        entries = [(KIND_TOKEN, prev)]
        for i in range(1, n_prev):
            entries += [(KIND_POSITION, prev + i), (KIND_TOKEN, prev + i)]
        entries += [(KIND_POSITION, starts[k] + i) for i in range(n)]
        kinds[k - 1, : len(entries)] = [e[0] for e in entries]
        index[k - 1, : len(entries)] = [e[1] for e in entries]
        query_slot[k - 1, :n] = 2 * n_prev - 1 + np.arange(n)
        query_index[k - 1, :n] = starts[k] + np.arange(n)
    cache_index = (2 * starts[:-1] + 2).astype(np.int32)  # slot of x(s_{k-1})
    cache_len = int(max([1 + counts[0]] + [c + width for c in cache_index]))
    return StepTables(
        counts, kinds, index, query_slot, query_index, cache_index, starts[1:], cache_len
    )


def _orders(opts: RandomOrderOptions, rng: jax.Array, batch: int, length: int) -> jax.Array:
    if opts.order == "raster":
        return jnp.broadcast_to(jnp.arange(length, dtype=jnp.int32), (batch, length))
    return random_orders(rng, batch, length)


def _apply(model, params, method, *args):
    return model.apply({"params": params}, *args, method=method)


def generate(
    model: RandAR,
    params: Any,
    labels: jax.Array,
    rng: jax.Array,
    opts: RandomOrderOptions,
    order: jax.Array | None = None,
) -> jax.Array | tuple[jax.Array, jax.Array]:
    """Traceable sampler: labels [B] -> codes int32 [B, L] in raster layout.

    ``order`` [B, L] (grid positions in generation order) defaults to ``opts.order``. With
    ``opts.return_logits`` also returns the guided logits [B, L, V] in generation order."""
    cfg = model.config
    params = nn.unbox(params)
    length, batch = cfg.block_size, labels.shape[0]
    counts = parallel_decoding_schedule(opts.num_inference_steps or cfg.num_inference_steps, length)
    tables = step_tables(counts)
    order_rng, rng = jax.random.split(rng)
    if order is None:
        order = _orders(opts, order_rng, batch, length)
    order = jnp.asarray(order, jnp.int32)
    rows = 2 * batch if opts.guided else batch
    row_order = jnp.concatenate([order, order]) if opts.guided else order
    if opts.guided:
        cond = model.apply(
            {"params": params}, jnp.concatenate([labels, labels]),
            force_drop=jnp.arange(rows) >= batch, method=RandAR.embed_condition,
        )  # fmt: skip
    else:
        cond = _apply(model, params, RandAR.embed_condition, labels)  # [R, 1, D]
    instructions = _apply(model, params, RandAR.position_instructions, row_order)  # [R, L, D]
    cache = init_randar_cache(cfg, rows, tables.cache_len)
    result = jnp.zeros((batch, length), jnp.int32)
    all_logits = jnp.zeros((batch, length, cfg.vocab_size), jnp.float32)

    def pick(out_logits, slots, index, start, step, result, all_logits):
        logits = jnp.take(out_logits, slots, axis=1)  # [R, Q, V]
        if opts.guided:
            scale = cfg_scale_schedule(start, length + 1, opts.cfg_scale, opts.cfg_schedule)
            logits = cfg_combine(logits[:batch], logits[batch:], scale)
        tokens = sample_from_logits(
            jax.random.fold_in(rng, step), logits, opts.temperature, opts.top_k, opts.top_p
        )
        result = result.at[:, index].set(tokens, mode="drop")
        if opts.return_logits:
            all_logits = all_logits.at[:, index].set(logits, mode="drop")
        return result, all_logits

    # step 0: [cls, p(0), ..., p(n0 - 1)]
    n0 = counts[0]
    h = jnp.concatenate([cond, instructions[:, :n0]], axis=1)
    rope_rows = jnp.concatenate([jnp.zeros((rows, 1), jnp.int32), row_order[:, :n0] + 1], axis=1)
    out, cache = _apply(model, params, RandAR.run, h, rope_rows, cache)
    result, all_logits = pick(out, jnp.arange(1, 1 + n0), jnp.arange(n0), 0, 0, result, all_logits)

    def step(carry, xs):
        cache, result, all_logits = carry
        kinds, index, slots, q_index, cache_index, start, k = xs
        fed = jnp.concatenate([result, result]) if opts.guided else result
        tok = _apply(model, params, RandAR.embed_tokens, jnp.take(fed, index, axis=1))
        pos = jnp.take(instructions, index, axis=1)
        h = jnp.where((kinds == KIND_TOKEN)[None, :, None], tok, pos)
        h = jnp.where((kinds == KIND_PAD)[None, :, None], 0.0, h)
        cache = set_cache_index(cache, cache_index)
        out, cache = _apply(
            model, params, RandAR.run, h, jnp.take(row_order, index, axis=1) + 1, cache
        )
        result, all_logits = pick(out, slots, q_index, start, k, result, all_logits)
        return (cache, result, all_logits), None

    xs = (
        tables.kinds, tables.index, tables.query_slot, tables.query_index,
        tables.cache_index, tables.start, np.arange(1, len(counts), dtype=np.int32),
    )  # fmt: skip
    if len(counts) > 1:
        (_, result, all_logits), _ = jax.lax.scan(step, (cache, result, all_logits), xs)
    rows_index = jnp.arange(batch)[:, None]
    codes = jnp.zeros_like(result).at[rows_index, order].set(result)
    return (codes, all_logits) if opts.return_logits else codes


def make_randar_sampler(
    cfg: RandARConfig,
    decode_fn: Callable[[jax.Array], jax.Array] | None = None,
    **sampling_kwargs: Any,
) -> Callable[[Any, jax.Array, jax.Array], Any]:
    """A jitted ``(params, labels [B], rng) -> codes int32 [B, L]`` (raster layout); see
    ``RandomOrderOptions`` for ``sampling_kwargs``. ``decode_fn`` (codes [B, h, w] -> images)
    is applied inside the same jit. ``sampler.forward_passes_per_image`` = number of steps."""
    model = RandAR(cfg)
    opts = RandomOrderOptions(**sampling_kwargs)
    steps = opts.num_inference_steps or cfg.num_inference_steps
    counts = parallel_decoding_schedule(steps, cfg.block_size)

    def run(params, labels, rng):
        out = generate(model, params, labels, rng, opts)
        if decode_fn is None:
            return out
        codes = out[0] if opts.return_logits else out
        return decode_fn(codes.reshape(-1, cfg.grid_size, cfg.grid_size))

    check = labels_checker(cfg.num_classes)
    return jitted_sampler(run, check, opts, forward_passes_per_image=len(counts))


__all__ = [
    "RandomOrderOptions",
    "check_order",
    "generate",
    "make_randar_sampler",
    "parallel_decoding_schedule",
    "step_tables",
]
