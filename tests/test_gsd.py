"""Tests for jaxar.sampling.gsd: groups of size 1 give SJD's rule; larger groups accept more."""

import jax.numpy as jnp
import numpy as np
import pytest
from test_lantern import CODEBOOK, _random_case
from test_speculative import CFG, sampled_sjd_reference

from jaxar.sampling.gsd import gsd_rule, make_gsd_sampler, sq_distance_quantile, token_groups
from jaxar.sampling.speculative import sjd_rule


@pytest.mark.parametrize("radius, emb", [(0, None), (0, CODEBOOK), (5, None)])
def test_size_one_groups_equal_sjd(radius, emb):
    p, q, x = _random_case(3)
    gap = 1e-9 if radius else 0.15  # radius 5 with a tiny probability gap: singleton groups
    rule = gsd_rule(radius, gap, None if emb is None else jnp.asarray(emb), 0.0)
    for got, want in zip(rule(p, q, x, jnp.log(p)), sjd_rule(p, q, x, p)):
        np.testing.assert_allclose(got, want, rtol=1e-6)


def test_groups_follow_rank_probability_and_distance_filters():
    p, q, x = _random_case(4, vocab=CFG.vocab_size)
    logits = jnp.log(p)
    members, mask = token_groups(logits, p, x, 3, 0.05, jnp.asarray(CODEBOOK), 4.0)
    pn, emb = np.asarray(p), CODEBOOK
    for j in range(x.shape[0]):
        order = np.argsort(-pn[j], kind="stable")
        rank = int(np.nonzero(order == int(x[j]))[0][0])
        want = set()
        for r in range(max(rank - 3, 0), min(rank + 4, CFG.vocab_size)):
            t = order[r]
            close = abs(pn[j, t] - pn[j, x[j]]) < 0.05 and ((emb[t] - emb[x[j]]) ** 2).sum() <= 4
            if close or t == x[j]:
                want.add(int(t))
        assert set(np.asarray(members[j])[np.asarray(mask[j])].tolist()) == want


def test_larger_groups_accept_more():
    params, labels, rng, _, sjd_passes = sampled_sjd_reference()
    gsd = make_gsd_sampler(CFG, rank_radius=4, prob_gap=0.15, window=6, temperature=1.0)
    codes, passes = gsd(params, labels, rng)
    assert codes.shape == (8, CFG.block_size)
    assert np.mean(passes) < np.mean(sjd_passes) - 0.5
    assert 0 < sq_distance_quantile(CODEBOOK, 0.1) < sq_distance_quantile(CODEBOOK, 0.9)


def test_bad_inputs_raise():
    with pytest.raises(ValueError, match="rank_radius"):
        make_gsd_sampler(CFG, rank_radius=-1)
    with pytest.raises(ValueError, match="embeddings"):
        make_gsd_sampler(CFG, CODEBOOK[:3])
    with pytest.raises(ValueError, match="window"):
        make_gsd_sampler(CFG, window=0)
