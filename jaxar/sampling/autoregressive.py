"""Raster-order autoregressive sampling for LlamaGen-style GPTs, all on device.

One jitted call: prefill the condition prefix into a fixed-size KV cache, then ONE
``lax.scan`` over the remaining tokens that carries the cache (a device pytree) and the last
token. With classifier-free guidance the batch is doubled, conditional rows first and
null-condition rows second (LlamaGen's layout); both halves are fed the same sampled token.
Token ``t`` is drawn with ``fold_in(rng, t)``, so a fixed seed gives the same codes for any
device count or sharding.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxar.checks import check_int_input
from jaxar.generators.gpt import GPT, GPTConfig, init_gpt_cache
from jaxar.sampling.base import (
    SamplingOptions,
    at_precision,
    unscanned_for_decoding,
    with_per_layer_params,
    with_precision,
)
from jaxar.sampling.logits import (
    cfg_combine,
    cfg_scale_schedule,
    sample_from_logits,
)


@dataclasses.dataclass(frozen=True)
class GPTSamplingOptions(SamplingOptions):
    """The common settings plus the GPT's own (hashable, so compiled samplers can be cached)."""

    cfg_interval: int = -1  # LlamaGen: guidance off after this many decode steps (-1: never)
    use_cfg: bool | None = None  # None: guidance iff cfg_scale != 1
    num_tokens: int | None = None  # default: block_size
    return_logits: bool = False
    # the decode scan in this many segments, each reading only the cache slots written by its
    # end (a static length per segment): attention reads ~(1 + 1/n) / 2 of the cache instead of
    # all of it, for n compiled step bodies. 1 = one scan over the full cache.
    decode_segments: int = 1

    def __post_init__(self):
        super().__post_init__()
        if isinstance(self.decode_segments, bool) or not isinstance(self.decode_segments, int):
            raise ValueError(f"decode_segments must be an int >= 1, got {self.decode_segments!r}")
        if self.decode_segments < 1:
            raise ValueError(f"decode_segments must be an int >= 1, got {self.decode_segments}")

    @property
    def guided(self) -> bool:
        if self.use_cfg is not None:
            return self.use_cfg
        return super().guided


def model_of(model_or_cfg: GPT | GPTConfig) -> GPT:
    """A ``GPT`` from a module or its config."""
    if isinstance(model_or_cfg, GPTConfig):
        return GPT(model_or_cfg)
    if isinstance(model_or_cfg, GPT):
        return model_or_cfg
    raise ValueError(f"expected a GPT or GPTConfig, got {type(model_or_cfg).__name__}")


def check_condition(cfg: GPTConfig, cond: Any) -> None:
    """Host-side checks of user conditions (labels must not use the null class)."""
    if cfg.model_type == "c2i":
        check_int_input("labels", cond, 1, cfg.num_classes)
    elif jnp.ndim(cond) != 3:
        raise ValueError(f"t2i captions must be [B, Lc, C], got shape {jnp.shape(cond)}")


def generate(
    model: GPT,
    params: Any,
    cond: jax.Array,
    rng: jax.Array,
    opts: GPTSamplingOptions,
    caption_mask: jax.Array | None = None,
) -> jax.Array | tuple[jax.Array, jax.Array]:
    """Traceable sampler body. cond: labels [B] or captions [B, Lc, C]; ``caption_mask``
    [B, Lc] (t2i, 0 at padded caption tokens; the unconditional CFG rows use it too, as
    LlamaGen's ``generate(emb_masks=...)``).

    Returns codes int32 [B, N] (N = opts.num_tokens or block_size), plus the guided logits
    float32 [B, N, V] (before temperature / filtering) when ``opts.return_logits``.
    """
    cfg = model.config
    params = nn.unbox(params)
    num = opts.num_tokens or cfg.block_size
    batch = jnp.shape(cond)[0]
    guided = opts.guided
    if guided:
        cond = jnp.concatenate([cond, cond], axis=0)
        force_drop = jnp.arange(2 * batch) >= batch  # second half: null condition
        if caption_mask is not None:
            caption_mask = jnp.concatenate([caption_mask, caption_mask], axis=0)
    else:
        force_drop = None
    cache = init_gpt_cache(cfg, cond.shape[0], max_len=cfg.cls_token_num + num)
    logits, cache = model.apply(
        {"params": params}, cond, cache, force_drop=force_drop, caption_mask=caption_mask,
        method=GPT.prefill,
    )  # fmt: skip

    def pick(row_logits, t):  # [rows, V] -> token [B], guided logits [B, V]
        if guided:
            scale = cfg_scale_schedule(t, num, opts.cfg_scale, opts.cfg_schedule, opts.cfg_interval)
            row_logits = cfg_combine(row_logits[:batch], row_logits[batch:], scale)
        token = sample_from_logits(
            jax.random.fold_in(rng, t), row_logits, opts.temperature, opts.top_k, opts.top_p
        )
        return token, row_logits

    first, first_logits = pick(logits, 0)

    def step(carry, t, kv_len):
        cache, token = carry
        fed = jnp.concatenate([token, token]) if guided else token
        positions = jnp.full((1,), cfg.cls_token_num - 1, jnp.int32) + t
        step_logits, cache = model.apply(
            {"params": params}, fed[:, None], positions, cache, caption_mask, kv_len,
            method=GPT.decode_step,
        )  # fmt: skip
        token, guided_logits = pick(step_logits[:, 0], t)
        return (cache, token), (token, guided_logits if opts.return_logits else None)

    carry, outs = (cache, first), []
    for start, stop in decode_segments(1, num, opts.decode_segments):
        # step t writes slot cls_token_num - 1 + t: a segment ending at ``stop`` needs no more
        kv_len = None if opts.decode_segments == 1 else cfg.cls_token_num + stop - 1
        body = functools.partial(step, kv_len=kv_len)
        carry, out = jax.lax.scan(body, carry, jnp.arange(start, stop))
        outs.append(out)
    if not outs:  # one token: nothing to decode after the prefill
        empty = jnp.zeros((0, batch), jnp.int32), jnp.zeros((0, batch, cfg.vocab_size))
        outs = [empty]
    tokens = jnp.concatenate([o[0] for o in outs], axis=0)
    rest_logits = jnp.concatenate([o[1] for o in outs], axis=0) if opts.return_logits else None
    codes = jnp.concatenate([first[:, None], tokens.T], axis=1)
    if not opts.return_logits:
        return codes
    return codes, jnp.concatenate([first_logits[:, None], rest_logits.swapaxes(0, 1)], axis=1)


def decode_segments(start: int, stop: int, count: int) -> list[tuple[int, int]]:
    """``[start, stop)`` split into at most ``count`` contiguous non-empty ranges of near-equal
    length."""
    total = stop - start
    count = max(1, min(count, total))
    bounds = [start + (total * i) // count for i in range(count + 1)]
    return [(a, b) for a, b in zip(bounds[:-1], bounds[1:]) if b > a]


def make_sampler(
    model_or_cfg: GPT | GPTConfig,
    decode_fn: Callable[[jax.Array], jax.Array] | None = None,
    **sampling_kwargs: Any,
) -> Callable[[Any, jax.Array, jax.Array], Any]:
    """A jitted ``(params, labels [B], rng) -> codes int32 [B, N]`` (see ``GPTSamplingOptions``
    for ``sampling_kwargs``); t2i: ``(params, captions [B, Lc, C], rng, caption_mask [B, Lc])``
    (mask optional). With ``decode_fn`` (traceable, codes [B, h, w] -> images) the
    function returns images instead, decoded inside the same jit. ``precision="bfloat16"``
    samples with bfloat16 weights, activations and KV cache (float32 logits, softmax and
    sampling); the caller's params stay float32. The returned function
    checks concrete labels on the host, then calls the compiled sampler (``.jitted``)."""
    opts = GPTSamplingOptions(**sampling_kwargs)
    model = model_of(model_or_cfg)
    stored_cfg = model.config
    decode_cfg = at_precision(unscanned_for_decoding(stored_cfg), opts.precision)
    model = model.clone(config=decode_cfg)
    grid = model.config.grid_size

    def sample_codes(params, cond, rng, caption_mask=None):
        out = generate(model, params, cond, rng, opts, caption_mask)
        if decode_fn is None:
            return out
        codes = out[0] if opts.return_logits else out
        if codes.shape[1] != grid * grid:
            raise ValueError("decode_fn needs a full grid: leave num_tokens at block_size")
        return decode_fn(codes.reshape(codes.shape[0], grid, grid))

    # the same per-layer slicing and cast as every family's Sampler (jaxar.recipes.families)
    run = with_per_layer_params(with_precision(sample_codes, opts.precision), stored_cfg)
    jitted = jax.jit(run)

    def sampler(params, cond, rng, caption_mask=None):
        check_condition(model.config, cond)
        if caption_mask is None:
            return jitted(params, cond, rng)
        if jnp.shape(caption_mask) != jnp.shape(cond)[:2]:
            raise ValueError(
                f"caption_mask must be [B, Lc] = {list(jnp.shape(cond)[:2])}, "
                f"got {jnp.shape(caption_mask)}"
            )
        return jitted(params, cond, rng, jnp.asarray(caption_mask, bool))

    sampler.jitted = jitted
    sampler.run = run  # the traceable body, for jaxar.sampling.base.Sampler
    sampler.check = lambda cond: check_condition(model.config, cond)
    sampler.options = opts
    return sampler


@functools.lru_cache(maxsize=16)
def _cached_sampler(cfg: GPTConfig, opts: GPTSamplingOptions):
    return make_sampler(cfg, **dataclasses.asdict(opts))


def sample(
    model_or_cfg: GPT | GPTConfig,
    params: Any,
    labels: jax.Array,
    rng: jax.Array,
    *,
    cfg_scale: float = 1.0,
    cfg_schedule: str = "constant",
    cfg_interval: int = -1,
    use_cfg: bool | None = None,
    temperature: float = 1.0,
    top_k: int = 0,
    top_p: float = 1.0,
    num_tokens: int | None = None,
    return_logits: bool = False,
    decode_fn: Callable[[jax.Array], jax.Array] | None = None,
    caption_mask: jax.Array | None = None,
    precision: str = "float32",
) -> Any:
    """Samples codes int32 [B, N] for ``labels`` [B] (t2i: captions [B, Lc, C], with an
    optional ``caption_mask`` [B, Lc], 0 at padded caption tokens).

    Compiled samplers are cached per (config, options). ``decode_fn`` (codes [B, h, w] ->
    images) is applied to the result; with ``return_logits`` the result is
    ``(codes_or_images, logits [B, N, V])``.
    """
    model = model_of(model_or_cfg)
    opts = GPTSamplingOptions(
        cfg_scale=cfg_scale, cfg_schedule=cfg_schedule, cfg_interval=cfg_interval,
        use_cfg=use_cfg, temperature=temperature, top_k=top_k, top_p=top_p,
        num_tokens=num_tokens, return_logits=return_logits, precision=precision,
    )  # fmt: skip
    out = _cached_sampler(model.config, opts)(params, labels, rng, caption_mask)
    if decode_fn is None:
        return out
    codes, logits = out if return_logits else (out, None)
    grid = model.config.grid_size
    images = decode_fn(codes.reshape(codes.shape[0], grid, grid))
    return (images, logits) if return_logits else images
