"""Tests for jaxar.sampling.logits: temperature, top-k, top-p, CFG combine and schedules."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxar.sampling.logits import (
    apply_temperature,
    cfg_combine,
    cfg_scale_schedule,
    sample_from_logits,
    top_k_filter,
    top_p_filter,
)


def test_top_k_keeps_k_largest():
    logits = jnp.array([[0.1, 3.0, -1.0, 2.0, 0.5], [5.0, 4.0, 3.0, 2.0, 1.0]])
    out = top_k_filter(logits, 2)
    kept = np.isfinite(np.asarray(out))
    np.testing.assert_array_equal(kept, [[0, 1, 0, 1, 0], [1, 1, 0, 0, 0]])
    np.testing.assert_array_equal(np.asarray(out)[kept], np.asarray(logits)[kept])
    np.testing.assert_array_equal(top_k_filter(logits, 0), logits)
    np.testing.assert_array_equal(top_k_filter(logits, 99), logits)
    with pytest.raises(ValueError, match="static"):
        top_k_filter(logits, jnp.int32(2))


def test_top_p_keeps_minimal_nucleus():
    probs = np.array([0.1, 0.5, 0.05, 0.25, 0.1])
    logits = jnp.log(jnp.asarray(probs))[None]
    kept = lambda p: np.isfinite(np.asarray(top_p_filter(logits, p)))[0].astype(int).tolist()
    assert kept(0.5) == [0, 1, 0, 0, 0]  # 0.5 alone reaches 0.5
    assert kept(0.6) == [0, 1, 0, 1, 0]  # 0.5 + 0.25
    assert kept(0.8) == [1, 1, 0, 1, 1]  # 0.75 < 0.8: both 0.1 tie at the cut and are kept
    assert kept(0.01) == [0, 1, 0, 0, 0]  # always the top token
    assert kept(1.0) == [1, 1, 1, 1, 1]
    with pytest.raises(ValueError, match="top_p"):
        top_p_filter(logits, 0.0)


def test_top_p_traced_zero_still_keeps_top_token():
    logits = jnp.log(jnp.array([[0.1, 0.5, 0.05, 0.25, 0.1], [0.7, 0.1, 0.1, 0.05, 0.05]]))
    out = jax.jit(top_p_filter)(logits, jnp.float32(0.0))  # traced: not validated
    kept = np.isfinite(np.asarray(out)).astype(int).tolist()
    assert kept == [[0, 1, 0, 0, 0], [1, 0, 0, 0, 0]]


def test_greedy_is_argmax_for_every_key():
    # ties and near-ties: argmax takes the first maximum; any sampling would spread over them
    logits = jnp.array([[0.0, 0.0, 0.0, 0.0], [1.0, 1.0 + 1e-6, 1.0, -2.0]])
    keys = jax.random.split(jax.random.key(3), 64)
    draws = np.asarray(jax.vmap(lambda k: sample_from_logits(k, logits, temperature=0))(keys))
    np.testing.assert_array_equal(draws, np.broadcast_to(np.argmax(logits, -1), draws.shape))


def test_temperature_and_greedy():
    logits = jnp.array([[1.0, 2.0, 4.0]])
    np.testing.assert_allclose(apply_temperature(logits, 2.0), logits / 2)
    np.testing.assert_allclose(apply_temperature(logits, 0.0), logits / 1e-5, rtol=1e-6)
    with pytest.raises(ValueError, match="temperature"):
        apply_temperature(logits, -1.0)
    assert int(sample_from_logits(jax.random.key(0), logits, temperature=0)[0]) == 2
    # low temperature concentrates, high temperature flattens the empirical distribution
    keys = jax.random.split(jax.random.key(1), 4000)
    draw = jax.vmap(lambda k, t: sample_from_logits(k, logits[0], t), in_axes=(0, None))
    cold, hot = np.asarray(draw(keys, 0.1)), np.asarray(draw(keys, 100.0))
    assert (cold == 2).mean() > 0.99
    assert 0.25 < (hot == 0).mean() < 0.42
    # top-k=1 is greedy regardless of the key
    assert set(np.asarray(jax.vmap(lambda k: sample_from_logits(k, logits[0], 1.0, 1))(keys))) == {
        2
    }


def test_sample_frequencies_follow_softmax():
    logits = jnp.log(jnp.array([0.2, 0.3, 0.5]))
    draws = jax.vmap(lambda k: sample_from_logits(k, logits))(
        jax.random.split(jax.random.key(2), 6000)
    )
    freq = np.bincount(np.asarray(draws), minlength=3) / 6000
    np.testing.assert_allclose(freq, [0.2, 0.3, 0.5], atol=0.03)


def test_cfg_combine_and_schedules():
    cond, uncond = jnp.array([2.0, 0.0]), jnp.array([1.0, 1.0])
    np.testing.assert_allclose(cfg_combine(cond, uncond, 1.0), cond)
    np.testing.assert_allclose(cfg_combine(cond, uncond, 0.0), uncond)
    np.testing.assert_allclose(cfg_combine(cond, uncond, 3.0), [4.0, -2.0])
    assert float(cfg_scale_schedule(5, 10, 4.0)) == 4.0
    lin = [float(cfg_scale_schedule(t, 5, 3.0, "linear")) for t in range(5)]
    np.testing.assert_allclose(lin, [1.0, 1.5, 2.0, 2.5, 3.0])
    interval = [float(cfg_scale_schedule(t, 5, 3.0, interval=1)) for t in range(5)]
    np.testing.assert_allclose(interval, [3.0, 3.0, 3.0, 1.0, 1.0])  # LlamaGen cfg_interval
    with pytest.raises(ValueError, match="schedule"):
        cfg_scale_schedule(0, 5, 2.0, "cosine")


@pytest.mark.parametrize("top_k,top_p", [(3, 1.0), (4, 0.7), (6, 0.5)])
def test_fused_top_k_draw_follows_the_filtered_softmax(top_k, top_p):
    """The fused draw over lax.top_k's candidates has the distribution of
    softmax(top_p_filter(top_k_filter(logits))) and never leaves the kept set."""
    logits = jnp.log(jnp.array([0.02, 0.3, 0.05, 0.15, 0.2, 0.08, 0.12, 0.08]))
    filtered = top_p_filter(top_k_filter(logits[None], top_k), top_p)[0]
    want = np.asarray(jax.nn.softmax(filtered))
    keys = jax.random.split(jax.random.key(5), 20000)
    draws = np.asarray(jax.vmap(lambda k: sample_from_logits(k, logits, 1.0, top_k, top_p))(keys))
    assert set(draws) <= set(np.flatnonzero(want > 0))
    freq = np.bincount(draws, minlength=want.size) / draws.size
    np.testing.assert_allclose(freq, want, atol=0.015)
