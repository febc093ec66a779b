"""Tests for RandAR: decoding schedule, cached (parallel) decode vs full forward, loss, errors."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxar.generators.randar import (
    RandAR,
    RandARConfig,
    make_randar_task,
    randar_config,
    randar_loss,
    random_orders,
)
from jaxar.sampling import random_order as ro
from jaxar.sharding import LOGICAL_AXES

CFG = randar_config("RandAR-tiny")
LABELS = jnp.array([1, 5, 9])


def _random_params(cfg, seed=0):
    batch = {"codes": np.zeros((2, cfg.block_size), np.int32), "label": np.zeros(2, np.int32)}
    boxed, _ = make_randar_task(cfg).init(jax.random.key(seed), batch)
    leaves, tree = jax.tree.flatten(nn.unbox(boxed))  # random weights (output is zero-init)
    keys = jax.random.split(jax.random.key(seed + 1), len(leaves))
    params = tree.unflatten([0.3 * jax.random.normal(k, x.shape) for k, x in zip(keys, leaves)])
    return boxed, params


BOXED, PARAMS = _random_params(CFG)


def _decode(opts, order):
    fn = jax.jit(lambda p, r, o: ro.generate(RandAR(CFG), p, LABELS, r, opts, order=o))
    return fn(PARAMS, jax.random.key(3), order)


def _full(codes, order, cfg_scale=1.0):
    model = RandAR(CFG)
    cond = model.apply({"params": PARAMS}, codes, LABELS, order)
    if cfg_scale == 1.0:
        return cond
    uncond = model.apply({"params": PARAMS}, codes, LABELS, order, force_drop=jnp.ones(3, bool))
    return uncond + cfg_scale * (cond - uncond)


def test_parallel_decoding_schedule():
    counts = ro.parallel_decoding_schedule(88, 256)  # RandAR's ImageNet setting
    assert len(counts) == 88 and sum(counts) == 256 and counts[0] == 1
    assert list(counts[:24]) == [1] * 24 and max(counts) == 5
    assert ro.parallel_decoding_schedule(16, 16) == (1,) * 16
    assert sum(ro.parallel_decoding_schedule(1, 16)) == 16
    with pytest.raises(ValueError, match="num_steps"):
        ro.parallel_decoding_schedule(17, 16)


@pytest.mark.parametrize("order_kind,cfg_scale", [("random", 1.0), ("raster", 2.5)])
def test_token_by_token_decode_equals_full_forward(order_kind, cfg_scale):
    opts = ro.RandomOrderOptions(num_inference_steps=16, return_logits=True, cfg_scale=cfg_scale)
    if order_kind == "raster":
        order = jnp.broadcast_to(jnp.arange(16), (3, 16))
    else:
        order = random_orders(jax.random.key(7), 3, 16)
    codes, logits = _decode(opts, order)
    full = _full(codes, order, cfg_scale)
    np.testing.assert_allclose(logits, full, atol=2e-4, rtol=1e-4)
    assert float(jnp.abs(full).max()) > 1.0  # not trivially zero


def test_parallel_decode_first_query_of_each_step_is_exact():
    opts = ro.RandomOrderOptions(num_inference_steps=6, return_logits=True)
    order = random_orders(jax.random.key(8), 3, 16)
    codes, logits = _decode(opts, order)
    counts = ro.parallel_decoding_schedule(6, 16)
    firsts = np.concatenate([[0], np.cumsum(counts)[:-1]])
    full = _full(codes, order)
    np.testing.assert_allclose(logits[:, firsts], full[:, firsts], atol=2e-4, rtol=1e-4)
    later = np.setdiff1d(np.arange(16), firsts)  # these queries saw position tokens only
    assert float(jnp.abs(logits[:, later] - full[:, later]).max()) > 1e-2


def test_sampler_codes_and_forward_passes():
    sampler = ro.make_randar_sampler(CFG, cfg_scale=2.0)
    a, b = sampler(PARAMS, LABELS, jax.random.key(0)), sampler(PARAMS, LABELS, jax.random.key(0))
    np.testing.assert_array_equal(a, b)
    assert a.shape == (3, 16) and int(a.min()) >= 0 and int(a.max()) < CFG.vocab_size
    assert sampler.forward_passes_per_image == CFG.num_inference_steps == 6


def test_loss_and_logical_axes():
    codes = jax.random.randint(jax.random.key(2), (4, 16), 0, CFG.vocab_size)
    batch = {"codes": codes, "label": jnp.arange(4)}
    loss, metrics = randar_loss(RandAR(CFG), PARAMS, batch, jax.random.key(1))
    assert np.isfinite(float(loss)) and set(metrics) == {"loss", "accuracy", "perplexity"}
    orders = np.asarray(random_orders(jax.random.key(0), 5, 16))
    np.testing.assert_array_equal(np.sort(orders, -1), np.tile(np.arange(16), (5, 1)))
    assert len({tuple(o) for o in orders}) == 5
    for leaf in jax.tree.leaves(BOXED, is_leaf=lambda x: isinstance(x, nn.Partitioned)):
        assert isinstance(leaf, nn.Partitioned)
        assert set(leaf.names) - {None} <= set(LOGICAL_AXES)


def test_bad_inputs():
    model = RandAR(CFG)
    codes = jnp.zeros((3, 16), jnp.int32)
    with pytest.raises(ValueError, match="permutation"):
        model.apply({"params": PARAMS}, codes, LABELS, jnp.zeros((3, 16), jnp.int32))
    with pytest.raises(ValueError, match="order"):
        model.apply({"params": PARAMS}, codes, LABELS, jnp.zeros((3, 15), jnp.int32))
    with pytest.raises(ValueError, match="codes"):
        model.apply({"params": PARAMS}, codes + 40, LABELS, jnp.tile(jnp.arange(16), (3, 1)))
    with pytest.raises(ValueError, match="labels"):
        ro.make_randar_sampler(CFG)(PARAMS, jnp.array([10]), jax.random.key(0))
    with pytest.raises(ValueError, match="order must be one of"):
        ro.RandomOrderOptions(order="spiral")
    with pytest.raises(ValueError, match="num_inference_steps"):
        RandARConfig(block_size=16, num_inference_steps=20)
    with pytest.raises(ValueError, match="square"):
        RandARConfig(block_size=15, num_inference_steps=4)
