"""MaskGIT iterative parallel decoding, one jitted call (``lax.fori_loop`` over T steps).

Start from all-masked tokens. At step ``t`` (0-based) of ``T``:

1. one forward pass over the current tokens (with CFG: conditional and null-class rows in one
   batch, combined by ``cfg_combine``);
2. draw a token at every position (``sample_from_logits``: temperature, top-k, top-p); known
   tokens are kept;
3. with ``ratio = (t + 1) / T`` keep ``n = floor(N0 * mask_ratio(ratio))`` positions masked
   (clipped to ``[1, unknown - 1]``), where ``N0`` is the number masked at the start: the
   newly drawn tokens with the lowest confidence ``log p(token) + choice_temperature *
   (1 - ratio) * gumbel`` are masked again (MaskGIT's ``mask_by_random_topk``).

The result is the tokens drawn at the last step (all positions known). Forward passes per
image: T.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxar.checks import labels_checker
from jaxar.generators.mask_schedule import check_mask_schedule, mask_ratio
from jaxar.generators.maskgit import MaskGIT, MaskGITConfig
from jaxar.sampling.base import SamplingOptions, jitted_sampler
from jaxar.sampling.logits import (
    cfg_combine,
    cfg_scale_schedule,
    sample_from_logits,
)

TEMPERATURE_SCHEDULES = ("constant", "linear")


@dataclasses.dataclass(frozen=True)
class MaskedSamplingOptions(SamplingOptions):
    """The common settings (``cfg_schedule="linear"``: 1 -> cfg_scale over the steps) plus
    MaskGIT's decoding settings (its defaults: 8 steps, choice temperature 4.5)."""

    num_steps: int = 8
    choice_temperature: float = 4.5  # gumbel noise on the confidence, annealed by (1 - t/T)
    temperature_schedule: str = "constant"  # "linear": temperature * (1 - t / T)
    mask_schedule: str = "cosine"

    def __post_init__(self):
        super().__post_init__()
        if self.num_steps < 1:
            raise ValueError(f"num_steps must be >= 1, got {self.num_steps}")
        if self.choice_temperature < 0:
            raise ValueError("choice_temperature must be >= 0")
        if self.temperature_schedule not in TEMPERATURE_SCHEDULES:
            raise ValueError(f"temperature_schedule must be one of {TEMPERATURE_SCHEDULES}")
        check_mask_schedule(self.mask_schedule)


def mask_by_random_topk(
    rng: jax.Array, mask_len: jax.Array, confidence: jax.Array, temperature: jax.Array | float
) -> jax.Array:
    """bool [B, L]: True at the ``mask_len`` [B, 1] lowest ``confidence + temperature * gumbel``
    entries of each row (confidence [B, L] is log-probability; +inf is never masked)."""
    noisy = confidence + temperature * jax.random.gumbel(rng, confidence.shape)
    cut_off = jnp.take_along_axis(jnp.sort(noisy, axis=-1), mask_len, axis=-1)  # [B, 1]
    return noisy < cut_off


def _temperature(opts: MaskedSamplingOptions, step: jax.Array) -> float | jax.Array:
    if opts.temperature_schedule == "constant" or opts.temperature == 0:
        return opts.temperature
    return opts.temperature * (1.0 - step.astype(jnp.float32) / opts.num_steps)


def remask_step(
    rng: jax.Array,
    logits: jax.Array,
    tokens: jax.Array,
    step: jax.Array | int,
    unknown_at_start: jax.Array,
    mask_id: int,
    opts: MaskedSamplingOptions,
) -> tuple[jax.Array, jax.Array]:
    """One MaskGIT update from (guided) logits [B, L, V] for tokens [B, L].

    Returns (next tokens with the least confident new ones masked again [B, L], the drawn
    tokens [B, L] with known tokens kept). ``unknown_at_start``: int [B, 1]."""
    step = jnp.asarray(step, jnp.int32)
    sample_rng, choice_rng = jax.random.split(jax.random.fold_in(rng, step))
    drawn = sample_from_logits(sample_rng, logits, _temperature(opts, step), opts.top_k, opts.top_p)
    unknown = tokens == mask_id
    drawn = jnp.where(unknown, drawn, tokens)
    ratio = (step + 1).astype(jnp.float32) / opts.num_steps
    log_probs = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
    confidence = jnp.take_along_axis(log_probs, drawn[..., None], axis=-1)[..., 0]
    confidence = jnp.where(unknown, confidence, jnp.inf)
    mask_len = jnp.floor(unknown_at_start * mask_ratio(ratio, unknown_at_start, opts.mask_schedule))
    num_unknown = unknown.sum(axis=-1, keepdims=True)
    mask_len = jnp.maximum(1, jnp.minimum(num_unknown - 1, mask_len)).astype(jnp.int32)
    masking = mask_by_random_topk(
        choice_rng, mask_len, confidence, opts.choice_temperature * (1.0 - ratio)
    )
    return jnp.where(masking, mask_id, drawn), drawn


def guided_logits(
    model: MaskGIT,
    params: Any,
    tokens: jax.Array,
    labels: jax.Array,
    step: jax.Array | int,
    opts: MaskedSamplingOptions,
) -> jax.Array:
    """Logits [B, L, V] for tokens [B, L]; with CFG one forward over 2B rows, combined."""
    if not opts.guided:
        return model.apply({"params": params}, tokens, labels)
    batch = tokens.shape[0]
    both = model.apply(
        {"params": params},
        jnp.concatenate([tokens, tokens]),
        jnp.concatenate([labels, labels]),
        force_drop=jnp.arange(2 * batch) >= batch,
    )
    scale = cfg_scale_schedule(step, opts.num_steps, opts.cfg_scale, opts.cfg_schedule)
    return cfg_combine(both[:batch], both[batch:], scale)


def decode_step(
    model: MaskGIT,
    params: Any,
    tokens: jax.Array,
    labels: jax.Array,
    rng: jax.Array,
    step: jax.Array | int,
    opts: MaskedSamplingOptions,
    unknown_at_start: jax.Array | None = None,
) -> tuple[jax.Array, jax.Array, jax.Array]:
    """Forward + re-masking for tokens [B, L] (codes or mask id) at ``step``.

    Returns (next tokens [B, L], drawn tokens [B, L], guided logits float32 [B, L, V])."""
    mask_id = model.config.mask_token_id
    if unknown_at_start is None:
        unknown_at_start = jnp.sum(tokens == mask_id, axis=-1, keepdims=True)
    logits = guided_logits(model, params, tokens, labels, step, opts)
    next_tokens, drawn = remask_step(rng, logits, tokens, step, unknown_at_start, mask_id, opts)
    return next_tokens, drawn, logits


def generate(
    model: MaskGIT, params: Any, labels: jax.Array, rng: jax.Array, opts: MaskedSamplingOptions
) -> jax.Array:
    """Traceable decoder: labels int [B] -> codes int32 [B, L] after ``opts.num_steps`` steps."""
    cfg = model.config
    params = nn.unbox(params)
    batch = labels.shape[0]
    tokens = jnp.full((batch, cfg.block_size), cfg.mask_token_id, jnp.int32)
    unknown_at_start = jnp.full((batch, 1), cfg.block_size, jnp.int32)

    def body(step, carry):
        tokens, _ = carry
        next_tokens, drawn, _ = decode_step(
            model, params, tokens, labels, rng, step, opts, unknown_at_start
        )
        return next_tokens, drawn

    _, drawn = jax.lax.fori_loop(0, opts.num_steps, body, (tokens, tokens))
    return drawn


def make_maskgit_sampler(
    cfg: MaskGITConfig,
    decode_fn: Callable[[jax.Array], jax.Array] | None = None,
    **sampling_kwargs: Any,
) -> Callable[[Any, jax.Array, jax.Array], jax.Array]:
    """A jitted ``(params, labels [B], rng) -> codes int32 [B, L]`` (see
    ``MaskedSamplingOptions`` for ``sampling_kwargs``). With ``decode_fn`` (codes [B, h, w] ->
    images, traceable) it returns images decoded in the same jit."""
    model = MaskGIT(cfg)
    opts = MaskedSamplingOptions(**sampling_kwargs)
    grid = int(round(cfg.block_size**0.5))

    def run(params, labels, rng):
        codes = generate(model, params, labels, rng, opts)
        return codes if decode_fn is None else decode_fn(codes.reshape(-1, grid, grid))

    check = labels_checker(cfg.num_classes)
    return jitted_sampler(run, check, opts, forward_passes_per_image=opts.num_steps)
