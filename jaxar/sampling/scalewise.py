"""VAR's scale-by-scale sampling (``autoregressive_infer_cfg``), all on device in one jit.

For every scale k (a static Python loop: scales have different shapes) the model takes all
s_k^2 tokens of the scale in one cached step, attending to the KV cache of earlier scales.
The sampled code map is embedded by the multi-scale quantizer (bicubic-up + Phi) and added to
the running ``f_hat``; ``f_hat`` area-downsampled to s_{k+1} is the next scale's input.

Classifier-free guidance follows VAR: the batch is doubled (conditional rows first, null-class
rows second, both fed the same codes) and scale k uses ``cfg_combine(cond, uncond, w_k)`` with
jaxar's common meaning of the settings (``jaxar.sampling.base``): ``cfg_scale`` 1 = no
guidance, and ``cfg_schedule="linear"`` (VAR's published ramp, the default here) gives
``w_k = 1 + (cfg_scale - 1) * k / (K - 1)``: 1 at the first scale, ``cfg_scale`` at the last.
The original's ``autoregressive_infer_cfg(cfg=c)`` uses ``(1 + t_k) * cond - t_k * uncond``
with ``t_k = c * k / (K - 1)``, which is this with ``cfg_scale = 1 + c`` (VAR's released
setting ``cfg=1.5`` is ``cfg_scale=2.5``). ``cfg_schedule="constant"`` guides every scale by
``cfg_scale``. Top-k / top-p / temperature are ``jaxar.sampling.logits``'s. Scale k draws with
``fold_in(rng, k)``, so a seed gives the same codes on any device count.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxar.checks import labels_checker
from jaxar.generators.var import VAR, VARConfig, init_var_cache
from jaxar.quantizers.multiscale import MultiScaleQuantizer, resize
from jaxar.sampling.base import SamplingOptions
from jaxar.sampling.logits import (
    cfg_combine,
    cfg_scale_schedule,
    sample_from_logits,
)


@dataclasses.dataclass(frozen=True)
class ScalewiseOptions(SamplingOptions):
    """The common settings (``cfg_scale`` 1 = no guidance), VAR's ramp as the default schedule."""

    cfg_schedule: str = "linear"  # VAR's ramp over the scales
    return_logits: bool = False


def var_guidance_scales(
    num_scales: int, cfg_scale: float | jax.Array, schedule: str = "linear"
) -> jax.Array:
    """Per-scale ``cfg_combine`` scales (``linear``: ``1 + (cfg_scale - 1) * k / (K - 1)``,
    VAR's ramp; ``constant``: ``cfg_scale``). -> float32 [K]"""
    if num_scales < 2:
        raise ValueError(f"need at least 2 scales, got {num_scales}")
    steps = jnp.arange(num_scales)
    scales = cfg_scale_schedule(steps, num_scales, cfg_scale, schedule)
    return jnp.broadcast_to(scales, (num_scales,))


def _scale_embedding(quantizer: MultiScaleQuantizer, codes: jax.Array, scale_index: int):
    """The quantizer's contribution of one scale's codes [B, s, s] to f_hat [B, S, S, C]."""
    return quantizer._embed_up(codes, scale_index)


def generate(
    model: VAR,
    quantizer: MultiScaleQuantizer,
    params: dict[str, Any],
    labels: jax.Array,
    rng: jax.Array,
    opts: ScalewiseOptions,
    forced_codes: Sequence[jax.Array] | None = None,
) -> dict[str, Any]:
    """Traceable sampler body.

    params: {"var": VAR params, "quantizer": MultiScaleQuantizer params}; labels: int [B].
    ``forced_codes`` (per-scale [B, s_k, s_k]) replaces the sampled codes (teacher forcing,
    for testing the cached path). Returns {"codes": tuple of int32 [B, s_k, s_k], "f_hat":
    [B, S, S, code_dim], and "logits": tuple of guided float32 [B, s_k^2, V] if requested}.
    """
    cfg = model.config
    var_vars = {"params": nn.unbox(params["var"])}
    q_vars = {"params": nn.unbox(params["quantizer"])}
    batch = labels.shape[0]
    rows = 2 * batch if opts.guided else batch
    if opts.guided:
        labels = jnp.concatenate([labels, jnp.full_like(labels, cfg.null_class)])
    cond = model.apply(var_vars, labels, method=VAR.embed_condition)  # [rows, D]
    guidance = var_guidance_scales(cfg.num_scales, opts.cfg_scale, opts.cfg_schedule)
    cache = init_var_cache(cfg, rows)
    last = cfg.patch_nums[-1]
    f_hat = jnp.zeros((batch, last, last, cfg.code_dim), jnp.float32)
    inputs, codes_out, logits_out = None, [], []
    for k, s in enumerate(cfg.patch_nums):
        logits, cache = model.apply(var_vars, cond, k, inputs, cache, method=VAR.scale_step)
        if opts.guided:
            logits = cfg_combine(logits[:batch], logits[batch:], guidance[k])
        codes = sample_from_logits(
            jax.random.fold_in(rng, k), logits, opts.temperature, opts.top_k, opts.top_p
        ).reshape(batch, s, s)
        if forced_codes is not None:
            codes = jnp.asarray(forced_codes[k], jnp.int32).reshape(batch, s, s)
        f_hat = f_hat + quantizer.apply(q_vars, codes, k, method=_scale_embedding)
        if k + 1 < cfg.num_scales:
            nxt = cfg.patch_nums[k + 1]
            inputs = resize(f_hat, nxt, "area").reshape(batch, nxt * nxt, cfg.code_dim)
            if opts.guided:
                inputs = jnp.concatenate([inputs, inputs])
        codes_out.append(codes)
        logits_out.append(logits)
    out = {"codes": tuple(codes_out), "f_hat": f_hat}
    if opts.return_logits:
        out["logits"] = tuple(logits_out)
    return out


def make_scalewise_sampler(
    model_or_cfg: VAR | VARConfig,
    quantizer: MultiScaleQuantizer,
    decode_fn: Callable[[dict[str, Any], jax.Array], jax.Array] | None = None,
    **sampling_kwargs: Any,
) -> Callable[[dict[str, Any], jax.Array, jax.Array], dict[str, Any]]:
    """A jitted ``fn(params, labels [B], rng) -> dict`` (see ``generate``; ``sampling_kwargs``
    are ``ScalewiseOptions``). With ``decode_fn(params, f_hat) -> images [B, H, W, C]``
    (traceable, e.g. the tokenizer's decoder reading ``params["tokenizer"]``) the dict also
    holds ``images``, decoded in the same jit. Labels are checked on the host first."""
    model = model_or_cfg if isinstance(model_or_cfg, VAR) else VAR(model_or_cfg)
    cfg = model.config
    opts = ScalewiseOptions(**sampling_kwargs)
    if tuple(quantizer.scales) != tuple(cfg.patch_nums) or quantizer.code_dim != cfg.code_dim:
        raise ValueError(
            f"quantizer scales/code_dim {tuple(quantizer.scales)}/{quantizer.code_dim} do not "
            f"match VAR patch_nums/code_dim {cfg.patch_nums}/{cfg.code_dim}"
        )

    def run(params, labels, rng):
        out = generate(model, quantizer, params, labels, rng, opts)
        if decode_fn is not None:
            out["images"] = decode_fn(params, out["f_hat"])
        return out

    jitted = jax.jit(run)

    check = labels_checker(cfg.num_classes)

    def sampler(params, labels, rng):
        if not isinstance(params, dict) or not {"var", "quantizer"} <= set(params):
            raise ValueError("params must be a dict with 'var' and 'quantizer' entries")
        check(labels)
        return jitted(params, jnp.asarray(labels), rng)

    sampler.jitted = jitted
    sampler.check = check
    sampler.run = run  # the traceable body, for jaxar.sampling.base.Sampler
    sampler.options = opts
    return sampler
