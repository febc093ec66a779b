"""MaskGIT mask schedules: the fraction of tokens still masked after a fraction of decoding.

``mask_ratio(ratio, total_unknown, method)`` maps ``ratio`` in [0, 1] (progress through the
decoding steps, or a uniform draw during training) to the fraction of tokens that stay masked.
Every schedule starts at 1 (all masked) and falls to 0; the result is clipped to [1e-6, 1] as
in MaskGIT so that a step never tries to unmask everything at once by rounding.

Methods (MaskGIT's names): ``cosine`` cos(pi/2 r) (the paper's default), ``linear`` 1 - r,
``square`` 1 - r^2, ``cubic`` 1 - r^3, ``sqrt`` 1 - sqrt(r), ``log`` -log2(r) / log2(N),
``exp`` 1 - 2^(-log2(N) (1 - r)) and ``pow<p>`` (e.g. ``pow2.5``) 1 - r^p, where N is the
number of tokens masked at the start.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp

MASK_SCHEDULES = ("cosine", "linear", "square", "cubic", "sqrt", "log", "exp")


def _check_method(method: str) -> float | None:
    """Returns the exponent of a ``pow<p>`` method, None for a named one; ValueError else."""
    if method in MASK_SCHEDULES:
        return None
    if method.startswith("pow"):
        try:
            exponent = float(method[3:])
        except ValueError:
            exponent = -1.0
        if exponent > 0:
            return exponent
    raise ValueError(f"unknown mask schedule {method!r}; known: {MASK_SCHEDULES} or 'pow<p>'")


def check_mask_schedule(method: str) -> None:
    """ValueError unless ``method`` names a schedule."""
    _check_method(method)


def mask_ratio(
    ratio: float | jax.Array, total_unknown: int | jax.Array, method: str = "cosine"
) -> jax.Array:
    """Fraction of tokens still masked at progress ``ratio`` ([...] floats in [0, 1]).

    ``total_unknown`` (tokens masked at the start) is only used by ``log`` and ``exp``.
    Returns float32 [...] clipped to [1e-6, 1].
    """
    exponent = _check_method(method)
    r = jnp.asarray(ratio, jnp.float32)
    n = jnp.asarray(total_unknown, jnp.float32)
    if exponent is not None:
        out = 1.0 - r**exponent
    elif method == "cosine":
        out = jnp.cos(math.pi / 2.0 * r)
    elif method == "linear":
        out = 1.0 - r
    elif method == "square":
        out = 1.0 - r**2
    elif method == "cubic":
        out = 1.0 - r**3
    elif method == "sqrt":
        out = 1.0 - jnp.sqrt(r)
    elif method == "log":
        out = -jnp.log2(r) / jnp.log2(n)
    else:  # exp
        out = 1.0 - jnp.exp2(-jnp.log2(n) * (1.0 - r))
    return jnp.clip(out, 1e-6, 1.0)


def num_masked_for_training(
    rng: jax.Array, batch: int, length: int, method: str = "cosine"
) -> jax.Array:
    """MaskGIT training: per example ``r ~ U(0, 1)``, mask ``ceil(mask_ratio(r) * L)`` tokens.

    Returns int32 [B] in [1, L].
    """
    r = jax.random.uniform(rng, (batch,))
    count = jnp.ceil(mask_ratio(r, length, method) * length).astype(jnp.int32)
    return jnp.clip(count, 1, length)
