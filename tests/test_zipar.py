"""Tests for jaxar.sampling.zipar: full-row window == raster decoding, smaller windows use
fewer passes, and each query sees exactly the generated part of its raster prefix."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from test_speculative import CFG, random_params

from jaxar.sampling.autoregressive import make_sampler
from jaxar.sampling.zipar import _pass_mask, make_zipar_sampler, zipar_schedule


def test_full_row_window_equals_raster_sampling():
    params, labels = random_params(CFG), jnp.array([0, 3, 7, 2])
    opts = dict(temperature=1.0, cfg_scale=2.0)  # sampled: ZipAR draws code t with fold_in(rng, t)
    plain = make_sampler(CFG, **opts)(params, labels, jax.random.key(2))
    codes, passes = make_zipar_sampler(CFG, window=CFG.grid_size, **opts)(
        params, labels, jax.random.key(2)
    )
    np.testing.assert_array_equal(codes, plain)
    np.testing.assert_array_equal(passes, CFG.block_size)


def test_small_window_greedy_decodes_in_fewer_passes():
    params, labels = random_params(CFG), jnp.array([1, 5])
    plain = np.asarray(make_sampler(CFG, temperature=0.0)(params, labels, jax.random.key(0)))
    codes, passes = make_zipar_sampler(CFG, window=1, temperature=0.0)(
        params, labels, jax.random.key(0)
    )
    codes = np.asarray(codes)
    np.testing.assert_array_equal(passes, zipar_schedule(CFG.grid_size, 1).forward_passes)
    np.testing.assert_array_equal(codes[:, : CFG.grid_size], plain[:, : CFG.grid_size])  # row 0
    assert codes.min() >= 0 and codes.max() < CFG.vocab_size


def test_pass_counts_shrink_with_the_window():
    counts = [zipar_schedule(16, w).forward_passes for w in (16, 8, 4, 2, 1)]
    assert counts[0] == 256 and all(a > b for a, b in zip(counts, counts[1:]))
    assert zipar_schedule(24, 1).forward_passes / 576 < 0.13  # the paper's "up to 91% fewer"


@pytest.mark.parametrize("grid, window", [(4, 2), (5, 1), (6, 3)])
def test_every_code_once_and_queries_see_their_generated_raster_prefix(grid, window):
    plan, prefix = zipar_schedule(grid, window), 1
    predicted = np.concatenate([[0], plan.target[plan.target >= 0]])
    assert sorted(predicted.tolist()) == list(range(grid * grid))  # each code exactly once
    done = {0}  # codes generated before the current pass (code 0 from the prefill)
    for s in range(plan.feed_code.shape[0]):
        mask = np.asarray(_pass_mask(plan, prefix, jnp.int32(s)))
        base, real, width = prefix + plan.base[s], plan.num_real[s], plan.feed_code.shape[1]
        fed = set(plan.slot_pos[: plan.base[s] + real].tolist())  # kept slots so far
        for i in range(width):
            code, pos = plan.feed_code[s, i], plan.feed_pos[s, i]
            if i < real:
                assert code == pos and code in done  # real feeds: generated tokens in place
            kept = np.nonzero(mask[i, prefix : base + real])[0]
            assert set(plan.slot_pos[kept].tolist()) == {c for c in fed if c <= pos}
            assert mask[i, :prefix].all()
            transient = np.zeros(width - real, bool)  # proxy/padding keys: only their own query
            if i >= real:
                transient[i - real] = True
            np.testing.assert_array_equal(mask[i, base + real : base + width], transient)
        done |= set(plan.target[s][plan.target[s] >= 0].tolist())


def test_bad_inputs_raise():
    with pytest.raises(ValueError, match="window"):
        make_zipar_sampler(CFG, window=CFG.grid_size + 1)
    with pytest.raises(ValueError, match="num_tokens"):
        make_zipar_sampler(CFG, window=2, num_tokens=5)
