"""Tests for the RQ-Transformer: causality, cached spatial+depth decode vs full forward, errors."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxar.generators.rq_transformer import (
    RQTransformer,
    RQTransformerConfig,
    make_rq_task,
    rq_config,
)
from jaxar.sampling.rq import make_rq_sampler
from jaxar.sharding import LOGICAL_AXES

LABELS = jnp.array([0, 4, 9])


def _setup(**overrides):
    cfg = rq_config("RQ-tiny", **overrides)
    batch = {"codes": np.zeros((2, 3, 3, cfg.code_depth), np.int32), "label": np.zeros(2, np.int32)}
    boxed, _ = make_rq_task(cfg).init(jax.random.key(0), batch)
    leaves, tree = jax.tree.flatten(nn.unbox(boxed))
    keys = jax.random.split(jax.random.key(1), len(leaves))
    params = tree.unflatten([0.3 * jax.random.normal(k, x.shape) for k, x in zip(keys, leaves)])
    return cfg, boxed, params


CFG, BOXED, PARAMS = _setup()


def test_full_forward_is_causal_over_positions_then_depth():
    model = RQTransformer(CFG)
    codes = jax.random.randint(jax.random.key(2), (3, 9, CFG.code_depth), 0, CFG.vocab_size)
    logits = model.apply({"params": PARAMS}, codes, LABELS)
    assert logits.shape == (3, 9, CFG.code_depth, CFG.vocab_size)
    t, d = 4, 1  # change one code; only later (position, depth) predictions may move
    changed = codes.at[:, t, d].set((codes[:, t, d] + 1) % CFG.vocab_size)
    diff = jnp.abs(model.apply({"params": PARAMS}, changed, LABELS) - logits).max(axis=(0, 3))
    order = np.arange(9)[:, None] * CFG.code_depth + np.arange(CFG.code_depth)[None]
    assert float(diff[order <= t * CFG.code_depth + d].max()) == 0.0
    assert float(diff[t, d + 1]) > 0 and float(diff[t + 1, 0]) > 0


@pytest.mark.parametrize(
    "shared,cfg_scale",
    [(True, 1.0), (False, 2.0)],  # per-depth tables, plain depth context
)
def test_cached_decode_equals_full_forward(shared, cfg_scale):
    cfg, _, params = (
        (CFG, None, PARAMS)
        if shared
        else _setup(shared_embeddings=False, cumsum_depth_context=False)
    )
    sampler = make_rq_sampler(cfg, return_logits=True, cfg_scale=cfg_scale)
    codes, logits = sampler(params, LABELS, jax.random.key(3))
    assert codes.shape == (3, 3, 3, cfg.code_depth) and logits.shape == (3, 9, 3, cfg.vocab_size)
    model = RQTransformer(cfg)
    full = model.apply({"params": params}, codes, LABELS)
    if cfg_scale != 1.0:
        uncond = model.apply({"params": params}, codes, LABELS, force_drop=jnp.ones(3, bool))
        full = uncond + cfg_scale * (full - uncond)
    np.testing.assert_allclose(logits, full, atol=2e-4, rtol=1e-4)
    assert sampler.forward_passes_per_image == {"spatial": 9, "depth": 27}


def test_sampler_is_deterministic_per_key():
    sampler = make_rq_sampler(CFG)
    a, b = sampler(PARAMS, LABELS, jax.random.key(5)), sampler(PARAMS, LABELS, jax.random.key(5))
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, sampler(PARAMS, LABELS, jax.random.key(6)))


def test_loss_metrics_and_logical_axes():
    task = make_rq_task(CFG)
    codes = jax.random.randint(jax.random.key(2), (4, 3, 3, CFG.code_depth), 0, CFG.vocab_size)
    loss, (metrics, state) = task.loss_fn(PARAMS, {}, {"codes": codes, "label": jnp.arange(4)},
                                          jax.random.key(0), 0)  # fmt: skip
    per_depth = [float(metrics[f"loss_depth{d}"]) for d in range(CFG.code_depth)]
    assert float(loss) == pytest.approx(np.mean(per_depth), rel=1e-5) and state == {}
    for leaf in jax.tree.leaves(BOXED, is_leaf=lambda x: isinstance(x, nn.Partitioned)):
        assert isinstance(leaf, nn.Partitioned)
        assert set(leaf.names) - {None} <= set(LOGICAL_AXES)


def test_bad_inputs():
    model = RQTransformer(CFG)
    with pytest.raises(ValueError, match="codes"):
        model.apply({"params": PARAMS}, jnp.zeros((3, 9, 2), jnp.int32), LABELS)  # wrong depth
    with pytest.raises(ValueError, match="codes"):
        model.apply({"params": PARAMS}, jnp.zeros((3, 9, 3), jnp.float32), LABELS)
    with pytest.raises(ValueError, match="labels"):
        model.apply({"params": PARAMS}, jnp.zeros((3, 9, 3), jnp.int32), LABELS[:2])
    with pytest.raises(ValueError, match="labels"):
        make_rq_sampler(CFG)(PARAMS, jnp.array([10]), jax.random.key(0))
    with pytest.raises(ValueError, match="grid"):
        make_rq_sampler(CFG, grid=(2, 4))
    with pytest.raises(ValueError, match="divisible"):
        RQTransformerConfig(dim=30, num_heads=4)
