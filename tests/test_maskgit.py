"""Tests for MaskGIT: mask schedules, masked training loss, one decode step, T-step decode."""

import math

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from jaxar.generators.mask_schedule import mask_ratio, num_masked_for_training
from jaxar.generators.maskgit import (
    MaskGIT,
    MaskGITConfig,
    make_maskgit_task,
    maskgit_config,
    maskgit_loss,
    random_mask,
)
from jaxar.sampling import masked
from jaxar.sharding import LOGICAL_AXES

CFG = maskgit_config("MaskGIT-tiny")


def _random_params(cfg, seed=0):
    batch = {"codes": np.zeros((2, cfg.block_size), np.int32), "label": np.zeros(2, np.int32)}
    boxed, _ = make_maskgit_task(cfg).init(jax.random.key(seed), batch)
    leaves, tree = jax.tree.flatten(nn.unbox(boxed))
    keys = jax.random.split(jax.random.key(seed + 1), len(leaves))
    params = tree.unflatten([0.3 * jax.random.normal(k, x.shape) for k, x in zip(keys, leaves)])
    return boxed, params


BOXED, PARAMS = _random_params(CFG)


def test_mask_schedule_values():
    r = np.array([0.0, 0.25, 0.5, 1.0])
    np.testing.assert_allclose(mask_ratio(r, 16, "cosine"), np.clip(np.cos(np.pi / 2 * r), 1e-6, 1))
    np.testing.assert_allclose(mask_ratio(r, 16, "linear"), np.clip(1 - r, 1e-6, 1))
    np.testing.assert_allclose(mask_ratio(r, 16, "square"), np.clip(1 - r**2, 1e-6, 1))
    np.testing.assert_allclose(mask_ratio(r, 16, "pow2"), mask_ratio(r, 16, "square"))
    np.testing.assert_allclose(mask_ratio(0.5, 16, "sqrt"), 1 - math.sqrt(0.5), rtol=1e-6)
    np.testing.assert_allclose(mask_ratio(0.5, 16, "log"), 0.25, rtol=1e-6)  # -log2(.5)/log2(16)
    np.testing.assert_allclose(mask_ratio(0.5, 16, "exp"), 0.75, rtol=1e-6)  # 1 - 2^(-2)
    assert float(mask_ratio(1.0, 16, "cosine")) == pytest.approx(1e-6)
    for bad in ("cosinus", "pow", "pow-1"):
        with pytest.raises(ValueError, match="mask schedule"):
            mask_ratio(0.5, 16, bad)


def test_training_mask_counts_follow_cosine():
    rng = jax.random.key(3)
    counts = num_masked_for_training(rng, 64, 16)
    r = jax.random.uniform(rng, (64,))
    want = jnp.clip(jnp.ceil(jnp.cos(jnp.pi / 2 * r) * 16), 1, 16)  # ceil(cos(pi/2 r) L)
    np.testing.assert_array_equal(counts, want)
    mask = random_mask(jax.random.key(4), 64, 16)
    count_rng, _ = jax.random.split(jax.random.key(4))
    np.testing.assert_array_equal(mask.sum(-1), num_masked_for_training(count_rng, 64, 16))


def test_loss_is_cross_entropy_on_masked_positions_only():
    codes = jax.random.randint(jax.random.key(5), (4, CFG.block_size), 0, CFG.vocab_size)
    batch = {"codes": codes, "label": jnp.arange(4)}
    model = MaskGIT(CFG)
    loss, metrics = maskgit_loss(model, PARAMS, batch, jax.random.key(6), train=False)
    mask_rng, _ = jax.random.split(jax.random.key(6))
    mask = random_mask(mask_rng, 4, CFG.block_size)
    logits = model.apply(
        {"params": PARAMS}, jnp.where(mask, CFG.mask_token_id, codes), batch["label"]
    )
    ce = optax.softmax_cross_entropy_with_integer_labels(logits, codes)
    np.testing.assert_allclose(loss, (ce * mask).sum() / mask.sum(), rtol=1e-5)
    assert float(metrics["mask_fraction"]) == pytest.approx(float(mask.mean()))


def test_params_carry_logical_axes():
    for leaf in jax.tree.leaves(BOXED, is_leaf=lambda x: isinstance(x, nn.Partitioned)):
        assert isinstance(leaf, nn.Partitioned), leaf
        assert set(leaf.names) - {None} <= set(LOGICAL_AXES), leaf.names


def test_one_decode_step_equals_forward_on_masked_input():
    model = MaskGIT(CFG)
    codes = jax.random.randint(jax.random.key(7), (3, CFG.block_size), 0, CFG.vocab_size)
    given = jnp.arange(CFG.block_size)[None] % 3 == jnp.arange(3)[:, None]  # 1/3 masked
    tokens = jnp.where(given, CFG.mask_token_id, codes)
    labels = jnp.array([1, 2, 3])
    opts = masked.MaskedSamplingOptions(num_steps=4)
    nxt, drawn, logits = masked.decode_step(
        model, PARAMS, tokens, labels, jax.random.key(8), 1, opts
    )
    np.testing.assert_allclose(logits, model.apply({"params": PARAMS}, tokens, labels), atol=1e-5)
    np.testing.assert_array_equal(jnp.where(given, drawn, codes), drawn)  # known tokens kept
    unknown = given.sum(-1)
    expect = np.maximum(1, np.minimum(unknown - 1, np.floor(unknown * np.cos(np.pi / 2 * 2 / 4))))
    np.testing.assert_array_equal((nxt == CFG.mask_token_id).sum(-1), expect)
    assert not bool(jnp.any((nxt == CFG.mask_token_id) & ~given))  # only new tokens re-masked


def test_cfg_logits_combine_conditional_and_null_rows():
    model = MaskGIT(CFG)
    tokens = jnp.full((2, CFG.block_size), CFG.mask_token_id)
    labels = jnp.array([4, 5])
    opts = masked.MaskedSamplingOptions(cfg_scale=3.0)
    guided = masked.guided_logits(model, PARAMS, tokens, labels, 0, opts)
    cond = model.apply({"params": PARAMS}, tokens, labels)
    uncond = model.apply({"params": PARAMS}, tokens, jnp.full((2,), CFG.null_class))
    np.testing.assert_allclose(guided, uncond + 3.0 * (cond - uncond), atol=1e-4)


def test_greedy_decode_is_deterministic_and_complete():
    sampler = masked.make_maskgit_sampler(CFG, num_steps=5, temperature=0.0, choice_temperature=0.0)
    labels = jnp.array([0, 1, 2])
    a = sampler(PARAMS, labels, jax.random.key(0))
    b = sampler(PARAMS, labels, jax.random.key(1))
    np.testing.assert_array_equal(a, b)
    assert a.shape == (3, CFG.block_size) and a.dtype == jnp.int32
    assert int(a.max()) < CFG.vocab_size and int(a.min()) >= 0  # no mask token left
    noisy = masked.make_maskgit_sampler(CFG, num_steps=5, cfg_scale=2.0)
    c, d = noisy(PARAMS, labels, jax.random.key(0)), noisy(PARAMS, labels, jax.random.key(1))
    assert not np.array_equal(c, d)
    assert sampler.forward_passes_per_image == 5


def test_bad_inputs():
    model = MaskGIT(CFG)
    with pytest.raises(ValueError, match="tokens"):
        model.apply({"params": PARAMS}, jnp.zeros((2, 5), jnp.int32), jnp.zeros(2, jnp.int32))
    with pytest.raises(ValueError, match="labels"):
        model.apply({"params": PARAMS}, jnp.zeros((2, 16), jnp.int32), jnp.full(2, 11))
    sampler = masked.make_maskgit_sampler(CFG)
    with pytest.raises(ValueError, match="labels"):
        sampler(PARAMS, jnp.array([10]), jax.random.key(0))  # the null class is not a label
    with pytest.raises(ValueError, match="num_steps"):
        masked.MaskedSamplingOptions(num_steps=0)
    with pytest.raises(ValueError, match="divisible"):
        MaskGITConfig(dim=30, num_heads=4)
    with pytest.raises(ValueError, match="mask schedule"):
        MaskGITConfig(mask_schedule="nope")
    with pytest.raises(ValueError, match="unknown MaskGIT preset"):
        maskgit_config("MaskGIT-huge")
