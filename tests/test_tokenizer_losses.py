"""Tokenizer losses: hand-computed GAN terms, adaptive weight, LPIPS, discriminator."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxar.convert.lpips import VGG16_CONV_INDICES, convert
from jaxar.tokenizers import LossConfig, Tokenizer, get_preset, make_tokenizer_task
from jaxar.tokenizers import losses as L
from jaxar.tokenizers.discriminator import PatchDiscriminator
from jaxar.tokenizers.lpips import LPIPS, load_lpips_params

SMALL_VGG = (4, 4, 8, 8, 8)


def key(seed):
    """Cheap-to-compile PRNG key for parameter init."""
    return jax.random.key(seed, impl="unsafe_rbg")


def test_hinge_and_non_saturating_hand_values():
    real, fake = jnp.array([2.0, 0.5, -1.0]), jnp.array([-2.0, 0.0, 1.0])
    # relu(1 - real) = [0, .5, 2] -> 5/6; relu(1 + fake) = [0, 1, 2] -> 1
    np.testing.assert_allclose(L.hinge_d_loss(real, fake), 0.5 * (5 / 6 + 1), rtol=1e-6)
    np.testing.assert_allclose(L.hinge_gen_loss(fake), 1 / 3, rtol=1e-6)
    softplus = lambda x: np.log1p(np.exp(x))
    expected_d = 0.5 * (np.mean(softplus(-np.asarray(real))) + np.mean(softplus(np.asarray(fake))))
    np.testing.assert_allclose(L.non_saturating_d_loss(real, fake), expected_d, rtol=1e-6)
    np.testing.assert_allclose(
        L.non_saturating_gen_loss(fake), np.mean(softplus(-np.asarray(fake))), rtol=1e-6
    )


def test_reconstruction_and_schedule():
    x, y = jnp.array([[1.0, -1.0]]), jnp.array([[0.5, 0.0]])
    np.testing.assert_allclose(L.reconstruction_loss(x, y, "l1"), 0.75)
    np.testing.assert_allclose(L.reconstruction_loss(x, y, "l2"), (0.25 + 1.0) / 2)
    assert (
        float(L.disc_weight_at(9, 10, 0.5)) == 0.0 and float(L.disc_weight_at(10, 10, 0.5)) == 0.5
    )
    with pytest.raises(ValueError, match="recon_loss"):
        LossConfig(recon_loss="l3")
    with pytest.raises(ValueError, match="shapes"):
        L.reconstruction_loss(x, y[:, :1])


def test_adaptive_weight_is_grad_norm_ratio():
    w = jnp.array([[1.0, -2.0], [0.5, 3.0]])
    a, b = np.array([[2.0, 1.0], [1.0, 0.5]]), np.array([[0.3, -0.1], [0.2, 0.4]])
    nll_grads = jax.grad(lambda w: jnp.sum((w * a) ** 2))(w)  # 2 a^2 w
    gan_grads = jax.grad(lambda w: jnp.sum(w * b))(w)  # b
    expected = np.linalg.norm(2 * a**2 * np.asarray(w)) / (np.linalg.norm(b) + 1e-4)
    np.testing.assert_allclose(L.adaptive_gan_weight(nll_grads, gan_grads), expected, rtol=1e-5)
    np.testing.assert_allclose(L.adaptive_gan_weight(nll_grads, 0 * gan_grads), 1e4)  # clipped


def test_task_adaptive_weight_matches_full_model_gradients():
    """The task computes the ratio from the decoder's last conv alone; check it against
    gradients of the whole model's losses w.r.t. that kernel."""
    cfg = get_preset("digits_fsq", ch=8, z_channels=8, norm_groups=4, fsq_levels=(5, 4, 3))
    loss_cfg = LossConfig(
        disc_weight=1.0, disc_start=0, disc_channels=4, disc_layers=2, recon_loss="l1"
    )
    task = make_tokenizer_task(cfg, loss_cfg, (16, 16, 1))
    images = jax.random.uniform(jax.random.key(0), (2, 16, 16, 1), minval=-1, maxval=1)
    params, state = task.init(key(0), {"image": images})
    params = nn.unbox(params)
    _, (metrics, _) = task.loss_fn(params, state, {"image": images}, jax.random.key(1), 5)
    model, disc = Tokenizer(cfg), PatchDiscriminator(4, 2)

    def terms(kernel):
        p = dict(params["model"])
        p["decoder"] = {**p["decoder"], "conv_out": {**p["decoder"]["conv_out"], "kernel": kernel}}
        recon, _ = model.apply({"params": p}, images, train=True)
        return jnp.mean(jnp.abs(recon - images)), -jnp.mean(
            disc.apply({"params": params["disc"]}, recon)
        )

    kernel = params["model"]["decoder"]["conv_out"]["kernel"]
    g_nll = jax.grad(lambda k: terms(k)[0])(kernel)
    g_gan = jax.grad(lambda k: terms(k)[1])(kernel)
    expected = np.linalg.norm(g_nll) / (np.linalg.norm(g_gan) + 1e-4)
    np.testing.assert_allclose(metrics["adaptive_weight"], expected, rtol=1e-4)


def test_lpips_zero_for_identical_positive_otherwise(tmp_path):
    lpips = LPIPS(channels=SMALL_VGG)
    x = jax.random.uniform(jax.random.key(0), (2, 16, 16, 3), minval=-1, maxval=1)
    y = jnp.clip(x + 0.3 * jax.random.normal(jax.random.key(1), x.shape), -1, 1)
    params = nn.unbox(lpips.init(key(2), x, x)["params"])
    same, diff = lpips.apply({"params": params}, x, x), lpips.apply({"params": params}, x, y)
    assert same.shape == (2,)
    np.testing.assert_allclose(same, 0.0, atol=1e-7)
    assert np.all(np.asarray(diff) > 0)
    grey = lpips.apply({"params": params}, x[..., :1], y[..., :1])
    assert grey.shape == (2,) and np.all(np.asarray(grey) > 0)
    # file round trip
    flat = {f"{m}.{n}": np.asarray(v) for m, sub in params.items() for n, v in sub.items()}
    np.savez(tmp_path / "lpips.npz", **flat)
    loaded = load_lpips_params(str(tmp_path / "lpips.npz"))
    np.testing.assert_allclose(lpips.apply({"params": loaded}, x, y), diff, rtol=1e-6)
    del flat["lin4.kernel"]
    np.savez(tmp_path / "bad.npz", **flat)
    with pytest.raises(ValueError, match="missing"):
        load_lpips_params(str(tmp_path / "bad.npz"))


def test_lpips_conversion_layout():
    rng = np.random.default_rng(0)
    vgg = {}
    for index, (cin, cout) in zip(VGG16_CONV_INDICES, [(3, 4), (4, 5)] + [(5, 5)] * 11):
        vgg[f"features.{index}.weight"] = rng.normal(size=(cout, cin, 3, 3))
        vgg[f"features.{index}.bias"] = rng.normal(size=(cout,))
    lin = {f"lin{k}.model.1.weight": rng.normal(size=(1, 6, 1, 1)) for k in range(5)}
    flat = convert(vgg, lin)
    assert flat["conv1_1.kernel"].shape == (3, 3, 3, 4)
    np.testing.assert_allclose(
        flat["conv1_2.kernel"][1, 2, 3, 4], vgg["features.2.weight"][4, 3, 1, 2], rtol=1e-6
    )
    np.testing.assert_allclose(
        flat["lin3.kernel"][0, 0, :, 0], lin["lin3.model.1.weight"][0, :, 0, 0], rtol=1e-6
    )
    assert len(flat) == 13 * 2 + 5


def test_patch_discriminator_shapes():
    disc = PatchDiscriminator(ch=4, num_layers=2)
    x = jnp.zeros((2, 16, 16, 1))
    logits = disc.apply(disc.init(key(0), x), x)
    assert logits.shape == (2, 2, 2, 1)
    with pytest.raises(ValueError, match="too small"):
        PatchDiscriminator(ch=4, num_layers=3).init(key(0), x)
