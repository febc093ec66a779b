"""Tests for jaxar.sampling.lantern: reduction to SJD (delta=0, k=0) and relaxed acceptance
(larger delta -> more accepted drafts -> fewer forward passes)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from test_speculative import CFG, sampled_sjd_reference

from jaxar.sampling.accel_common import nearest_neighbours
from jaxar.sampling.lantern import lantern_rule, make_lantern_sampler
from jaxar.sampling.speculative import sjd_rule

CODEBOOK = np.random.default_rng(0).normal(size=(CFG.vocab_size, 4)).astype(np.float32)


def _random_case(seed, width=5, vocab=CFG.vocab_size):
    keys = jax.random.split(jax.random.key(seed), 3)
    p = jax.nn.softmax(2.0 * jax.random.normal(keys[0], (width, vocab)))
    q = jax.nn.softmax(2.0 * jax.random.normal(keys[1], (width, vocab)))
    return p, q, jax.random.randint(keys[2], (width,), 0, vocab)


def test_nearest_neighbours_excludes_self_and_sorts():
    near = nearest_neighbours(CODEBOOK, 5, chunk=7)
    dist = ((CODEBOOK[:, None] - CODEBOOK[None]) ** 2).sum(-1)
    np.fill_diagonal(dist, np.inf)
    np.testing.assert_array_equal(near, np.argsort(dist, axis=1, kind="stable")[:, :5])


@pytest.mark.parametrize("k, delta", [(8, 0.0), (0, 0.5)])
def test_rule_reduces_to_sjd(k, delta):
    p, q, x = _random_case(1)
    rule = lantern_rule(nearest_neighbours(CODEBOOK, k), delta)
    for got, want in zip(rule(p, q, x, p), sjd_rule(p, q, x, p)):
        np.testing.assert_allclose(got, want, atol=1e-7)


def test_rule_lends_neighbour_mass_within_budget():
    p, q, x = _random_case(2)
    near = nearest_neighbours(CODEBOOK, 8)
    accept, residual = lantern_rule(near, 0.3)(p, q, x, p)
    base, _ = sjd_rule(p, q, x, p)
    assert (accept >= base - 1e-7).all() and (accept > base + 1e-3).any()
    for j in range(5):  # expected: largest neighbour prefix with mass <= 0.3
        mass = np.cumsum(np.asarray(p)[j, near[x[j]]])
        lent = mass[mass <= 0.3].max(initial=0.0)
        want = min(1.0, (p[j, x[j]] + lent) / q[j, x[j]])
        np.testing.assert_allclose(accept[j], want, rtol=1e-5)
    assert (residual >= 0).all()


def test_delta_zero_equals_sjd_and_larger_delta_accepts_more():
    params, labels, rng, sjd_codes, sjd_passes = sampled_sjd_reference()
    lantern = make_lantern_sampler(CFG, CODEBOOK, k=8, delta=0.0, window=6, temperature=1.0)
    codes, passes = lantern(params, labels, rng)
    np.testing.assert_array_equal(codes, sjd_codes)
    np.testing.assert_array_equal(passes, sjd_passes)
    table = nearest_neighbours(CODEBOOK, 8)
    _, relaxed = lantern.jitted(params, labels, rng, table, jnp.float32(0.4))
    assert np.mean(relaxed) < np.mean(sjd_passes) - 0.5


def test_bad_inputs_raise():
    with pytest.raises(ValueError, match="codebook"):
        make_lantern_sampler(CFG, CODEBOOK[:5])
    with pytest.raises(ValueError, match="delta"):
        make_lantern_sampler(CFG, CODEBOOK, delta=1.5)
    with pytest.raises(ValueError, match="k must be"):
        nearest_neighbours(CODEBOOK, CFG.vocab_size)
