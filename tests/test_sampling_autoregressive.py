"""Tests for jaxar.sampling.autoregressive: greedy parity with full forwards, CFG, determinism
across device meshes, returned logits, bad inputs."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxar import sharding
from jaxar.generators.gpt import GPT, GPTConfig
from jaxar.sampling.autoregressive import make_sampler, sample

CFG = GPTConfig(vocab_size=32, num_layers=2, dim=32, num_heads=4, num_kv_heads=2, block_size=9,
                num_classes=10, multiple_of=16, token_dropout=0.0, resid_dropout=0.0,
                ffn_dropout=0.0)  # fmt: skip


def _abstract_params():
    codes, labels = jnp.zeros((1, 9), jnp.int32), jnp.zeros((1,), jnp.int32)
    return jax.eval_shape(lambda: GPT(CFG).init(jax.random.key(0), codes, labels))["params"]


@pytest.fixture(scope="module")
def params():
    leaves, tree = jax.tree.flatten(nn.unbox(_abstract_params()))
    keys = jax.random.split(jax.random.key(1), len(leaves))
    return tree.unflatten([0.3 * jax.random.normal(k, x.shape) for k, x in zip(keys, leaves)])


def _greedy_by_full_forward(params, labels, cfg_scale=None):
    """Reference: re-run the whole teacher-forced forward for every new token."""
    model = GPT(CFG)
    forward = jax.jit(lambda c, y, drop: model.apply({"params": params}, c, y, force_drop=drop))
    batch = labels.shape[0]
    codes = np.zeros((batch, CFG.block_size), np.int32)
    for t in range(CFG.block_size):
        cond = forward(codes, labels, jnp.zeros(batch, bool))[:, t]
        logits = cond
        if cfg_scale is not None:
            uncond = forward(codes, labels, jnp.ones(batch, bool))[:, t]
            logits = uncond + cfg_scale * (cond - uncond)
        codes[:, t] = np.asarray(jnp.argmax(logits, -1))
    return codes


def test_top_k_1_equals_greedy_full_forward(params):
    labels = jnp.array([0, 3, 7])
    codes = sample(CFG, params, labels, jax.random.key(5), top_k=1)
    assert codes.shape == (3, 9) and codes.dtype == jnp.int32
    np.testing.assert_array_equal(codes, _greedy_by_full_forward(params, labels))
    assert len(np.unique(np.asarray(codes))) > 3  # random weights give varied tokens


def test_cfg_greedy_equals_guided_full_forward(params):
    labels = jnp.array([1, 4])
    codes = sample(CFG, params, labels, jax.random.key(0), cfg_scale=3.0, temperature=0.0)
    np.testing.assert_array_equal(codes, _greedy_by_full_forward(params, labels, cfg_scale=3.0))
    plain = sample(CFG, params, labels, jax.random.key(0), temperature=0.0)
    assert not np.array_equal(codes, plain)  # guidance changes the result


def test_cfg_scale_one_equals_cond_only(params):
    labels = jnp.array([2, 2, 5, 9])
    rng = jax.random.key(11)
    cond_only = sample(CFG, params, labels, rng, top_k=8)
    guided = sample(CFG, params, labels, rng, top_k=8, use_cfg=True, cfg_scale=1.0)
    np.testing.assert_array_equal(guided, cond_only)
    other_seed = sample(CFG, params, labels, jax.random.key(12), top_k=8)
    assert not np.array_equal(other_seed, cond_only)


def test_returned_logits_match_full_forward(params):
    labels = jnp.array([6, 0])
    codes, logits = sample(CFG, params, labels, jax.random.key(3), return_logits=True)
    assert logits.shape == (2, 9, CFG.vocab_size)
    full = GPT(CFG).apply({"params": params}, codes, labels)
    np.testing.assert_allclose(logits, full, atol=1e-5)


def test_same_seed_same_samples_on_one_and_eight_devices(params):
    labels = jnp.arange(8) % 10
    kwargs = dict(cfg_scale=2.0, temperature=1.0, top_p=0.9)
    single = make_sampler(CFG, **kwargs)(params, labels, jax.random.key(7))
    again = make_sampler(CFG, **kwargs)(params, labels, jax.random.key(7))
    np.testing.assert_array_equal(single, again)
    mesh = sharding.make_mesh(data=4, fsdp=2)
    shard = sharding.logical_to_sharding(_abstract_params(), mesh)
    sharded_params = jax.device_put(params, shard)
    sharded_labels = jax.device_put(labels, sharding.batch_sharding(mesh))
    assert len(sharded_params["tok_embeddings"]["embedding"].sharding.device_set) == 8
    with sharding.use_mesh(mesh):
        multi = make_sampler(CFG, **kwargs)(sharded_params, sharded_labels, jax.random.key(7))
    np.testing.assert_array_equal(np.asarray(multi), np.asarray(single))


def test_decode_fn_and_partial_length(params):
    decode = lambda codes: codes.astype(jnp.float32)[..., None] / CFG.vocab_size  # [B, h, w, 1]
    images = make_sampler(CFG, decode_fn=decode, top_k=1)(params, jnp.array([1]), jax.random.key(0))
    codes = sample(CFG, params, jnp.array([1]), jax.random.key(0), top_k=1)
    assert images.shape == (1, 3, 3, 1)
    np.testing.assert_allclose(images[..., 0] * CFG.vocab_size, codes.reshape(1, 3, 3))
    head = sample(CFG, params, jnp.array([1]), jax.random.key(0), top_k=1, num_tokens=4)
    np.testing.assert_array_equal(head, codes[:, :4])


def test_bad_labels_raise(params):
    with pytest.raises(ValueError, match=r"labels values must be in \[0, 10\)"):
        sample(CFG, params, jnp.array([10]), jax.random.key(0))
    with pytest.raises(ValueError, match="rank 1"):
        sample(CFG, params, jnp.zeros((2, 1), jnp.int32), jax.random.key(0))
    with pytest.raises(ValueError, match="top_p"):
        sample(CFG, params, jnp.array([1]), jax.random.key(0), top_p=0.0)
    with pytest.raises(ValueError, match="GPT or GPTConfig"):
        sample("GPT-B", params, jnp.array([1]), jax.random.key(0))


def test_segmented_decode_reads_less_and_gives_the_same_samples():
    """decode_segments=n: n scans, each reading only the cache slots written by its end; the
    codes and logits equal the single full-cache scan (greedy and sampled, with CFG)."""
    from jaxar.generators.gpt import GPT, gpt_config
    from jaxar.sampling.autoregressive import decode_segments, make_sampler

    cfg = gpt_config("GPT-tiny", block_size=16)
    model = GPT(cfg)
    codes = jnp.zeros((1, 16), jnp.int32)
    params = model.init(jax.random.key(0), codes, jnp.zeros((1,), jnp.int32))["params"]
    leaves, tree = jax.tree.flatten(params)
    keys = jax.random.split(jax.random.key(1), len(leaves))
    params = tree.unflatten([x + 0.3 * jax.random.normal(k, x.shape) for k, x in zip(keys, leaves)])
    labels = jnp.array([1, 4, 7], jnp.int32)
    for settings in ({"temperature": 0.0}, {"cfg_scale": 3.0, "top_k": 20}):
        full = make_sampler(cfg, return_logits=True, **settings)
        codes_full, logits_full = full(params, labels, jax.random.key(2))
        for segments in (2, 5):
            seg = make_sampler(cfg, return_logits=True, decode_segments=segments, **settings)
            codes_seg, logits_seg = seg(params, labels, jax.random.key(2))
            np.testing.assert_array_equal(codes_seg, codes_full)
            np.testing.assert_allclose(logits_seg, logits_full, rtol=1e-5, atol=1e-4)
            jaxpr = str(jax.make_jaxpr(seg.jitted)(params, labels, jax.random.key(2)))
            assert jaxpr.count("scan[") == segments
    assert decode_segments(1, 16, 4) == [(1, 4), (4, 8), (8, 12), (12, 16)]
    assert decode_segments(1, 3, 8) == [(1, 2), (2, 3)]
    with pytest.raises(ValueError, match="decode_segments"):
        make_sampler(cfg, decode_segments=0)
