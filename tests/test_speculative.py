"""Tests for jaxar.sampling.speculative (SJD): greedy parity with the plain sampler, forward-pass
counts, and exactness of the output distribution under probabilistic acceptance."""

import functools
import itertools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import stats

from jaxar.generators.gpt import GPT, GPTConfig
from jaxar.sampling.accel_common import target_probs
from jaxar.sampling.autoregressive import GPTSamplingOptions, make_sampler
from jaxar.sampling.speculative import make_sjd_sampler, sjd_rule

CFG = GPTConfig(vocab_size=32, num_layers=1, dim=32, num_heads=2, block_size=16, num_classes=10,
                multiple_of=16, token_dropout=0.0, resid_dropout=0.0, ffn_dropout=0.0)  # fmt: skip
# a 4-token vocabulary and a 2x2 grid: small enough to enumerate every sequence exactly
SMALL = GPTConfig(vocab_size=4, num_layers=1, dim=16, num_heads=2, block_size=4, num_classes=3,
                  multiple_of=16, token_dropout=0.0, resid_dropout=0.0,
                  ffn_dropout=0.0)  # fmt: skip


def random_params(cfg, seed=1, scale=0.3):
    codes, labels = jnp.zeros((1, cfg.block_size), jnp.int32), jnp.zeros((1,), jnp.int32)
    abstract = jax.eval_shape(lambda: GPT(cfg).init(jax.random.key(0), codes, labels))["params"]
    leaves, tree = jax.tree.flatten(nn.unbox(abstract))
    keys = jax.random.split(jax.random.key(seed), len(leaves))
    return tree.unflatten([scale * jax.random.normal(k, x.shape) for k, x in zip(keys, leaves)])


@functools.lru_cache(maxsize=1)
def sampled_sjd_reference():
    """SJD on CFG (random weights) for 8 labels, window 6, temperature 1, key 4: the shared
    reference of the LANTERN and GSD tests -> (params, labels, rng, codes, passes)."""
    params, labels, rng = random_params(CFG), jnp.arange(8) % CFG.num_classes, jax.random.key(4)
    codes, passes = make_sjd_sampler(CFG, window=6, temperature=1.0)(params, labels, rng)
    return params, labels, rng, np.asarray(codes), np.asarray(passes)


def test_greedy_sjd_equals_plain_greedy_with_fewer_passes():
    params = random_params(CFG)
    labels = jnp.array([0, 3, 7, 2, 9, 5])
    opts = dict(temperature=0.0, cfg_scale=2.0)
    plain = make_sampler(CFG, **opts)(params, labels, jax.random.key(0))
    codes, passes = make_sjd_sampler(CFG, window=6, **opts)(params, labels, jax.random.key(3))
    np.testing.assert_array_equal(codes, plain)
    assert len(np.unique(np.asarray(plain))) > 5  # a non-trivial sequence
    passes = np.asarray(passes)
    assert passes.shape == (6,) and (passes <= CFG.block_size).all() and passes.min() >= 2
    assert passes.mean() < CFG.block_size  # some drafts get accepted


def _exact_distribution(params, label, num, opts):
    """Probability of every code sequence of length ``num`` by enumeration [V**num]."""
    seqs = np.array(list(itertools.product(range(SMALL.vocab_size), repeat=num)), np.int32)
    padded = np.pad(seqs, ((0, 0), (0, SMALL.block_size - num)))
    labels = jnp.full((len(seqs),), label)
    logits = GPT(SMALL).apply({"params": params}, jnp.asarray(padded), labels)[:, :num]
    probs = np.asarray(target_probs(logits, opts))  # [S, num, V]
    return np.prod(np.take_along_axis(probs, seqs[..., None], -1)[..., 0], axis=1), seqs


def _chi2_pvalue(observed, probs):
    """Pearson chi-square p-value; cells expecting < 5 samples are pooled."""
    expected = observed.sum() * probs / probs.sum()
    small = expected < 5
    obs = np.append(observed[~small], observed[small].sum())
    exp = np.append(expected[~small], expected[small].sum())
    keep = exp > 0
    return stats.chisquare(obs[keep], exp[keep] * obs.sum() / exp[keep].sum()).pvalue


def test_probabilistic_acceptance_preserves_the_distribution():
    params = random_params(SMALL, seed=2, scale=0.3)
    num, count, label = 3, 12000, 1
    sampler = make_sjd_sampler(SMALL, window=3, num_tokens=num, temperature=1.0)
    codes, passes = sampler(params, jnp.full((count,), label), jax.random.key(7))
    exact, seqs = _exact_distribution(params, label, num, GPTSamplingOptions(temperature=1.0))
    index = np.asarray(codes) @ (SMALL.vocab_size ** np.arange(num - 1, -1, -1))
    observed = np.bincount(index, minlength=len(seqs))
    assert abs(exact.sum() - 1) < 1e-4 and exact.max() < 0.2  # a spread-out target
    assert _chi2_pvalue(observed, exact) > 1e-3
    # the same test detects a wrong distribution (temperature 1.5 instead of 1)
    wrong, _ = _exact_distribution(params, label, num, GPTSamplingOptions(temperature=1.5))
    assert _chi2_pvalue(observed, wrong) < 1e-6
    passes = np.asarray(passes)
    assert passes.min() >= 2 and passes.max() <= num and passes.mean() < num  # drafts accepted


def test_rule_accepts_with_ratio_and_resamples_from_residual():
    p = jnp.array([[0.5, 0.5, 0.0], [0.2, 0.3, 0.5]])
    q = jnp.array([[0.25, 0.75, 0.0], [0.0, 0.0, 1.0]])
    accept, residual = sjd_rule(p, q, jnp.array([1, 2]), p)
    np.testing.assert_allclose(accept, [0.5 / 0.75, 0.5])
    np.testing.assert_allclose(residual, [[0.25, 0, 0], [0.2, 0.3, 0]])


def test_bad_inputs_raise():
    with pytest.raises(ValueError, match="window"):
        make_sjd_sampler(CFG, window=0)
    with pytest.raises(ValueError, match="return_logits"):
        make_sjd_sampler(CFG, return_logits=True)
    with pytest.raises(ValueError, match="num_tokens"):
        make_sjd_sampler(CFG, num_tokens=CFG.block_size + 1)
