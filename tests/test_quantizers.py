"""Quantizers: shapes, straight-through gradients, code round trips, stats, EMA, restarts."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxar.quantizers import (
    FiniteScalarQuantizer,
    IndexBackpropQuantizer,
    LookupFreeQuantizer,
    MultiScaleQuantizer,
    ResidualQuantizer,
    VectorQuantizer,
    usage_and_perplexity,
)
from jaxar.quantizers.fsq import round_ste
from jaxar.quantizers.multiscale import area_matrix, bicubic_matrix, phi_index


def key(seed):
    """Cheap-to-compile PRNG key for parameter init."""
    return jax.random.key(seed, impl="unsafe_rbg")


QUANTIZERS = {
    "vq": (VectorQuantizer(codebook_size=32, code_dim=4), 4),
    "vq_plain": (
        VectorQuantizer(codebook_size=32, code_dim=4, l2_norm=False, entropy_weight=0.1),
        4,
    ),
    "rq": (ResidualQuantizer(codebook_size=32, code_dim=4, depth=2), 4),
    "msvq": (MultiScaleQuantizer(codebook_size=32, code_dim=4, scales=(1, 2, 4, 6, 8)), 4),
    "fsq": (FiniteScalarQuantizer(levels=(5, 4, 3)), 3),
    "lfq": (LookupFreeQuantizer(code_dim=4, entropy_weight=0.1), 4),
    "ibq": (IndexBackpropQuantizer(codebook_size=32, code_dim=4), 4),
}


def latents(dim, seed=0):
    return jax.random.normal(jax.random.key(seed), (2, 8, 8, dim))  # as the tokenizer tests


@pytest.mark.parametrize("name", sorted(QUANTIZERS))
def test_forward_roundtrip_and_gradient(name):
    q, dim = QUANTIZERS[name]
    z = latents(dim)
    variables = q.init(key(1), z)
    weights = jax.random.normal(jax.random.key(2), z.shape)

    def run(variables, z):  # eager: op compilations are shared across tests
        out = q.apply(variables, z, train=True)
        codes = q.apply(variables, z, method=q.encode_to_codes)
        decoded = q.apply(variables, codes, method=q.decode_codes)

        def objective(z):
            o = q.apply(variables, z, train=True)
            return jnp.sum(o.quantized * weights) + o.loss

        return out, codes, decoded, jax.grad(objective)(z)

    out, codes, decoded, grad = run(variables, z)
    assert out.quantized.shape == z.shape and out.quantized.dtype == z.dtype
    assert out.loss.shape == () and set(out.stats) == {"usage", "perplexity"}
    for a, b in zip(jax.tree.leaves(codes), jax.tree.leaves(out.codes)):
        assert a.dtype == jnp.int32
        np.testing.assert_array_equal(a, b)
    np.testing.assert_allclose(decoded, out.quantized, atol=1e-5)
    assert np.all(np.isfinite(grad)) and np.abs(grad).sum() > 0


@pytest.mark.parametrize("name", sorted(QUANTIZERS))
def test_bad_latents_raise(name):
    q, dim = QUANTIZERS[name]
    variables = q.init(key(1), latents(dim))
    with pytest.raises(ValueError, match="channels"):
        q.apply(variables, latents(dim + 1))
    with pytest.raises(ValueError, match="latents"):
        q.apply(variables, jnp.zeros((4, 4, dim)))


def test_usage_and_perplexity_hand_examples():
    uniform = usage_and_perplexity(jnp.tile(jnp.arange(8), 3), 8)
    np.testing.assert_allclose(uniform["perplexity"], 8.0, rtol=1e-6)
    np.testing.assert_allclose(uniform["usage"], 100.0)
    single = usage_and_perplexity(jnp.full((10,), 3), 16)
    np.testing.assert_allclose(single["perplexity"], 1.0, rtol=1e-6)
    np.testing.assert_allclose(single["usage"], 100.0 / 16)
    half = usage_and_perplexity(jnp.array([0, 0, 1, 1]), 4)
    np.testing.assert_allclose(half["perplexity"], 2.0, rtol=1e-6)
    np.testing.assert_allclose(half["usage"], 50.0)


def test_vq_codes_are_nearest_and_losses():
    q = VectorQuantizer(codebook_size=16, code_dim=4, l2_norm=False, beta=0.25)
    z = latents(4)
    variables = q.init(key(1), z)
    out = q.apply(variables, z)
    book = np.asarray(variables["params"]["codebook"].value)
    flat = np.asarray(z).reshape(-1, 4)
    nearest = np.argmin(((flat[:, None] - book[None]) ** 2).sum(-1), axis=1)
    np.testing.assert_array_equal(np.asarray(out.codes).reshape(-1), nearest)
    mse = np.mean((flat - book[nearest]) ** 2)
    np.testing.assert_allclose(out.loss, 1.25 * mse, rtol=1e-5)


def test_rq_partial_sums_and_decreasing_residual():
    q, _ = QUANTIZERS["rq"]
    z = latents(4)
    variables = q.init(key(1), z)
    codes = q.apply(variables, z, method=q.encode_to_codes)
    sums = q.apply(variables, codes, method=q.partial_sums)
    assert sums.shape == (2, 8, 8, 2, 4)
    errors = [float(jnp.mean((z - sums[..., d, :]) ** 2)) for d in range(2)]
    assert errors[0] >= errors[1]


def test_fsq_index_roundtrip_over_whole_grid():
    q = FiniteScalarQuantizer(levels=(5, 4, 3))
    all_codes = jnp.arange(60, dtype=jnp.int32)
    values = q.apply({}, all_codes, method=q.decode_codes)
    assert float(values.min()) >= -1.0 and float(values.max()) <= 1.0
    np.testing.assert_array_equal(q.apply({}, values, method=q.codes_from_quantized), all_codes)
    assert len({tuple(v) for v in np.asarray(values).round(4)}) == 60


def test_fsq_rounds_to_nearest_on_hand_values():
    x = jnp.array([-1.7, -1.2, -0.4, 0.3, 0.6, 1.4, 1.8])
    np.testing.assert_array_equal(round_ste(x), np.round(np.asarray(x)))
    np.testing.assert_array_equal(jax.grad(lambda x: round_ste(x).sum())(x), np.ones(7))
    q = FiniteScalarQuantizer(levels=(5, 4, 3))
    z = jnp.array([[0.1, -0.3, 0.45], [-0.2, 0.7, -0.6]])
    bounded = np.asarray(q.apply({}, z, method=q.bound))
    expected = np.round(bounded) / np.array([2.0, 2.0, 1.0])
    np.testing.assert_allclose(q.apply({}, z, method=q.quantize), expected, rtol=1e-6)


def test_lfq_bits_and_entropy_reference():
    q = LookupFreeQuantizer(code_dim=3, entropy_weight=1.0, temperature=0.5)
    z = jnp.array([[[[0.3, -0.2, 0.1], [-1.0, -0.5, 0.4]]]])
    codes = q.apply({}, z, method=q.encode_to_codes)
    np.testing.assert_array_equal(codes, [[[0b101, 0b001]]])
    out = q.apply({}, z)
    book = np.array([[(k >> (2 - i)) & 1 for i in range(3)] for k in range(8)]) * 2.0 - 1
    logits = 2 * np.asarray(z).reshape(-1, 3) @ book.T / 0.5
    p = np.exp(logits - logits.max(1, keepdims=True))
    p /= p.sum(1, keepdims=True)
    sample = np.mean(-(p * np.log(p)).sum(1))
    avg = p.mean(0)
    np.testing.assert_allclose(out.losses["sample_entropy"], sample, rtol=1e-5)
    np.testing.assert_allclose(
        out.losses["codebook_entropy"], -(avg * np.log(avg)).sum(), rtol=1e-5
    )


def test_ibq_gradient_reaches_every_code():
    q, _ = QUANTIZERS["ibq"]
    z = latents(4)
    variables = q.init(key(1), z)
    weights = jax.random.normal(jax.random.key(2), z.shape)
    grads = jax.grad(lambda v: jnp.sum(q.apply(v, z).quantized * weights))(variables)
    row_norms = np.linalg.norm(np.asarray(grads["params"]["codebook"].value), axis=1)
    assert np.all(row_norms > 0)  # even codes never selected get gradient


def test_msvq_next_scale_inputs_and_resizing():
    q, _ = QUANTIZERS["msvq"]
    z = latents(4)
    variables = q.init(key(1), z)
    codes = q.apply(variables, z, method=q.encode_to_codes)
    assert [c.shape for c in codes] == [(2, s, s) for s in (1, 2, 4, 6, 8)]
    inputs = q.apply(variables, codes, method=q.next_scale_inputs)
    assert inputs.shape == (2, 4 + 16 + 36 + 64, 4)
    first = q.apply(
        variables, codes[:1] + tuple(c * 0 for c in codes[1:]), method=q.next_scale_inputs
    )
    np.testing.assert_allclose(first[:, :4], inputs[:, :4], atol=1e-6)  # depends on scale 1 only
    np.testing.assert_allclose(area_matrix(4, 2), [[0.5, 0.5, 0, 0], [0, 0, 0.5, 0.5]])
    np.testing.assert_allclose(bicubic_matrix(3, 7).sum(1), 1.0, atol=1e-6)
    np.testing.assert_allclose(bicubic_matrix(5, 5), np.eye(5), atol=1e-7)
    assert [phi_index(i, 10, 4) for i in range(10)] == [
        0,
        0,
        1,
        1,
        1,
        2,
        2,
        3,
        3,
        3,
    ]  # 7/9: tie, as VAR
    with pytest.raises(ValueError, match="last scale"):
        q.apply(variables, jax.random.normal(jax.random.key(0), (2, 4, 4, 4)))


def test_msvq_resize_matches_torch():
    torch = pytest.importorskip("torch")
    x = np.random.default_rng(0).normal(size=(1, 2, 5, 5)).astype(np.float32)
    up = torch.nn.functional.interpolate(torch.from_numpy(x), size=(13, 13), mode="bicubic")
    down = torch.nn.functional.interpolate(torch.from_numpy(x), size=(3, 3), mode="area")
    m_up, m_down = bicubic_matrix(5, 13), area_matrix(5, 3)
    np.testing.assert_allclose(m_up @ x[0, 0] @ m_up.T, up[0, 0].numpy(), atol=1e-5)
    np.testing.assert_allclose(m_down @ x[0, 1] @ m_down.T, down[0, 1].numpy(), atol=1e-6)


def test_ema_update_moves_codes_toward_assigned_outputs():
    q = VectorQuantizer(codebook_size=8, code_dim=4, l2_norm=False, use_ema=True, ema_decay=0.9)
    z = latents(4)
    variables = q.init(key(1), z)
    assert "codebook" not in variables.get("params", {})
    out, state = q.apply(variables, z, train=True, mutable=["vq_stats"])
    old = np.asarray(variables["vq_stats"]["codebook"])
    new = np.asarray(state["vq_stats"]["codebook"])
    flat, codes = np.asarray(z).reshape(-1, 4), np.asarray(out.codes).reshape(-1)
    used = np.unique(codes)
    for k in used:
        mean = flat[codes == k].mean(0)
        assert np.linalg.norm(new[k] - mean) < np.linalg.norm(old[k] - mean)
    unused = np.setdiff1d(np.arange(8), used)
    np.testing.assert_allclose(new[unused], old[unused], rtol=1e-4, atol=1e-6)
    # not mutable / not training: no update
    out_eval = q.apply(variables, z, train=False)
    np.testing.assert_array_equal(out_eval.codes, out.codes)


def test_dead_code_restart_replaces_unused_codes():
    q = VectorQuantizer(
        codebook_size=32, code_dim=4, l2_norm=False, use_ema=True, dead_code_steps=2
    )
    z = latents(4)[:, :2, :2]  # 8 vectors: most codes stay unused
    variables = q.init(key(1), z)
    state, seen = {"vq_stats": variables["vq_stats"]}, []
    for step in range(2):
        out, state = q.apply(
            state, z, train=True, mutable=["vq_stats"], rngs={"quantizer": jax.random.key(step)}
        )
        state = dict(state)
        seen.append(np.asarray(out.codes).reshape(-1))
    book = np.asarray(state["vq_stats"]["codebook"])
    old = np.asarray(variables["vq_stats"]["codebook"])
    flat = np.asarray(z).reshape(-1, 4)
    unused = np.setdiff1d(np.arange(32), np.concatenate(seen))  # unused for 2 steps
    assert len(unused) > 0
    for k in unused:  # each restarted code is now one of the batch's encoder outputs
        assert np.min(np.abs(flat - book[k]).max(1)) < 1e-6
        assert not np.allclose(book[k], old[k])
    np.testing.assert_array_equal(np.asarray(state["vq_stats"]["unused_steps"])[unused], 0)
    with pytest.raises(ValueError, match="use_ema"):
        VectorQuantizer(codebook_size=8, code_dim=4, dead_code_steps=3).init(key(0), z)


@pytest.mark.parametrize("l2_norm", [False, True])
def test_vq_straight_through_passes_the_output_gradient_exactly(l2_norm):
    """d sum(quantized * w) / dz is w through the identity (times the l2-normalisation
    Jacobian when configured): the codebook lookup itself passes no gradient."""
    from jaxar.quantizers.base import l2_normalize

    q = VectorQuantizer(codebook_size=32, code_dim=4, l2_norm=l2_norm)
    z = latents(4)
    variables = q.init(key(1), z)
    weights = jax.random.normal(jax.random.key(2), z.shape)
    grad = jax.grad(lambda z: jnp.sum(q.apply(variables, z).quantized * weights))(z)
    prepare = l2_normalize if l2_norm else (lambda x: x)
    expected = jax.grad(lambda z: jnp.sum(prepare(z) * weights))(z)
    assert np.abs(expected).sum() > 0
    np.testing.assert_allclose(grad, expected, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("eps", [1e-5, 0.5])  # a large eps makes the Laplace smoothing visible
def test_vq_ema_update_is_exact(eps):
    """One EMA step against a numpy computation of LlamaGen/VQ-VAE-2's update."""
    decay, k, d = 0.9, 8, 4
    q = VectorQuantizer(
        codebook_size=k, code_dim=d, l2_norm=False, use_ema=True, ema_decay=decay, ema_eps=eps
    )
    z = latents(d)
    variables = q.init(key(1), z)
    out, state = q.apply(variables, z, train=True, mutable=["vq_stats"])
    stats, new = variables["vq_stats"], state["vq_stats"]
    flat = np.asarray(z, np.float64).reshape(-1, d)
    codes = np.asarray(out.codes).reshape(-1)
    counts = np.bincount(codes, minlength=k)
    sums = np.zeros((k, d))
    np.add.at(sums, codes, flat)
    cluster = decay * np.asarray(stats["cluster_size"]) + (1 - decay) * counts
    embed = decay * np.asarray(stats["embed_sum"]) + (1 - decay) * sums
    total = cluster.sum()
    book = embed / ((cluster + eps) / (total + k * eps) * total)[:, None]
    np.testing.assert_allclose(new["cluster_size"], cluster, rtol=1e-5)
    np.testing.assert_allclose(new["embed_sum"], embed, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(new["codebook"], book, rtol=1e-4, atol=1e-6)
    assert len(np.unique(codes)) >= 3  # several codes really updated
