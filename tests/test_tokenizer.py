"""Tokenizer: every quantizer end to end (gradients to the encoder, code round trip), input
validation, presets, and the training task (GAN via stop_gradient, EMA state)."""

import dataclasses

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxar.tokenizers import LossConfig, Tokenizer, get_preset, make_tokenizer_task, vq16


def key(seed):
    """Cheap-to-compile PRNG key for parameter init."""
    return jax.random.key(seed, impl="unsafe_rbg")


TINY = dict(ch=8, z_channels=8, norm_groups=4, codebook_size=32, code_dim=4)
PRESET_NAMES = ["digits_vq", "digits_rq", "digits_msvq", "digits_fsq", "digits_lfq", "digits_ibq"]
IMAGES = jax.random.uniform(jax.random.key(0), (2, 16, 16, 1), minval=-1, maxval=1)


def tiny(name, **overrides):
    cfg = get_preset(name, **TINY, **overrides)
    if cfg.quantizer == "fsq":
        cfg = dataclasses.replace(cfg, fsq_levels=(5, 4, 3))
    return cfg


@pytest.mark.parametrize("name", PRESET_NAMES)
def test_gradients_reach_encoder_and_codes_roundtrip(name):
    cfg = tiny(name)
    model = Tokenizer(cfg)
    variables = model.init({"params": key(1)}, IMAGES)

    def loss(params):  # eager: op compilations are shared by all parametrizations
        recon, out = model.apply({**variables, "params": params}, IMAGES, train=True)
        return jnp.mean((recon - IMAGES) ** 2) + out.loss, (recon, out)

    grads, (recon, out) = jax.grad(loss, has_aux=True)(variables["params"])
    codes = model.apply(variables, IMAGES, method=Tokenizer.encode_to_codes)
    latents = model.apply(variables, codes, method=lambda m, c: m.quantizer.decode_codes(c))
    images = model.apply(variables, codes, method=Tokenizer.decode_codes)
    enc_grads = nn.unbox(grads["encoder"])
    assert all(np.all(np.isfinite(g)) for g in jax.tree.leaves(enc_grads))
    assert np.abs(np.asarray(enc_grads["conv_in"]["kernel"])).sum() > 0
    expected_shape = cfg.code_shape(16)
    if cfg.quantizer == "msvq":
        assert tuple(c.shape[1:] for c in codes) == expected_shape
    else:
        assert codes.shape[1:] == expected_shape and codes.dtype == jnp.int32
    for a, b in zip(jax.tree.leaves(codes), jax.tree.leaves(out.codes)):
        np.testing.assert_array_equal(a, b)
    np.testing.assert_allclose(latents, out.quantized, atol=1e-5)
    np.testing.assert_allclose(images, np.clip(recon, -1, 1), atol=1e-4)
    assert images.shape == IMAGES.shape


def test_bad_images_raise():
    model = Tokenizer(tiny("digits_vq"))
    variables = model.init(key(1), IMAGES)
    with pytest.raises(ValueError, match="channels"):
        model.apply(variables, jnp.zeros((2, 16, 16, 3)))
    with pytest.raises(ValueError, match="divisible"):
        model.apply(variables, jnp.zeros((2, 15, 16, 1)))
    with pytest.raises(ValueError, match=r"\[B, H, W, C\]"):
        model.apply(variables, jnp.zeros((16, 16, 1)))
    with pytest.raises(ValueError, match="divisible"):
        vq16().code_shape(200)
    with pytest.raises(ValueError, match="unknown quantizer"):
        get_preset("digits_vq", quantizer="nope")
    with pytest.raises(ValueError, match="norm_groups"):
        get_preset("digits_vq", norm_groups=5)


def test_vq16_preset_matches_llamagen():
    cfg = vq16()
    assert (cfg.ch, cfg.ch_mult, cfg.num_res_blocks, cfg.z_channels) == (
        128,
        (1, 1, 2, 2, 4),
        2,
        256,
    )
    assert (cfg.codebook_size, cfg.code_dim, cfg.l2_norm, cfg.beta) == (16384, 8, True, 0.25)
    assert cfg.code_shape(256) == (16, 16) and cfg.downsample_factor == 16


def _grad_norm(tree):
    return float(sum(jnp.sum(jnp.square(x)) for x in jax.tree.leaves(tree)))


def test_task_gan_and_ema_state():
    cfg = tiny("digits_vq", use_ema=True, dead_code_steps=5)
    loss_cfg = LossConfig(disc_weight=0.5, disc_start=10, disc_channels=4, disc_layers=2)
    task = make_tokenizer_task(cfg, loss_cfg, (16, 16, 1), preview_images=np.asarray(IMAGES))
    batch = {"image": IMAGES, "label": jnp.zeros((2,), jnp.int32)}
    params, state = task.init(key(0), batch)
    assert set(params) == {"model", "disc"} and set(state) == {"vq_stats"}

    def step(params, state, step):
        grad_fn = jax.grad(task.loss_fn, has_aux=True)
        return grad_fn(params, state, batch, jax.random.key(1), step)

    grads_before, (metrics_before, _) = step(nn.unbox(params), state, 0)
    grads_after, (metrics, new_state) = step(nn.unbox(params), state, 10)
    assert _grad_norm(grads_before["disc"]) == 0.0  # discriminator off before disc_start
    assert _grad_norm(grads_after["disc"]) > 0.0
    assert float(metrics_before["disc_weight"]) == 0.0 and float(metrics["disc_weight"]) == 0.5
    names = ("loss", "recon_loss", "gen_adv_loss", "disc_loss", "adaptive_weight", "quant/usage")
    for name in names:
        assert np.isfinite(float(metrics[name])), name
    old = state["vq_stats"]["quantizer"]["codebook"]
    new = new_state["vq_stats"]["quantizer"]["codebook"]
    assert not np.allclose(old, new)  # EMA update happened and is returned as state
    assert task.sample_images is None  # EMA codebook: needs model_state


def test_task_without_gan_has_model_params_only():
    task = make_tokenizer_task(tiny("digits_fsq"), LossConfig(), (16, 16, 1), preview_images=IMAGES)
    params, state = task.init(key(0), {"image": IMAGES})
    assert set(params) == {"model"} and state == {}
    grid = task.sample_images(nn.unbox(params), jax.random.key(0))
    assert grid.shape == (4, 16, 16, 1) and grid.dtype == np.uint8
    np.testing.assert_array_equal(grid[:2], np.round((np.asarray(IMAGES) + 1) * 127.5))
    with pytest.raises(ValueError, match="channels"):
        make_tokenizer_task(tiny("digits_fsq"), LossConfig(), (16, 16, 3))
    with pytest.raises(ValueError, match="lpips"):
        make_tokenizer_task(tiny("digits_fsq"), LossConfig(perceptual_weight=1.0), (16, 16, 1))
