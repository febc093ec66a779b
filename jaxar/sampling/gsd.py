"""Grouped Speculative Decoding (GSD, So et al., ICCV 2025) on the SJD loop.

Many image tokens are equally valid at a position, so a draft ``x`` that the target rates low
may still belong to a group of plausible tokens. GSD accepts the draft with the target vs
draft probability of its whole group ``G(x)``:

    accept x with probability  min(1, p(G(x)) / q(G(x))),

and on rejection resamples from ``normalise(max(0, p - q))`` (as SJD). The group is dynamic,
as in the reference code: the tokens ranked within ``rank_radius`` of ``x`` in the target's
logit order (``x`` included), kept only if their target probability is within ``prob_gap`` of
``p(x)`` (reference 0.15) and, when ``embeddings`` [V, D] are given (the tokenizer's codebook
here; the reference uses the LLM's input embeddings), their squared L2 distance to ``x``'s
embedding is at most ``max_sq_distance`` (reference 0.5 on its embedding scale). The
reference takes ranks ``[r(x) - 7, r(x) + 7)``; we use the symmetric ``[r(x) - R, r(x) + R]``.

Groups of size 1 (``rank_radius=0``) give exactly SJD's rule.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jaxar.generators.gpt import GPT, GPTConfig
from jaxar.sampling.accel_common import check_options, wrap_sampler
from jaxar.sampling.autoregressive import GPTSamplingOptions, model_of
from jaxar.sampling.speculative import AcceptRule, check_window, jacobi_generate

_TINY = 1e-12


def token_groups(
    logits: jax.Array,
    target: jax.Array,
    tokens: jax.Array,
    rank_radius: int,
    prob_gap: float,
    embeddings: jax.Array | None = None,
    max_sq_distance: float | None = None,
) -> tuple[jax.Array, jax.Array]:
    """Group of each draft token: (members int [W, 2R+1], in-group mask bool [W, 2R+1]).

    logits, target: [W, V] (ranking and probabilities); tokens: int [W].
    """
    vocab = logits.shape[-1]
    order = jnp.argsort(-logits, axis=-1, stable=True)  # [W, V] best first
    x_logit = jnp.take_along_axis(logits, tokens[:, None], axis=-1)  # [W, 1]
    ids = jnp.arange(vocab)[None]
    rank = jnp.sum((logits > x_logit) | ((logits == x_logit) & (ids < tokens[:, None])), -1)
    offsets = jnp.arange(-rank_radius, rank_radius + 1)[None]
    slot = rank[:, None] + offsets  # [W, 2R+1]
    inside = (slot >= 0) & (slot < vocab)
    members = jnp.take_along_axis(order, jnp.clip(slot, 0, vocab - 1), axis=-1)
    x_p = jnp.take_along_axis(target, tokens[:, None], axis=-1)
    member_p = jnp.take_along_axis(target, members, axis=-1)
    mask = inside & (jnp.abs(member_p - x_p) < prob_gap)
    if embeddings is not None and max_sq_distance is not None:
        diff = embeddings[members] - embeddings[tokens][:, None]  # [W, 2R+1, D]
        mask &= jnp.sum(diff * diff, axis=-1) <= max_sq_distance
    return members, mask | (offsets == 0)  # x itself always belongs


def gsd_rule(
    rank_radius: int = 7,
    prob_gap: float = 0.15,
    embeddings: jax.Array | None = None,
    max_sq_distance: float | None = None,
) -> AcceptRule:
    """The grouped acceptance rule (see module docstring)."""
    if not isinstance(rank_radius, int) or rank_radius < 0:
        raise ValueError(f"rank_radius must be an int >= 0, got {rank_radius!r}")
    if prob_gap <= 0:
        raise ValueError(f"prob_gap must be positive, got {prob_gap}")

    def rule(target, draft, tokens, logits):
        members, mask = token_groups(
            logits, target, tokens, rank_radius, prob_gap, embeddings, max_sq_distance
        )
        group_p = jnp.sum(jnp.where(mask, jnp.take_along_axis(target, members, -1), 0.0), -1)
        group_q = jnp.sum(jnp.where(mask, jnp.take_along_axis(draft, members, -1), 0.0), -1)
        ratio = group_p / jnp.maximum(group_q, _TINY)
        return jnp.minimum(ratio, 1.0), jnp.maximum(target - draft, 0.0)

    return rule


def sq_distance_quantile(embeddings: Any, quantile: float, sample: int = 2048) -> float:
    """A ``max_sq_distance`` on the codebook's own scale: the ``quantile`` of squared L2
    distances between distinct codes (on at most ``sample`` codes). embeddings: [V, D]."""
    emb = np.asarray(embeddings, np.float32)[:sample]
    dist = ((emb[:, None] - emb[None]) ** 2).sum(-1)
    return float(np.quantile(dist[~np.eye(len(emb), dtype=bool)], quantile))


def make_gsd_sampler(
    model_or_cfg: GPT | GPTConfig,
    embeddings: Any = None,
    *,
    rank_radius: int = 7,
    prob_gap: float = 0.15,
    max_sq_distance: float | None = None,
    window: int = 16,
    **sampling_kwargs: Any,
) -> Callable[[Any, jax.Array, jax.Array], tuple[jax.Array, jax.Array]]:
    """A jitted ``(params, labels [B], rng) -> (codes int32 [B, N], forward_passes int32 [B])``.

    embeddings: code embeddings [V, D] for the distance filter (None: no distance filter);
    ``window`` and ``sampling_kwargs`` as in ``make_sjd_sampler``.
    """
    model = model_of(model_or_cfg)
    opts = GPTSamplingOptions(**sampling_kwargs)
    check_options(opts, model.config)
    check_window(window)
    gsd_rule(rank_radius, prob_gap)  # validates
    extra = ()
    if embeddings is not None:
        shape = jnp.shape(embeddings)
        if len(shape) != 2 or shape[0] != model.config.vocab_size:
            raise ValueError(
                f"embeddings must be [{model.config.vocab_size}, D], got shape {shape}"
            )
        extra = (jnp.asarray(embeddings, jnp.float32),)

    def run(params, cond, rng, *emb):
        rule = gsd_rule(rank_radius, prob_gap, emb[0] if emb else None, max_sq_distance)
        return jacobi_generate(model, params, cond, rng, opts, window, rule)

    return wrap_sampler(model, opts, run, *extra)
