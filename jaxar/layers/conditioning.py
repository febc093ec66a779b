"""Condition dropout for classifier-free guidance (CFG), shared by the generators.

In training each row's condition is replaced by the null condition with probability ``prob``;
``force_drop`` (bool [B]) drops rows explicitly (CFG's unconditional branch). The functions are
pure: the module draws the key (``self.make_rng("dropout")``) only when it trains with
``prob > 0`` and passes None otherwise, so the dropout RNG stream is untouched at inference.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp


def condition_drop_mask(
    batch: int,
    prob: float,
    rng: jax.Array | None = None,
    force_drop: jax.Array | None = None,
) -> jax.Array | None:
    """Rows to replace by the null condition: bool [B], or None when no row can be dropped.

    A row drops when ``force_drop`` says so or, given ``rng`` and ``prob > 0``, with
    probability ``prob`` (one uniform draw of shape [B] from ``rng``).
    """
    if not 0.0 <= prob < 1.0:
        raise ValueError(f"condition dropout prob must be in [0, 1), got {prob}")
    drop = None if force_drop is None else jnp.asarray(force_drop, bool)
    if rng is not None and prob > 0:
        random_drop = jax.random.uniform(rng, (batch,)) < prob
        drop = random_drop if drop is None else drop | random_drop
    return drop


def drop_labels(
    labels: jax.Array,
    null_class: int,
    prob: float,
    rng: jax.Array | None = None,
    force_drop: jax.Array | None = None,
) -> jax.Array:
    """Class labels int [B] with dropped rows (see ``condition_drop_mask``) set to
    ``null_class``; returned unchanged when no row can be dropped."""
    drop = condition_drop_mask(jnp.shape(labels)[0], prob, rng, force_drop)
    return labels if drop is None else jnp.where(drop, null_class, labels)
