"""MAR: patchify layout, the gathered encoder == MAR's token dropping, the training mask and
loss, the reveal schedule against MAR's loop, and the jitted sampler."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.stats

from jaxar.generators.mar import (
    MAR,
    mar_config,
    mar_loss,
    patchify,
    training_mask,
    truncated_mask_ratio,
    unpatchify,
)
from jaxar.sampling.mar import MARSamplingOptions, make_mar_sampler, reveal_schedule

CFG = mar_config("MAR-tiny")


@pytest.fixture(scope="module")
def params():
    model = MAR(CFG)
    tokens = jnp.zeros((2, CFG.seq_len, CFG.token_dim))
    mask = jnp.zeros((2, CFG.seq_len), bool)
    labels = jnp.zeros((2,), jnp.int32)

    def both(module, tokens, labels, mask):
        z = module(tokens, labels, mask)
        n = tokens.shape[0] * tokens.shape[1]
        return module.head(tokens.reshape(n, -1), jnp.zeros((n,), jnp.int32), z.reshape(n, -1))

    init = jax.jit(lambda rng: model.init(rng, tokens, labels, mask, method=both))
    variables = init(jax.random.key(0))
    # MAR zero-initialises the head's output layers; perturb every leaf so that all paths count
    leaves, tree = jax.tree.flatten(variables["params"])
    keys = jax.random.split(jax.random.key(1), len(leaves))
    leaves = [p + 0.05 * jax.random.normal(k, p.shape) for p, k in zip(leaves, keys)]
    return jax.tree.unflatten(tree, leaves)


def test_patchify_is_mars_channel_major_layout_and_inverts():
    cfg = mar_config("MAR-tiny", patch_size=2)
    b, g, c, p = 2, cfg.latent_grid, cfg.latent_dim, 2
    latents = np.random.default_rng(0).normal(size=(b, g * g, c)).astype(np.float32)
    tokens = np.asarray(patchify(jnp.asarray(latents), cfg))
    # MAR: x [n, c, h, w] -> reshape (n, c, h/p, p, w/p, p) -> 'nchpwq->nhwcpq' -> (n, L, c p p)
    nchw = latents.reshape(b, g, g, c).transpose(0, 3, 1, 2)
    ref = np.einsum("nchpwq->nhwcpq", nchw.reshape(b, c, g // p, p, g // p, p))
    np.testing.assert_array_equal(tokens, ref.reshape(b, (g // p) ** 2, c * p * p))
    np.testing.assert_array_equal(np.asarray(unpatchify(jnp.asarray(tokens), cfg)), latents)
    with pytest.raises(ValueError, match="expects latents"):
        patchify(jnp.zeros((2, g * g, c + 1)), cfg)


def _dropped_encoder(module, tokens, mask, cls):
    """MAR's forward_mae_encoder written with literal dropping (eager boolean indexing)."""
    cfg = module.config
    b = tokens.shape[0]
    x = module.z_proj(tokens)
    buffer = jnp.broadcast_to(cls[:, None], (b, cfg.buffer_size, x.shape[-1]))
    x = module.z_proj_ln(jnp.concatenate([buffer, x], 1) + module.encoder_pos_embed_learned)
    keep = np.concatenate([np.ones((b, cfg.buffer_size), bool), ~np.asarray(mask)], 1)
    x = jnp.asarray(np.asarray(x)[keep].reshape(b, -1, x.shape[-1]))
    for block in module.encoder_blocks:
        x, _ = block(x)
    return module.encoder_norm(x)


def test_gathered_encoder_equals_dropping_the_masked_tokens(params):
    model = MAR(CFG)
    rng = np.random.default_rng(0)
    tokens = jnp.asarray(rng.normal(size=(3, CFG.seq_len, CFG.token_dim)), jnp.float32)
    known = CFG.seq_len - math.ceil(CFG.seq_len * CFG.mask_ratio_min)  # the most training keeps
    mask = np.ones((3, CFG.seq_len), bool)
    for row in mask:
        row[rng.permutation(CFG.seq_len)[:known]] = False
    labels = jnp.asarray([1, 2, 3])
    cls = model.apply({"params": params}, labels, train=False, method=MAR.class_embedding)
    ref = model.apply({"params": params}, tokens, mask, cls, method=_dropped_encoder)
    for capacity in (CFG.train_capacity, None):
        h, positions, valid = model.apply(
            {"params": params}, tokens, jnp.asarray(mask), cls, capacity=capacity,
            method=MAR.encode,
        )  # fmt: skip
        assert np.asarray(valid).sum(1).tolist() == [CFG.buffer_size + known] * 3
        got = np.asarray(h)[np.asarray(valid)].reshape(ref.shape)
        np.testing.assert_allclose(got, np.asarray(ref), atol=1e-5)
    z_train = model.apply({"params": params}, tokens, labels, jnp.asarray(mask),
                          capacity=CFG.train_capacity)  # fmt: skip
    z_full = model.apply({"params": params}, tokens, labels, jnp.asarray(mask))
    np.testing.assert_allclose(np.asarray(z_train), np.asarray(z_full), atol=1e-5)


def test_known_tokens_change_z_and_masked_ones_do_not(params):
    model = MAR(CFG)
    rng = np.random.default_rng(1)
    tokens = rng.normal(size=(1, CFG.seq_len, CFG.token_dim)).astype(np.float32)
    mask = np.zeros((1, CFG.seq_len), bool)
    mask[0, :10] = True
    labels = jnp.asarray([4])
    z = model.apply({"params": params}, jnp.asarray(tokens), labels, jnp.asarray(mask))
    edited = tokens.copy()
    edited[0, :10] += 5.0  # masked: invisible
    z_masked = model.apply({"params": params}, jnp.asarray(edited), labels, jnp.asarray(mask))
    np.testing.assert_allclose(np.asarray(z_masked), np.asarray(z), atol=1e-6)
    edited[0, 12] += 5.0  # known: visible everywhere
    z_known = model.apply({"params": params}, jnp.asarray(edited), labels, jnp.asarray(mask))
    assert np.abs(np.asarray(z_known) - np.asarray(z)).max() > 1e-3
    null = model.apply({"params": params}, jnp.asarray(tokens), jnp.asarray([CFG.num_classes]),
                       jnp.asarray(mask))  # fmt: skip
    forced = model.apply({"params": params}, jnp.asarray(tokens), labels, jnp.asarray(mask),
                         force_drop=jnp.asarray([True]))  # fmt: skip
    np.testing.assert_allclose(np.asarray(null), np.asarray(forced), atol=1e-6)
    assert np.abs(np.asarray(null) - np.asarray(z)).max() > 1e-3


def test_mask_ratio_is_mars_truncated_normal():
    keys = jax.random.split(jax.random.key(0), 4000)
    ratios = np.asarray(jax.vmap(lambda k: truncated_mask_ratio(k, 0.7))(keys))
    assert ratios.min() >= 0.7 and ratios.max() <= 1.0
    ref = scipy.stats.truncnorm((0.7 - 1.0) / 0.25, 0, loc=1.0, scale=0.25)
    assert abs(ratios.mean() - ref.mean()) < 0.01
    assert abs(ratios.std() - ref.std()) < 0.01
    mask = np.asarray(training_mask(jax.random.key(3), CFG, 5))
    counts = mask.sum(1)
    assert len(set(counts.tolist())) == 1  # one ratio per batch
    assert math.ceil(0.7 * CFG.seq_len) <= counts[0] <= CFG.seq_len


def test_loss_is_finite_and_trains_the_head_and_transformer(params):
    model = MAR(CFG)
    rng = np.random.default_rng(2)
    batch = {
        "codes": jnp.asarray(rng.normal(size=(4, CFG.latent_grid**2, CFG.latent_dim)), jnp.float32),
        "label": jnp.asarray([0, 1, 2, 3]),
    }
    (loss, metrics), grads = jax.jit(jax.value_and_grad(
        lambda p: mar_loss(model, p, batch, jax.random.key(0)), has_aux=True
    ))(params)  # fmt: skip
    assert np.isfinite(float(loss)) and float(loss) > 0
    assert 0.7 <= float(metrics["mask_fraction"]) <= 1.0
    norms = {k: float(optax_norm(v)) for k, v in grads.items()}
    assert norms["diffloss"] > 0 and norms["encoder_blocks_0"] > 0 and norms["z_proj"] > 0
    with pytest.raises(ValueError, match="continuous latents"):
        mar_loss(model, params, {**batch, "codes": batch["codes"].astype(jnp.int32)},
                 jax.random.key(0))  # fmt: skip


def optax_norm(tree):
    return jnp.sqrt(sum(jnp.sum(jnp.square(x)) for x in jax.tree.leaves(tree)))


def _mars_loop_counts(seq_len: int, num_iter: int):
    """MAR's sample_tokens bookkeeping with boolean masks (orders = identity)."""
    mask = np.ones(seq_len, bool)
    counts, cfg_lens = [], []
    for step in range(num_iter):
        ratio = np.cos(math.pi / 2.0 * (step + 1) / num_iter)
        mask_len = np.floor(seq_len * ratio)
        mask_len = max(1.0, min(mask.sum() - 1.0, mask_len))
        mask_next = np.zeros(seq_len, bool)
        mask_next[: int(mask_len)] = True
        to_pred = mask if step >= num_iter - 1 else np.logical_xor(mask, mask_next)
        counts.append(int(to_pred.sum()))
        cfg_lens.append(mask_len)
        mask = mask_next
    return counts, cfg_lens


@pytest.mark.parametrize("seq_len,num_iter", [(16, 4), (64, 16), (256, 64), (256, 256), (5, 9)])
def test_reveal_schedule_matches_mars_loop(seq_len, num_iter):
    sched = reveal_schedule(seq_len, num_iter)
    counts, cfg_lens = _mars_loop_counts(seq_len, num_iter)
    assert sched.count.tolist() == counts
    assert sched.mask_len.tolist() == cfg_lens
    assert sched.count.sum() == seq_len  # every token predicted exactly once
    assert sched.max_count == max(1, max(counts))


def test_sampler_is_one_compile_and_seeded(params):
    sampler = make_mar_sampler(CFG, num_iter=4, num_sampling_steps=10, cfg_scale=2.0)
    labels = jnp.asarray([0, 1, 2])
    a = np.asarray(sampler(params, labels, jax.random.key(0)))
    b = np.asarray(sampler(params, labels, jax.random.key(0)))
    c = np.asarray(sampler(params, labels, jax.random.key(1)))
    assert a.shape == (3, CFG.latent_grid**2, CFG.latent_dim) and np.isfinite(a).all()
    np.testing.assert_array_equal(a, b)
    assert np.abs(a - c).max() > 1e-3
    assert sampler.forward_passes_per_image == 4 and sampler.head_calls_per_image == 40
    plain = make_mar_sampler(CFG, num_iter=4, num_sampling_steps=10)
    assert np.abs(np.asarray(plain(params, labels, jax.random.key(0))) - a).max() > 1e-3
    with pytest.raises(ValueError, match="top_k"):
        MARSamplingOptions(top_k=5)
    with pytest.raises(ValueError, match="diffusion_sampler"):
        MARSamplingOptions(diffusion_sampler="euler")
    with pytest.raises(ValueError, match="labels"):
        sampler(params, jnp.asarray([CFG.num_classes]), jax.random.key(0))


def test_scanned_stacks_give_the_same_z(params):
    from jaxar.layers.scan import match_layer_layout

    cfg = mar_config("MAR-tiny", encoder_depth=2, decoder_depth=2)
    scanned_cfg = mar_config("MAR-tiny", encoder_depth=2, decoder_depth=2, scan_layers=True)
    model = MAR(cfg)
    tokens = jnp.asarray(np.random.default_rng(4).normal(size=(2, cfg.seq_len, cfg.token_dim)))
    mask = jnp.asarray(np.arange(cfg.seq_len)[None].repeat(2, 0) < 12)
    labels = jnp.asarray([1, 2])
    per_layer = model.init(jax.random.key(5), tokens, labels, mask)["params"]
    stacked = match_layer_layout(per_layer, True)
    assert "encoder_blocks" in stacked and "decoder_blocks_0" not in stacked
    z = model.apply({"params": per_layer}, tokens, labels, mask)
    z_scan = MAR(scanned_cfg).apply({"params": stacked}, tokens, labels, mask)
    np.testing.assert_allclose(np.asarray(z_scan), np.asarray(z), atol=1e-5)
