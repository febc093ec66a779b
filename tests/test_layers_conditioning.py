"""CFG condition dropout helpers (jaxar.layers.conditioning)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxar.layers.conditioning import condition_drop_mask, drop_labels

LABELS = jnp.arange(8, dtype=jnp.int32) % 5
NULL = 5


def test_nothing_dropped_without_rng_or_force():
    assert condition_drop_mask(8, 0.5) is None
    assert drop_labels(LABELS, NULL, 0.5) is LABELS
    assert drop_labels(LABELS, NULL, 0.0, jax.random.PRNGKey(0)) is LABELS  # prob 0: no draw


def test_force_drop_replaces_exactly_the_forced_rows():
    force = jnp.array([True, False] * 4)
    out = np.asarray(drop_labels(LABELS, NULL, 0.3, None, force))
    np.testing.assert_array_equal(out, np.where(np.asarray(force), NULL, np.asarray(LABELS)))


def test_random_drop_rate_determinism_and_or_with_force():
    labels = jnp.zeros(20000, jnp.int32)
    key = jax.random.PRNGKey(1)
    out = np.asarray(drop_labels(labels, NULL, 0.25, key))
    assert set(np.unique(out)) == {0, NULL}
    assert abs((out == NULL).mean() - 0.25) < 0.02
    np.testing.assert_array_equal(out, np.asarray(drop_labels(labels, NULL, 0.25, key)))
    force = jnp.arange(20000) < 100
    forced = np.asarray(drop_labels(labels, NULL, 0.25, key, force))
    assert (forced[:100] == NULL).all()
    np.testing.assert_array_equal(forced[100:], out[100:])  # same draw, OR-ed with force


@pytest.mark.parametrize("prob", [-0.1, 1.0])
def test_bad_prob_is_rejected(prob):
    with pytest.raises(ValueError, match="prob"):
        drop_labels(LABELS, NULL, prob, jax.random.PRNGKey(0))
