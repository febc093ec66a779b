"""MAR's masked autoregressive sampler over continuous tokens, one jitted call.

Start with every token unknown and one random order per image. At step ``k`` of ``num_iter``:

1. one transformer pass over the current tokens (with CFG: the conditional and null-class rows
   in one batch) gives a condition vector ``z`` per token;
2. the number left unknown after the step is ``mask_len = floor(L * cos(pi/2 (k+1)/num_iter))``
   clipped to ``[1, unknown - 1]`` (at the last step, none); the tokens at order ranks
   ``[mask_len, unknown)`` are predicted now;
3. each of them is drawn by the diffusion head: ``num_sampling_steps`` reverse steps (DDPM, or
   DDIM) from Gaussian noise, with MAR's temperature, guided with the scale
   ``1 + (cfg_scale - 1) * (L - mask_len) / L`` (``cfg_schedule="linear"``, MAR's default) or
   ``cfg_scale`` (``"constant"``).

The schedule depends only on ``(L, num_iter)``, so the counts are known when tracing: every
step gathers the predicted tokens into ``max_k n_k`` rows per image (padding rows are computed
and discarded), so the head runs on about ``L / num_iter`` rows per image and step, as MAR's
``z[mask_to_pred]`` does, inside one ``lax.scan``. The result is the flat latents
``[B, h*w, C]`` (``jaxar.generators.mar.unpatchify``) for the tokenizer's decoder.
Forward passes per image: ``num_iter``; diffusion-head calls per image: ``num_iter`` times
the number of sampling steps.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from jaxar.checks import labels_checker
from jaxar.generators.mar import MAR, MARConfig, unpatchify
from jaxar.layers.diffusion import guided_model_fn, make_diffusion, sample_loop
from jaxar.sampling.base import SamplingOptions, jitted_sampler

DIFFUSION_SAMPLERS = ("ddpm", "ddim")


@dataclasses.dataclass(frozen=True)
class MARSamplingOptions(SamplingOptions):
    """The common settings (``temperature`` is MAR's diffusion temperature; top-k / top-p
    have no meaning for continuous tokens and must stay off) plus MAR's own."""

    num_iter: int = 64  # masked-AR steps (MAR's evaluation: 256; 64 is much faster)
    num_sampling_steps: int = 100  # diffusion reverse steps per token
    diffusion_sampler: str = "ddpm"  # "ddim": deterministic (eta 0) over the same steps
    ddim_eta: float = 0.0

    def __post_init__(self):
        super().__post_init__()
        if self.top_k or self.top_p != 1.0:
            raise ValueError("MAR draws continuous tokens: top_k / top_p do not apply")
        if self.num_iter < 1 or self.num_sampling_steps < 1:
            raise ValueError(
                f"num_iter and num_sampling_steps must be >= 1, got {self.num_iter}, "
                f"{self.num_sampling_steps}"
            )
        if self.diffusion_sampler not in DIFFUSION_SAMPLERS:
            raise ValueError(f"diffusion_sampler must be one of {DIFFUSION_SAMPLERS}")
        if self.ddim_eta < 0:
            raise ValueError(f"ddim_eta must be >= 0, got {self.ddim_eta}")


@dataclasses.dataclass(frozen=True)
class RevealSchedule:
    """Per step k: ``known_lo[k]``..``unknown[k]`` order ranks predicted (``count[k]`` of
    them), ``mask_len[k]`` MAR's clipped count (what the CFG ramp uses); ``max_count``."""

    unknown: np.ndarray  # int [K]: unknown tokens before step k
    lo: np.ndarray  # int [K]: first order rank predicted at step k
    count: np.ndarray  # int [K]
    mask_len: np.ndarray  # int [K]
    max_count: int


def reveal_schedule(seq_len: int, num_iter: int) -> RevealSchedule:
    """MAR's cosine reveal schedule (float64 as MAR's numpy computes it)."""
    unknown, lo, count, mask_lens = [], [], [], []
    left = seq_len
    for step in range(num_iter):
        ratio = np.cos(math.pi / 2.0 * (step + 1) / num_iter)
        mask_len = max(1, min(left - 1, int(np.floor(seq_len * ratio))))
        start = 0 if step == num_iter - 1 else mask_len
        unknown.append(left)
        lo.append(min(start, left))
        count.append(max(left - start, 0))
        mask_lens.append(mask_len)
        left = min(start, left)
    return RevealSchedule(
        np.asarray(unknown), np.asarray(lo), np.asarray(count), np.asarray(mask_lens),
        max(1, max(count)),
    )  # fmt: skip


def random_orders(rng: jax.Array, batch: int, length: int) -> jax.Array:
    """One random permutation of ``range(length)`` per row: int32 [B, L]."""
    return jnp.argsort(jax.random.uniform(rng, (batch, length)), axis=-1).astype(jnp.int32)


def cfg_scales(schedule: RevealSchedule, seq_len: int, opts: MARSamplingOptions) -> np.ndarray:
    """The guidance scale of every step (MAR's Muse-style linear ramp or constant)."""
    if opts.cfg_schedule == "linear":
        return 1.0 + (opts.cfg_scale - 1.0) * (seq_len - schedule.mask_len) / seq_len
    return np.full(len(schedule.mask_len), opts.cfg_scale, np.float64)


def generate(
    model: MAR, params: Any, labels: jax.Array, rng: jax.Array, opts: MARSamplingOptions
) -> jax.Array:
    """Traceable sampler: labels int [B] -> tokens float32 [B, L, token_dim]."""
    cfg = model.config
    params = nn.unbox(params)
    batch, length, dim = labels.shape[0], cfg.seq_len, cfg.token_dim
    schedule = reveal_schedule(length, opts.num_iter)
    width = schedule.max_count
    respacing = ("ddim" if opts.diffusion_sampler == "ddim" else "") + str(opts.num_sampling_steps)
    diffusion = make_diffusion(cfg.diffusion_steps, cfg.noise_schedule, respacing=respacing)
    order_rng, loop_rng = jax.random.split(rng)
    orders = random_orders(order_rng, batch, length)
    rank = jnp.argsort(orders, axis=-1)  # rank[b, position] = its place in the order
    rows = jnp.arange(batch)[:, None]
    guided = opts.guided
    both_labels = jnp.concatenate([labels, labels]) if guided else labels
    force_drop = (jnp.arange(2 * batch) >= batch) if guided else None
    xs = {
        "step": jnp.arange(opts.num_iter, dtype=jnp.int32),
        "lo": jnp.asarray(schedule.lo, jnp.int32),
        "count": jnp.asarray(schedule.count, jnp.int32),
        "scale": jnp.asarray(cfg_scales(schedule, length, opts), jnp.float32),
    }

    def step_fn(tokens, x):
        unknown = rank < x["lo"] + x["count"]  # still unknown before this step
        rows_in = jnp.concatenate([tokens, tokens]) if guided else tokens
        mask_in = jnp.concatenate([unknown, unknown]) if guided else unknown
        z = model.apply({"params": params}, rows_in, both_labels, mask_in, force_drop=force_drop)
        slot = jnp.arange(width, dtype=jnp.int32)
        valid = slot[None, :] < x["count"]
        ranks = jnp.minimum(x["lo"] + slot, length - 1)
        positions = jnp.take_along_axis(orders, jnp.broadcast_to(ranks, (batch, width)), axis=1)
        z_cond = jnp.take_along_axis(z[:batch], positions[..., None], axis=1)
        n = batch * width
        step_rng = jax.random.fold_in(loop_rng, x["step"])
        noise_rng, sample_rng = jax.random.split(step_rng)
        noise = jax.random.normal(noise_rng, (n, dim), jnp.float32)

        def head(x_t, t, c):
            out = model.apply({"params": params}, x_t, t, c, method=MAR.head)
            return out.astype(jnp.float32)

        if guided:
            z_null = jnp.take_along_axis(z[batch:], positions[..., None], axis=1)
            model_fn = guided_model_fn(
                head, z_cond.reshape(n, -1), z_null.reshape(n, -1), x["scale"]
            )
        else:
            c = z_cond.reshape(n, -1)
            model_fn = lambda x_t, t: head(x_t, t, c)  # noqa: E731
        drawn = sample_loop(
            diffusion, model_fn, noise, sample_rng, temperature=opts.temperature,
            method=opts.diffusion_sampler, eta=opts.ddim_eta,
        ).reshape(batch, width, dim)  # fmt: skip
        # padding slots write to an extra column that is dropped
        target = jnp.where(valid, positions, length)
        padded = jnp.concatenate([tokens, jnp.zeros((batch, 1, dim), tokens.dtype)], axis=1)
        padded = padded.at[rows, target].set(drawn.astype(tokens.dtype))
        return padded[:, :length], None

    tokens = jnp.zeros((batch, length, dim), jnp.float32)
    tokens, _ = jax.lax.scan(step_fn, tokens, xs)
    return tokens


def make_mar_sampler(cfg: MARConfig, **sampling_kwargs: Any):
    """A jitted ``(params, labels [B], rng) -> flat latents float32 [B, h*w, C]`` (see
    ``MARSamplingOptions``); ``.forward_passes_per_image`` and ``.head_calls_per_image``."""
    model = MAR(cfg)
    opts = MARSamplingOptions(**sampling_kwargs)

    def run(params, labels, rng):
        return unpatchify(generate(model, params, labels, rng, opts), cfg)

    return jitted_sampler(
        run, labels_checker(cfg.num_classes), opts,
        forward_passes_per_image=opts.num_iter,
        head_calls_per_image=opts.num_iter * opts.num_sampling_steps,
    )  # fmt: skip
