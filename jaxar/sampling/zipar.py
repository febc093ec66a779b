"""ZipAR next-set decoding (He et al., 2024) for raster-order GPTs, training-free, on device.

Spatially adjacent tokens depend strongly on each other, distant ones weakly, so ZipAR starts
decoding row ``r + 1`` once row ``r`` is ``window`` tokens ahead, and each forward pass then
produces one token for EVERY row in progress. Rules (following the reference code,
``LlamaGen-ZipAR/autoregressive/models/generate_zipar.py``):

* Row 0 is decoded in plain raster order (prefill + ``w - 1`` passes).
* Each pass feeds, for every row ``r`` in progress, its latest token at its raster position;
  the output predicts the row's next token.
* When row ``r >= 1`` holds at least ``window`` tokens (but is not complete), row ``r + 1`` is
  started: its first token is predicted from a query at the position of ``(r, w - 1)`` (the
  last slot of row ``r``, not generated yet), fed with a proxy token: the latest token of row
  ``r - 1``, as the reference does. The proxy is transient: its key/value is visible only to
  itself, and overwritten in the next pass.
* When a row is complete its last token is fed at its own position (in the same pass as the
  other rows); if the next row was not started yet this feed predicts that row's first token
  (exactly raster order), otherwise its output is discarded and it only fills the KV cache.

Attention (the paper's relaxation): a query at raster position ``p`` sees every token already
fed whose raster position is ``<= p``, i.e. the generated part of its raster prefix: earlier
rows only up to how far they have been decoded (``window`` ahead of it and more), plus its own
row's prefix. Tokens not generated yet are masked out (the reference leaves those cache slots
zero-filled but visible, which dilutes attention; we mask them). Key/values are kept from the
pass that fed them.

The KV cache is filled in generation order (the GPT cache is append-only), with each slot's
raster position recorded in a static table; the schedule depends only on the grid and the
window, so it is computed on the host once and the whole decode is ONE ``lax.scan`` over the
passes with a fixed number of feeds per pass (padded). ``window = w`` (a full row) is exactly
raster decoding. Token ``t`` is drawn with ``fold_in(rng, t)`` like the plain sampler, so with
a full-row window even sampled codes equal ``jaxar.sampling.autoregressive``'s.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from jaxar.generators.gpt import GPT, GPTConfig, init_gpt_cache
from jaxar.sampling.accel_common import (
    GuidedModel,
    check_options,
    rewind_cache,
    wrap_sampler,
)
from jaxar.sampling.autoregressive import GPTSamplingOptions, model_of
from jaxar.sampling.logits import sample_from_logits


@dataclasses.dataclass(frozen=True)
class ZipARSchedule:
    """Static decode plan for a ``grid x grid`` image (arrays are numpy, host side).

    Per pass ``s`` (after the prefill) and feed slot ``i`` < ``width``: ``feed_code`` (code whose
    token is fed; -1 = padding), ``feed_pos`` (its raster code index, i.e. where it sits),
    ``target`` (code predicted by the output; -1 = none). ``num_real[s]`` leading slots are
    kept in the cache; the rest (proxy, padding) are transient. ``base[s]`` is the cache slot
    of feed 0 (prefix excluded), ``slot_pos`` the raster code index of every kept cache slot.
    """

    grid: int
    window: int
    feed_code: np.ndarray  # [S, T]
    feed_pos: np.ndarray  # [S, T]
    target: np.ndarray  # [S, T]
    num_real: np.ndarray  # [S]
    base: np.ndarray  # [S]
    slot_pos: np.ndarray  # [L - 1 + T]

    @property
    def forward_passes(self) -> int:
        """Model calls per image, prefill included."""
        return 1 + self.feed_code.shape[0]


def _plan_pass(gen: list[int], started: list[bool], finalised: list[bool], window: int):
    """Feeds of one pass as (real, transient) lists of (feed_code, feed_pos, target)."""
    g = len(gen)
    real, transient = [], []
    for r in range(g):
        if started[r] and 0 < gen[r] < g:  # continue the row
            real.append((r * g + gen[r] - 1, r * g + gen[r] - 1, r * g + gen[r]))
        if gen[r] == g and not finalised[r] and r < g - 1:  # feed the row's last token
            predicts = (r + 1) * g if not started[r + 1] else -1
            real.append((r * g + g - 1, r * g + g - 1, predicts))
        if 1 <= r < g - 1 and started[r] and window <= gen[r] < g and not started[r + 1]:
            proxy = (r - 1) * g + gen[r - 1] - 1  # latest token of the row above
            transient.append((proxy, r * g + g - 1, (r + 1) * g))
    return real, transient


def zipar_schedule(grid: int, window: int) -> ZipARSchedule:
    """The static ZipAR plan (see module docstring) for a square grid."""
    if not isinstance(window, int) or not 1 <= window <= grid:
        raise ValueError(f"window must be an int in [1, {grid}], got {window!r}")
    gen, started, finalised = [1] + [0] * (grid - 1), [True] + [False] * (grid - 1), [False] * grid
    passes = []
    while sum(gen) < grid * grid:
        real, transient = _plan_pass(gen, started, finalised, window)
        for feed, pos, target in real + transient:
            if feed == pos and pos % grid == grid - 1 and gen[pos // grid] == grid:
                finalised[pos // grid] = True
            if target >= 0:
                gen[target // grid] += 1
                started[target // grid] = True
        passes.append((real, transient))
    width = max(len(r) + len(t) for r, t in passes)
    shape = (len(passes), width)
    feed_code, feed_pos, target = (np.full(shape, -1, np.int32) for _ in range(3))
    num_real = np.array([len(r) for r, _ in passes], np.int32)
    for s, (real, transient) in enumerate(passes):
        for i, row in enumerate(real + transient):
            feed_code[s, i], feed_pos[s, i], target[s, i] = row
    base = np.concatenate([[0], np.cumsum(num_real)[:-1]]).astype(np.int32)
    slot_pos = np.full(int(num_real.sum()) + width, -1, np.int32)
    for s in range(len(passes)):
        slot_pos[base[s] : base[s] + num_real[s]] = feed_pos[s, : num_real[s]]
    return ZipARSchedule(grid, window, feed_code, feed_pos, target, num_real, base, slot_pos)


def _pass_mask(plan: ZipARSchedule, prefix: int, s: jax.Array) -> jax.Array:
    """Attention mask bool [T, prefix + len(slot_pos)] of pass ``s`` (see module docstring)."""
    width = plan.feed_code.shape[1]
    slot_pos = jnp.asarray(np.concatenate([np.full(prefix, -1), plan.slot_pos]), jnp.int32)
    slots = jnp.arange(slot_pos.shape[0])
    base = prefix + jnp.asarray(plan.base)[s]
    query_pos = jnp.asarray(plan.feed_pos)[s]  # [T]
    kept = slots[None] < base + jnp.asarray(plan.num_real)[s]
    earlier = slot_pos[None] <= query_pos[:, None]
    own = slots[None] == base + jnp.arange(width)[:, None]
    return (kept & earlier) | own


def _check_full_grid(opts: GPTSamplingOptions, cfg: GPTConfig) -> int:
    num = check_options(opts, cfg)
    if num != cfg.block_size:
        raise ValueError(f"ZipAR decodes whole grids: num_tokens must be {cfg.block_size}")
    return num


def _draw(
    rng: jax.Array, logits: jax.Array, code: jax.Array, opts: GPTSamplingOptions
) -> jax.Array:
    """Code ``code`` of every image from guided logits [B, V] with the plain sampler's rule and
    key ``fold_in(rng, code)``. -> int32 [B]."""
    key = jax.random.fold_in(rng, code)
    return sample_from_logits(key, logits, opts.temperature, opts.top_k, opts.top_p)


def zipar_generate(
    model: GPT, params: Any, cond: jax.Array, rng: jax.Array, opts: GPTSamplingOptions, window: int
) -> tuple[jax.Array, jax.Array]:
    """Traceable ZipAR decode. cond: labels [B] (captions [B, Lc, C]). Returns codes int32
    [B, L] and forward passes per image int32 [B] (equal for all images: a static schedule)."""
    cfg = model.config
    num = _check_full_grid(opts, cfg)
    plan = zipar_schedule(cfg.grid_size, window)
    guided = GuidedModel(model, nn.unbox(params), opts, num)
    prefix, batch = cfg.cls_token_num, jnp.shape(cond)[0]
    cache = init_gpt_cache(cfg, guided.rows * batch, max_len=prefix + plan.slot_pos.shape[0])
    logits0, cache = guided.prefill(cond, cache)
    codes = jnp.zeros((batch, num + 1), jnp.int32)  # column ``num`` absorbs padding writes
    codes = codes.at[:, 0].set(_draw(rng, logits0, jnp.int32(0), opts))
    table = {k: jnp.asarray(getattr(plan, k)) for k in ("feed_code", "feed_pos", "target")}

    def step(carry, s):
        cache, codes = carry
        feed, target = table["feed_code"][s], table["target"][s]  # [T]
        tokens = codes[:, jnp.where(feed >= 0, feed, num)]  # [B, T]
        positions = prefix + jnp.maximum(table["feed_pos"][s], 0)
        code_index = jnp.maximum(target, 0)
        mask = _pass_mask(plan, prefix, s)
        logits, cache = guided.decode(tokens, positions, cache, code_index, mask)
        new = jax.vmap(lambda lg, t: _draw(rng, lg, t, opts), in_axes=(1, 0), out_axes=1)(
            logits, code_index
        )  # [B, T]
        codes = codes.at[:, jnp.where(target >= 0, target, num)].set(new)
        next_index = prefix + jnp.asarray(plan.base)[s] + jnp.asarray(plan.num_real)[s]
        return (rewind_cache(cache, next_index), codes), None

    (_, codes), _ = jax.lax.scan(step, (cache, codes), jnp.arange(plan.feed_code.shape[0]))
    return codes[:, :num], jnp.full((batch,), plan.forward_passes, jnp.int32)


def make_zipar_sampler(
    model_or_cfg: GPT | GPTConfig, *, window: int = 8, **sampling_kwargs: Any
) -> Callable[[Any, jax.Array, jax.Array], tuple[jax.Array, jax.Array]]:
    """A jitted ``(params, labels [B], rng) -> (codes int32 [B, L], forward_passes int32 [B])``
    running ZipAR with ``window`` (1..grid; grid = full raster). ``sampling_kwargs``: see
    ``GPTSamplingOptions``."""
    model = model_of(model_or_cfg)
    opts = GPTSamplingOptions(**sampling_kwargs)
    _check_full_grid(opts, model.config)
    zipar_schedule(model.config.grid_size, window)  # validates

    def run(params, cond, rng):
        return zipar_generate(model, params, cond, rng, opts, window)

    return wrap_sampler(model, opts, run)
