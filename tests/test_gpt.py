"""Tests for jaxar.generators.gpt: config presets, cached decode, label dropout, loss task."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxar.generators.gpt import GPT, GPTConfig, gpt_config, init_gpt_cache, make_gpt_task
from jaxar.sharding import LOGICAL_AXES

TINY = dict(vocab_size=32, num_layers=2, dim=32, num_heads=4, block_size=16, num_classes=10,
            multiple_of=16, token_dropout=0.0, resid_dropout=0.0, ffn_dropout=0.0)  # fmt: skip


def _init(cfg, seed=0, batch=2):
    rng = np.random.default_rng(seed)
    codes = jnp.asarray(rng.integers(0, cfg.vocab_size, (batch, cfg.block_size)), jnp.int32)
    if cfg.model_type == "t2i":
        cond = jnp.asarray(
            rng.normal(size=(batch, cfg.cls_token_num, cfg.caption_dim)), jnp.float32
        )
    else:
        cond = jnp.asarray(rng.integers(0, cfg.num_classes, (batch,)), jnp.int32)
    model = GPT(cfg)
    boxed = jax.jit(model.init)(jax.random.key(seed), codes, cond)["params"]
    leaves, tree = jax.tree.flatten(nn.unbox(boxed))  # random weights (output is zero-init)
    keys = jax.random.split(jax.random.key(seed + 1), len(leaves))
    params = tree.unflatten([0.2 * jax.random.normal(k, x.shape) for k, x in zip(keys, leaves)])
    return model, boxed, params, codes, cond


def _cached_logits(model, params, codes, cond, chunks):
    cfg = model.config
    cache = init_gpt_cache(cfg, codes.shape[0])
    prefill = jax.jit(lambda p, c, k: model.apply({"params": p}, c, k, method=GPT.prefill))
    step = jax.jit(
        lambda p, t, pos, k: model.apply({"params": p}, t, pos, k, method=GPT.decode_step)
    )
    first, cache = prefill(params, cond, cache)
    outs, start = [first[:, None]], 0
    for size in chunks:  # feed codes[start:start+size] at sequence positions cls + start ...
        pos = cfg.cls_token_num + jnp.arange(start, start + size)
        logits, cache = step(params, codes[:, start : start + size], pos, cache)
        outs.append(logits)
        start += size
    return jnp.concatenate(outs, 1)


@pytest.mark.parametrize("num_kv_heads", [None, 2])
def test_cached_decode_equals_full_forward(num_kv_heads):
    cfg = GPTConfig(**TINY, num_kv_heads=num_kv_heads)
    model, _, params, codes, labels = _init(cfg)
    full = jax.jit(lambda p: model.apply({"params": p}, codes, labels))(params)
    assert full.shape == (2, 16, cfg.vocab_size)
    cached = _cached_logits(model, params, codes, labels, [1] * 13 + [2])  # 15 fed tokens
    np.testing.assert_allclose(cached, full, atol=1e-5)
    assert float(jnp.abs(full).max()) > 0.1  # not trivially zero


def test_t2i_cached_decode_equals_full_forward():
    cfg = GPTConfig(**TINY, model_type="t2i", cls_token_num=3, caption_dim=12)
    model, _, params, codes, caption = _init(cfg, seed=4)
    full = jax.jit(lambda p: model.apply({"params": p}, codes, caption))(params)
    cached = _cached_logits(model, params, codes, caption, [5, 10])
    np.testing.assert_allclose(cached, full, atol=1e-5)


def test_label_dropout_uses_null_class():
    cfg = GPTConfig(**TINY, class_dropout_prob=0.5)
    model, _, params, _, _ = _init(cfg)
    labels = jnp.arange(64) % 10
    emb = model.apply({"params": params}, labels, train=True, method=GPT.embed_condition,
                      rngs={"dropout": jax.random.key(3)})[:, 0]  # fmt: skip
    table = params["cls_embedding"]["embedding"]
    is_null = np.all(np.isclose(emb, table[cfg.null_class]), axis=-1)
    is_label = np.all(np.isclose(emb, table[labels]), axis=-1)
    assert np.all(is_null ^ is_label) and 10 < is_null.sum() < 54
    evaluated = model.apply({"params": params}, labels, method=GPT.embed_condition)[:, 0]
    np.testing.assert_allclose(evaluated, table[labels])
    forced = model.apply({"params": params}, labels, force_drop=jnp.ones(64, bool),
                         method=GPT.embed_condition)[:, 0]  # fmt: skip
    np.testing.assert_allclose(forced, jnp.broadcast_to(table[10], forced.shape))


def test_bad_inputs_raise():
    cfg = GPTConfig(**TINY)
    model, _, params, codes, labels = _init(cfg)
    apply = lambda c, y: model.apply({"params": params}, c, y)
    with pytest.raises(ValueError, match="labels values"):
        apply(codes, jnp.array([3, 11]))
    with pytest.raises(ValueError, match="labels must have rank 1"):
        apply(codes, labels[:, None])
    with pytest.raises(ValueError, match="codes values"):
        apply(codes.at[0, 0].set(cfg.vocab_size), labels)
    with pytest.raises(ValueError, match="integers"):
        apply(codes.astype(jnp.float32), labels)
    with pytest.raises(ValueError, match="block_size"):
        apply(jnp.zeros((2, 17), jnp.int32), labels)
    with pytest.raises(ValueError, match="batch"):
        apply(codes, labels[:1])
    with pytest.raises(ValueError, match="square"):
        GPTConfig(**{**TINY, "block_size": 15})
    with pytest.raises(ValueError, match="divisible"):
        GPTConfig(**{**TINY, "num_heads": 5})
    with pytest.raises(ValueError, match="unknown GPT preset"):
        gpt_config("GPT-Q")
    with pytest.raises(ValueError, match="unknown GPTConfig fields"):
        gpt_config("GPT-B", layers=3)


def test_presets_match_llamagen_sizes_and_annotations():
    cfg = gpt_config("GPT-B")
    codes, labels = jnp.zeros((1, 256), jnp.int32), jnp.zeros((1,), jnp.int32)
    shapes = jax.eval_shape(lambda: GPT(cfg).init(jax.random.key(0), codes, labels))["params"]
    boxes = jax.tree.leaves(shapes, is_leaf=lambda v: isinstance(v, nn.Partitioned))
    assert all(isinstance(b, nn.Partitioned) for b in boxes)
    assert all(set(b.names) <= set(LOGICAL_AXES) | {None} for b in boxes)
    count = sum(int(np.prod(b.value.shape)) for b in boxes)
    assert 110e6 < count < 112e6  # LlamaGen: GPT-B 111M with a 16384 codebook
    assert gpt_config("GPT-XL").hidden_dim == 3584 and gpt_config("GPT-L").num_heads == 16


def test_task_loss_and_grad():
    cfg = GPTConfig(**TINY)
    task = make_gpt_task(cfg, label_smoothing=0.1)
    assert task.sample_images is None
    codes = jnp.asarray(np.random.default_rng(0).integers(0, 32, (4, 4, 4)), jnp.int32)
    batch = {"codes": codes, "label": jnp.array([0, 1, 2, 9])}
    params, state = task.init(jax.random.key(0), batch)
    params = nn.unbox(params)
    assert state == {}

    def loss(p):
        return task.loss_fn(p, state, batch, jax.random.key(1), jnp.int32(0))

    (value, (metrics, _)), grads = jax.jit(jax.value_and_grad(loss, has_aux=True))(params)
    # zero-initialised output head: uniform logits, loss = log(V)
    np.testing.assert_allclose(value, np.log(32), rtol=1e-5)
    np.testing.assert_allclose(metrics["perplexity"], 32, rtol=1e-4)
    assert set(metrics) == {"loss", "accuracy", "perplexity"}
    assert float(jnp.abs(grads["output"]["kernel"]).max()) > 0
