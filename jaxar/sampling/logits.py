"""Pure sampling rules on logits [..., V]: temperature, top-k, top-p, classifier-free guidance.

Filters set removed entries to ``-inf`` so that ``jax.random.categorical`` never picks them.
Integer/float hyperparameters that change shapes (``top_k``) must be static Python values;
``temperature``, ``top_p`` and CFG scales may be traced.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np

CFG_SCHEDULES = ("constant", "linear")


def apply_temperature(logits: jax.Array, temperature: float | jax.Array) -> jax.Array:
    """``logits / max(temperature, 1e-5)`` as in LlamaGen. logits: [..., V]."""
    if isinstance(temperature, int | float) and temperature < 0:
        raise ValueError(f"temperature must be >= 0, got {temperature}")
    return logits / jnp.maximum(jnp.asarray(temperature, logits.dtype), 1e-5)


def top_k_filter(logits: jax.Array, top_k: int) -> jax.Array:
    """Keeps the ``top_k`` largest logits per row (ties at the k-th value are kept).

    ``top_k <= 0`` or ``>= V`` keeps everything. logits: [..., V].
    """
    if not isinstance(top_k, int):
        raise ValueError(f"top_k must be a static Python int, got {type(top_k).__name__}")
    if top_k <= 0 or top_k >= logits.shape[-1]:
        return logits
    kth = jax.lax.top_k(logits, top_k)[0][..., -1:]  # [..., 1]
    return jnp.where(logits < kth, -jnp.inf, logits)


def _check_top_p(top_p: float | jax.Array) -> bool:
    """Whether the nucleus filter has work to do (a static ``top_p >= 1`` keeps everything)."""
    if isinstance(top_p, int | float):
        if not 0.0 < top_p <= 1.0:
            raise ValueError(f"top_p must be in (0, 1], got {top_p}")
        return top_p < 1.0
    return True


def _nucleus_cutoff(sorted_logits: jax.Array, top_p: float | jax.Array) -> jax.Array:
    """The smallest kept logit [..., 1] of descending ``sorted_logits`` [..., K]: the fewest
    most likely entries whose mass reaches ``top_p`` (always the top one)."""
    probs = jax.nn.softmax(sorted_logits.astype(jnp.float32), axis=-1)
    mass_before = jnp.cumsum(probs, axis=-1) - probs  # exclusive cumulative mass
    keep = (mass_before < top_p).at[..., 0].set(True)
    return jnp.min(jnp.where(keep, sorted_logits, jnp.inf), axis=-1, keepdims=True)


def top_p_filter(logits: jax.Array, top_p: float | jax.Array) -> jax.Array:
    """Nucleus filter: keeps the smallest set of most likely tokens whose probability mass
    reaches ``top_p`` (always at least the top token). ``top_p >= 1`` keeps everything."""
    if not _check_top_p(top_p):
        return logits
    sorted_logits = jnp.sort(logits, axis=-1)[..., ::-1]  # descending
    cutoff = _nucleus_cutoff(sorted_logits, top_p)
    return jnp.where(logits < cutoff, -jnp.inf, logits)


def cfg_combine(cond: jax.Array, uncond: jax.Array, scale: float | jax.Array) -> jax.Array:
    """Classifier-free guidance: ``uncond + scale * (cond - uncond)`` (scale 1 = cond)."""
    return uncond + scale * (cond - uncond)


def cfg_scale_schedule(
    step: int | jax.Array,
    total: int,
    scale: float | jax.Array,
    kind: str = "constant",
    interval: int = -1,
) -> jax.Array:
    """Guidance scale for token ``step`` of ``total``.

    kind="constant": ``scale`` everywhere (LlamaGen). kind="linear": ramps from 1 at the first
    token to ``scale`` at the last (``1 + (scale - 1) * step / (total - 1)``).
    ``interval > -1`` (LlamaGen's ``cfg_interval``) turns guidance off (scale 1) for tokens
    ``step > interval + 1``; tokens 0..interval+1 keep it.
    """
    if kind not in CFG_SCHEDULES:
        raise ValueError(f"cfg schedule must be one of {CFG_SCHEDULES}, got {kind!r}")
    step = jnp.asarray(step, jnp.float32)
    scale = jnp.asarray(scale, jnp.float32)
    if kind == "linear":
        scale = 1.0 + (scale - 1.0) * step / max(total - 1, 1)
    if interval > -1:
        scale = jnp.where(step > interval + 1, 1.0, scale)
    return scale


def sample_from_logits(
    rng: jax.Array,
    logits: jax.Array,
    temperature: float | jax.Array = 1.0,
    top_k: int = 0,
    top_p: float | jax.Array = 1.0,
) -> jax.Array:
    """Draws token ids int32 [...] from logits [..., V] after temperature, top-k, top-p.

    ``temperature == 0`` (a static number) means greedy argmax. With ``0 < top_k < V`` the
    draw is fused over the ``top_k`` candidates of ``lax.top_k`` (already sorted, so top-p
    needs no sort over V and no [..., V] mask is written): the same distribution as
    ``top_p_filter(top_k_filter(...))`` except that ties at the k-th logit keep exactly k.
    """
    if isinstance(temperature, int | float) and temperature == 0:
        return jnp.argmax(logits, axis=-1).astype(jnp.int32)
    logits = apply_temperature(logits.astype(jnp.float32), temperature)
    if not isinstance(top_k, int):
        raise ValueError(f"top_k must be a static Python int, got {type(top_k).__name__}")
    if 0 < top_k < logits.shape[-1]:
        values, ids = jax.lax.top_k(logits, top_k)  # [..., k], descending
        if _check_top_p(top_p):
            values = jnp.where(values < _nucleus_cutoff(values, top_p), -jnp.inf, values)
        pick = jax.random.categorical(rng, values, axis=-1)
        return jnp.take_along_axis(ids, pick[..., None], axis=-1)[..., 0].astype(jnp.int32)
    logits = top_p_filter(logits, top_p)
    return jax.random.categorical(rng, logits, axis=-1).astype(jnp.int32)


def check_sampling_settings(
    cfg_schedule: str,
    temperature: float,
    top_k: int,
    top_p: float,
    cfg_scale: float = 1.0,
) -> None:
    """The checks every sampler's options share; raises ValueError naming the bad field and
    its accepted values. NaN and infinities are rejected (``--cfg_scale nan`` would otherwise
    sample from NaN logits)."""
    if cfg_schedule not in CFG_SCHEDULES:
        raise ValueError(f"cfg_schedule must be one of {CFG_SCHEDULES}, got {cfg_schedule!r}")
    if isinstance(top_k, bool) or not isinstance(top_k, int | np.integer) or top_k < 0:
        raise ValueError(f"top_k must be an int >= 0 (0 = no top-k), got {top_k!r}")
    ranges = {
        "cfg_scale": (cfg_scale, "a finite number >= 0", lambda v: v >= 0.0),
        "temperature": (temperature, "a finite number >= 0 (0 = greedy)", lambda v: v >= 0.0),
        "top_p": (top_p, "a number in (0, 1]", lambda v: 0.0 < v <= 1.0),
    }
    for name, (value, accepted, ok) in ranges.items():
        if isinstance(value, jax.core.Tracer):
            continue  # traced values are checked by whoever made them
        number = float(np.asarray(value))
        if not (math.isfinite(number) and ok(number)):
            raise ValueError(f"{name} must be {accepted}, got {value!r}")
