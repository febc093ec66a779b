"""LANTERN relaxed speculative acceptance (Jang et al., ICLR 2025) on the SJD loop.

Image tokens are ambiguous: codes whose codebook vectors are close decode to similar patches.
LANTERN relaxes the acceptance of a draft token ``x`` by lending it the target mass of its
latent neighbourhood ``B_k(x)`` (its ``k`` nearest OTHER codebook entries, nearest first):
with ``c_i`` the cumulative target probability of the ``i`` nearest neighbours, the largest
prefix with ``c_i <= delta`` is used (moving that mass onto ``x`` changes the target by a total
variation of exactly ``c_i <= delta``), and

    accept x with probability  min(1, (p(x) + c_i) / q(x)).

On rejection the token is resampled from ``normalise(max(0, p - q'))`` where ``q'`` is ``q``
with the used neighbourhood zeroed (the reference zeroes the first ``k + 1`` neighbours
whenever any neighbour was used; we zero exactly the ones whose mass was lent).
``delta = 0`` or ``k = 0`` gives exactly SJD's rule (zero-mass neighbours lend nothing and
zeroing their ``q`` leaves ``max(0, p - q)`` unchanged there). The
reference's ``delta > 1`` variant (budget ``(delta - 1) * p(x)``) is not implemented.

The rule is applied inside the Speculative Jacobi loop of ``speculative.py`` (the LANTERN
paper verifies EAGLE-2 drafts; we verify Jacobi drafts, as its authors did for training-free
use). With greedy settings ``p`` is one-hot, so no neighbour mass is available and LANTERN
equals greedy SJD; the relaxation acts only when sampling.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp

from jaxar.generators.gpt import GPT, GPTConfig
from jaxar.sampling.accel_common import check_options, nearest_neighbours, wrap_sampler
from jaxar.sampling.autoregressive import GPTSamplingOptions, model_of
from jaxar.sampling.speculative import AcceptRule, check_window, jacobi_generate, take_token

_TINY = 1e-12


def check_delta(delta: Any) -> None:
    """ValueError unless a concrete ``delta`` lies in [0, 1] (traced values pass)."""
    if isinstance(delta, int | float) and not 0.0 <= delta <= 1.0:
        raise ValueError(f"LANTERN delta must be in [0, 1], got {delta}")


def lantern_rule(neighbours: jax.Array, delta: float | jax.Array) -> AcceptRule:
    """The acceptance rule for a neighbour table int [V, k] (``nearest_neighbours``) and a
    total-variation budget ``delta`` (may be traced)."""
    check_delta(delta)
    neighbours = jnp.asarray(neighbours, jnp.int32)

    def rule(target, draft, tokens, logits):
        del logits
        if neighbours.shape[0] != target.shape[-1]:
            raise ValueError(
                f"neighbour table for {neighbours.shape[0]} codes, vocab is {target.shape[-1]}"
            )
        near = neighbours[tokens]  # [W, k]
        near_p = jnp.take_along_axis(target, near, axis=-1)  # [W, k]
        used = jnp.cumsum(near_p, axis=-1) <= delta  # a prefix: cumsum is non-decreasing
        lent = jnp.sum(jnp.where(used, near_p, 0.0), axis=-1)  # [W]
        ratio = (take_token(target, tokens) + lent) / jnp.maximum(take_token(draft, tokens), _TINY)
        rows = jnp.arange(tokens.shape[0])[:, None]
        near_q = jnp.take_along_axis(draft, near, axis=-1)
        draft_used_zeroed = draft.at[rows, near].set(jnp.where(used, 0.0, near_q))
        return jnp.minimum(ratio, 1.0), jnp.maximum(target - draft_used_zeroed, 0.0)

    return rule


def make_lantern_sampler(
    model_or_cfg: GPT | GPTConfig,
    codebook: Any,
    *,
    k: int = 1000,
    delta: float = 0.1,
    window: int = 16,
    **sampling_kwargs: Any,
) -> Callable[[Any, jax.Array, jax.Array], tuple[jax.Array, jax.Array]]:
    """A jitted ``(params, labels [B], rng) -> (codes int32 [B, N], forward_passes int32 [B])``.

    codebook: the tokenizer's code embeddings [V, D]; ``k`` neighbours (clipped to V - 1;
    the reference's default is 1000) and total-variation budget ``delta`` (reference default
    0.1). ``window`` and ``sampling_kwargs`` as in ``make_sjd_sampler``. The compiled
    ``.jitted(params, labels, rng, neighbours [V, k], delta [])`` takes the budget as an
    argument, so other deltas reuse the compilation.
    """
    model = model_of(model_or_cfg)
    opts = GPTSamplingOptions(**sampling_kwargs)
    check_options(opts, model.config)
    check_window(window)
    shape = jnp.shape(codebook)
    if len(shape) != 2 or shape[0] != model.config.vocab_size:
        raise ValueError(f"codebook must be [{model.config.vocab_size}, D], got shape {shape}")
    if k < 0:
        raise ValueError(f"k must be >= 0, got {k}")
    check_delta(delta)
    table = nearest_neighbours(codebook, min(k, shape[0] - 1))

    def run(params, cond, rng, neighbours, budget):
        rule = lantern_rule(neighbours, budget)
        return jacobi_generate(model, params, cond, rng, opts, window, rule)

    return wrap_sampler(model, opts, run, table, jnp.float32(delta))
