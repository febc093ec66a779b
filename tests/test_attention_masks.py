"""Masks from lengths equal the materialised masks they replace.

Every attention call now derives its mask from the cache index (``slot_mask``, [T, S]) or a
flag (``jax.nn.dot_product_attention(is_causal=True)``) instead of a [B, H, T, S] tensor. The
reference here is a float64 numpy attention over an explicit [B, H, T, S] mask, built from
the semantics (a query at sequence position p reads the keys written so far, and with
causality only those at positions <= p), fed the module's own projections.
"""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxar.layers.attention import (
    Attention,
    _mask4,
    dot_product_attention,
    fused_attention,
    init_kv_cache,
    slot_mask,
)
from jaxar.layers.caches import cache_slots

B, T, D, H, HKV, DH = 2, 6, 32, 4, 2, 8


def _setup():
    attn = Attention(num_heads=H, num_kv_heads=HKV)
    x = jax.random.normal(jax.random.key(0), (B, T, D))
    params = nn.unbox(attn.init(jax.random.key(1), x))
    leaves, tree = jax.tree.flatten(params)
    keys = jax.random.split(jax.random.key(2), len(leaves))
    params = tree.unflatten([0.4 * jax.random.normal(k, p.shape) for k, p in zip(keys, leaves)])
    return attn, params, np.asarray(x, np.float64)


def _reference(params, x, mask):
    """float64 attention of x [B, T, D] with mask bool [B, H, T, T] (every query sees >= 1)."""
    p = jax.tree.map(lambda a: np.asarray(a, np.float64), params["params"])
    q = np.einsum("btd,dhe->bthe", x, p["query"]["kernel"])
    k = np.repeat(np.einsum("btd,dhe->bthe", x, p["key"]["kernel"]), H // HKV, axis=2)
    v = np.repeat(np.einsum("btd,dhe->bthe", x, p["value"]["kernel"]), H // HKV, axis=2)
    scores = np.einsum("bthe,bshe->bhts", q, k) / np.sqrt(DH)
    scores = np.where(mask, scores, -np.inf)
    weights = np.exp(scores - scores.max(-1, keepdims=True))
    weights /= weights.sum(-1, keepdims=True)
    out = np.einsum("bhts,bshe->bthe", weights, v)
    return np.einsum("bthe,hed->btd", out, p["out"]["kernel"])


def _full_mask(allowed):
    """[T, T] or [B, T, T] semantic mask -> materialised [B, H, T, T]."""
    allowed = np.asarray(allowed, bool)
    if allowed.ndim == 2:
        allowed = allowed[None]
    return np.broadcast_to(allowed[:, None], (B, H, T, T))


CAUSAL = np.tril(np.ones((T, T), bool))


def test_causal_and_full_without_cache_equal_materialised_masks():
    attn, params, x = _setup()
    got, _ = attn.apply(params, jnp.asarray(x, jnp.float32))
    np.testing.assert_allclose(got, _reference(params, x, _full_mask(CAUSAL)), atol=1e-5)
    full, _ = Attention(num_heads=H, num_kv_heads=HKV, causal=False).apply(params, x)
    np.testing.assert_allclose(full, _reference(params, x, _full_mask(np.ones((T, T)))), atol=1e-5)


def test_explicit_per_row_mask_without_cache():
    attn, params, x = _setup()
    rng = np.random.default_rng(0)
    allowed = (rng.random((B, T, T)) < 0.5) | np.eye(T, dtype=bool)[None]
    got, _ = attn.apply(params, jnp.asarray(x, jnp.float32), mask=jnp.asarray(allowed))
    np.testing.assert_allclose(got, _reference(params, x, _full_mask(allowed)), atol=1e-5)


@pytest.mark.parametrize("chunks", [(2, 1, 1, 2), (1, 5), (6,)])
def test_cached_prefill_and_decode_equal_causal_mask(chunks):
    """Prefill then T=1 and multi-token steps: the slot mask from the index alone."""
    attn, params, x = _setup()
    xs = jnp.asarray(x, jnp.float32)
    cache = init_kv_cache(B, T + 3, HKV, DH)  # spare unwritten slots must stay hidden
    assert cache["k"].shape == (B, HKV, T + 3, DH) and cache_slots(cache) == T + 3
    outs, start = [], 0
    for size in chunks:
        out, cache = attn.apply(params, xs[:, start : start + size], cache=cache)
        outs.append(out)
        start += size
    want = _reference(params, x, _full_mask(CAUSAL))
    np.testing.assert_allclose(jnp.concatenate(outs, 1), want, atol=1e-5)


def test_cached_multi_token_step_with_explicit_mask():
    """SJD / ZipAR style: a [T, S] mask over the cache for a block of new tokens at an offset;
    unwritten slots are hidden even where the caller's mask allows them."""
    attn, params, x = _setup()
    xs = jnp.asarray(x, jnp.float32)
    slots = T + 2
    cache = init_kv_cache(B, slots, HKV, DH)
    _, cache = attn.apply(params, xs[:, :2], cache=cache)
    block = np.zeros((T - 2, slots), bool)
    block[:, :2] = True  # everyone sees the prefix
    block[np.arange(T - 2), 2 + np.arange(T - 2)] = True  # and itself
    block[1:, 2] = True  # queries after the first also see the first new token
    block[:, T:] = True  # never-written slots: the layer must hide them anyway
    got, _ = attn.apply(params, xs[:, 2:], cache=cache, mask=jnp.asarray(block))
    allowed = np.zeros((T, T), bool)
    allowed[:2] = CAUSAL[:2]
    allowed[2:] = block[:, :T]
    want = _reference(params, x, _full_mask(allowed))[:, 2:]
    np.testing.assert_allclose(got, want, atol=1e-5)


def test_slot_mask_values():
    np.testing.assert_array_equal(
        slot_mask(2, 5, 1, causal=True),
        [[1, 1, 0, 0, 0], [1, 1, 1, 0, 0]],
    )
    np.testing.assert_array_equal(slot_mask(2, 5, 1, causal=False), [[1, 1, 1, 0, 0]] * 2)


def test_fused_and_hand_kernels_agree_on_gqa():
    rng = np.random.default_rng(1)
    q = jnp.asarray(rng.normal(size=(B, T, H, DH)), jnp.float32)
    k, v = (jnp.asarray(rng.normal(size=(B, T, HKV, DH)), jnp.float32) for _ in range(2))
    hand = dot_product_attention(q, k, v, jnp.asarray(CAUSAL))
    np.testing.assert_allclose(fused_attention(q, k, v, None, causal=True), hand, atol=1e-5)
    heads_first = dot_product_attention(
        q, k.swapaxes(1, 2), v.swapaxes(1, 2), jnp.asarray(CAUSAL), heads_first=True
    )
    np.testing.assert_allclose(heads_first, hand, atol=1e-6)


def test_masks_keep_batch_and_head_axes_at_one():
    """A [T, S] mask (what a cache implies, what SJD / ZipAR pass) stays [1, 1, T, S]; a
    per-row [B, T, S] mask (t2i captions) gains only a unit head axis."""
    assert _mask4(slot_mask(3, 8, 2, causal=True), 3, 8).shape == (1, 1, 3, 8)
    assert _mask4(jnp.ones((B, 3, 8), bool), 3, 8).shape == (B, 1, 3, 8)
    with pytest.raises(ValueError, match="does not fit"):
        _mask4(jnp.ones((3, 7), bool), 3, 8)
