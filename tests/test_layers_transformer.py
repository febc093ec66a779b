"""Tests for jaxar.layers: RMSNorm, RoPE, SwiGLU, attention with KV cache, transformer block."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxar.layers.attention import Attention, dot_product_attention, init_kv_cache
from jaxar.layers.mlp import FeedForward, ffn_hidden_dim
from jaxar.layers.norms import RMSNorm, modulate
from jaxar.layers.rope import apply_rope, gather_rope, rope_table_1d, rope_table_2d
from jaxar.layers.transformer import DropPath, TransformerBlock
from jaxar.sharding import LOGICAL_AXES


def _randomize(params, seed=0, scale=0.3):
    leaves, tree = jax.tree.flatten(params)
    keys = jax.random.split(jax.random.key(seed), len(leaves))
    return tree.unflatten([scale * jax.random.normal(k, x.shape) for k, x in zip(keys, leaves)])


def test_rmsnorm_matches_numpy():
    x = np.random.default_rng(0).normal(size=(2, 3, 8)).astype(np.float32)
    layer = RMSNorm(eps=1e-5)
    params = nn.unbox(layer.init(jax.random.key(0), x))
    params = jax.tree.map(lambda p: p * 1.5, params)
    want = x / np.sqrt((x**2).mean(-1, keepdims=True) + 1e-5) * 1.5
    np.testing.assert_allclose(layer.apply(params, x), want, rtol=1e-5)


def test_modulate_is_shift_plus_scaled_input():
    x = jax.random.normal(jax.random.key(1), (2, 3, 8))
    zeros = jnp.zeros((2, 8))
    np.testing.assert_allclose(modulate(x, zeros, zeros), x)
    np.testing.assert_allclose(modulate(x, jnp.ones((2, 8)), jnp.ones((2, 8))), 2 * x + 1)


def test_ffn_hidden_rule_matches_llamagen():
    # GPT-B/L/XL/XXL widths of the released checkpoints
    assert [ffn_hidden_dim(d) for d in (768, 1024, 1280, 1536)] == [2048, 2816, 3584, 4096]
    assert ffn_hidden_dim(64, multiple_of=32) == 192
    assert ffn_hidden_dim(64, multiple_of=32, ffn_dim_multiplier=0.5) == 96
    with pytest.raises(ValueError):
        ffn_hidden_dim(0)


def test_swiglu_matches_formula():
    x = jax.random.normal(jax.random.key(0), (2, 3, 8))
    ffn = FeedForward(hidden_dim=16)
    params = nn.unbox(ffn.init(jax.random.key(1), x))["params"]
    w1, w2, w3 = (params[n]["kernel"] for n in ("w1", "w2", "w3"))
    want = (jax.nn.silu(x @ w1) * (x @ w3)) @ w2
    np.testing.assert_allclose(ffn.apply({"params": params}, x), want, rtol=1e-5, atol=1e-6)


def test_rope_2d_hand_example():
    # head_dim 4 -> one frequency (1.0) per axis: pair 0 turns by the row, pair 1 by the column
    cos, sin = rope_table_2d(grid_size=2, head_dim=4, prefix_len=1, prefix_mode="zero")
    angles = np.array([[0, 0], [0, 1], [1, 0], [1, 1]], np.float32)  # (row, col) of n = 0..3
    np.testing.assert_allclose(cos, np.concatenate([np.zeros((1, 2)), np.cos(angles)]), atol=1e-7)
    np.testing.assert_allclose(sin, np.concatenate([np.zeros((1, 2)), np.sin(angles)]), atol=1e-7)
    x = jnp.array([1.0, 0.0, 1.0, 0.0]).reshape(1, 1, 1, 4)
    c, s = gather_rope((cos, sin), jnp.array([4]))  # grid cell (1, 1)
    c1, s1 = np.cos(1.0), np.sin(1.0)
    np.testing.assert_allclose(apply_rope(x, c, s).ravel(), [c1, s1, c1, s1], rtol=1e-6)
    c, s = gather_rope((cos, sin), jnp.array([0]))  # class token, LlamaGen: q/k zeroed
    np.testing.assert_allclose(apply_rope(x, c, s), 0.0)
    ident = rope_table_2d(2, 4, prefix_len=1, prefix_mode="identity")
    np.testing.assert_allclose(apply_rope(x, *gather_rope(ident, jnp.array([0]))), x)


def test_rope_1d_and_errors():
    cos, sin = rope_table_1d(seq_len=5, head_dim=8)
    assert cos.shape == (5, 4)
    np.testing.assert_allclose(cos[:, 0], np.cos(np.arange(5)), rtol=1e-6)
    np.testing.assert_allclose(sin[3, 1], np.sin(3 * 10000 ** (-2 / 8)), rtol=1e-6)
    with pytest.raises(ValueError, match="head_dim"):
        rope_table_2d(2, 6)
    with pytest.raises(ValueError, match="prefix_mode"):
        rope_table_1d(4, 8, prefix_len=1, prefix_mode="bad")


def _attn_setup(num_kv_heads, seed=0):
    attn = Attention(num_heads=4, num_kv_heads=num_kv_heads)
    x = jax.random.normal(jax.random.key(seed), (2, 7, 32))
    params = _randomize(nn.unbox(attn.init(jax.random.key(1), x)), seed + 1)
    rope = rope_table_1d(8, 8, prefix_len=1)
    return attn, params, x, rope


@pytest.mark.parametrize("num_kv_heads", [None, 1])
def test_attention_cached_chunks_equal_full(num_kv_heads):
    attn, params, x, rope = _attn_setup(num_kv_heads)
    full, _ = attn.apply(params, x, rope=gather_rope(rope, jnp.arange(7)))
    cache = init_kv_cache(2, 9, num_kv_heads or 4, 8)
    step = jax.jit(lambda p, xs, r, c: attn.apply(p, xs, rope=r, cache=c))
    outs, start = [], 0
    for size in (3, 1, 2, 1):  # prefill 3, then single and multi-token steps
        pos = jnp.arange(start, start + size)
        out, cache = step(params, x[:, start : start + size], gather_rope(rope, pos), cache)
        outs.append(out)
        start += size
    assert int(cache["index"]) == 7
    np.testing.assert_allclose(jnp.concatenate(outs, 1), full, atol=1e-5)


def test_gqa_equals_mha_with_repeated_kv_heads():
    attn, params, x, rope = _attn_setup(2)
    mha_params = jax.tree.map(lambda a: a, params)
    for name in ("key", "value"):  # kv head j serves query heads 2j, 2j+1 (repeat_interleave)
        kernel = params["params"][name]["kernel"]
        mha_params["params"][name]["kernel"] = jnp.repeat(kernel, 2, axis=1)
    r = gather_rope(rope, jnp.arange(7))
    gqa_out, _ = attn.apply(params, x, rope=r)
    mha_out, _ = Attention(num_heads=4).apply(mha_params, x, rope=r)
    np.testing.assert_allclose(gqa_out, mha_out, atol=1e-5)


def test_dot_product_attention_matches_numpy_softmax():
    rng = np.random.default_rng(0)
    q, k, v = (rng.normal(size=(2, 5, 4, 16)).astype(np.float32) for _ in range(3))
    causal = np.tril(np.ones((5, 5), bool))
    scores = np.einsum("bthd,bshd->bhts", q, k) / np.sqrt(16.0)
    scores = np.where(causal, scores, -np.inf)
    weights = np.exp(scores - scores.max(-1, keepdims=True))
    weights /= weights.sum(-1, keepdims=True)
    expected = np.einsum("bhts,bshd->bthd", weights, v)
    mask = jnp.asarray(causal)
    got = dot_product_attention(jnp.asarray(q), jnp.asarray(k), jnp.asarray(v), mask)
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-5)


def test_attention_masks():
    attn, params, x, _ = _attn_setup(None)
    causal, _ = attn.apply(params, x)
    changed = x.at[:, -1].add(1.0)
    causal2, _ = attn.apply(params, changed)
    np.testing.assert_allclose(causal[:, :-1], causal2[:, :-1], atol=1e-6)  # past is unaffected
    full, _ = Attention(num_heads=4, causal=False).apply(params, x)
    explicit, _ = attn.apply(params, x, mask=jnp.ones((7, 7), bool))
    np.testing.assert_allclose(full, explicit, atol=1e-6)
    assert not np.allclose(full[:, 0], causal[:, 0], atol=1e-3)
    with pytest.raises(ValueError, match="mask"):
        attn.apply(params, x, mask=jnp.ones((3, 7), bool))


def test_transformer_block_cache_and_annotations():
    block = TransformerBlock(num_heads=4, ffn_hidden_dim=64, num_kv_heads=2)
    x = jax.random.normal(jax.random.key(0), (2, 5, 32))
    boxed = block.init(jax.random.key(1), x)
    for leaf in jax.tree.leaves(boxed, is_leaf=lambda v: isinstance(v, nn.Partitioned)):
        assert isinstance(leaf, nn.Partitioned)
        assert set(leaf.names) <= set(LOGICAL_AXES) | {None}
    params = _randomize(nn.unbox(boxed), 3, 0.2)
    full, _ = block.apply(params, x)
    step = jax.jit(lambda p, xs, c: block.apply(p, xs, cache=c))
    a, cache = step(params, x[:, :2], init_kv_cache(2, 5, 2, 8))
    b, cache = step(params, x[:, 2:], cache)
    np.testing.assert_allclose(jnp.concatenate([a, b], 1), full, atol=1e-5)


def test_drop_path():
    x = jnp.ones((64, 3, 4))
    dp = DropPath(0.5)
    np.testing.assert_array_equal(dp.apply({}, x), x)
    y = dp.apply({}, x, train=True, rngs={"dropout": jax.random.key(0)})
    per_row = np.unique(np.asarray(y).reshape(64, -1), axis=1)
    assert per_row.shape[1] == 1 and set(np.unique(per_row)) == {0.0, 2.0}
