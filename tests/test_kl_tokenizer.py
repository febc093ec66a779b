"""Continuous (KL) tokenizers: the diagonal Gaussian bottleneck against a numpy reference, the
LDM / MAR KL-16 layout, and the user path: train_tokenizer -> latent_scale.json ->
load_tokenizer -> scaled latents -> extracted float latents on disk."""

from __future__ import annotations

import json

import codes_setup
import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from jaxar.quantizers import DiagonalGaussianBottleneck
from jaxar.tokenizers.autoencoder import Tokenizer, TokenizerConfig, get_preset


def moments(dim=4, seed=0, batch=2):
    return jax.random.normal(jax.random.key(seed), (batch, 8, 8, 2 * dim)) * 2.0


def test_bottleneck_matches_numpy_reference_and_samples_with_the_posterior_std():
    q = DiagonalGaussianBottleneck(code_dim=4, kl_weight=0.5)
    m = moments()
    m = m.at[0, 0, 0, 4].set(40.0)  # a logvar beyond the clamp
    ref_mean, ref_logvar = np.split(np.asarray(m, np.float64), 2, axis=-1)
    ref_logvar = np.clip(ref_logvar, -30.0, 20.0)
    ref_kl = np.mean(0.5 * (ref_mean**2 + np.exp(ref_logvar) - 1.0 - ref_logvar))
    out = q.apply({}, m, train=False)
    np.testing.assert_allclose(out.quantized, ref_mean, rtol=1e-6)
    np.testing.assert_allclose(out.codes, ref_mean, rtol=1e-6)
    np.testing.assert_allclose(out.losses["kl"], ref_kl, rtol=1e-5)
    np.testing.assert_allclose(out.loss, 0.5 * ref_kl, rtol=1e-5)
    big = moments(batch=32)  # 8192 latents, logvars within the clamp
    big_mean, big_logvar = np.split(np.asarray(big, np.float64), 2, axis=-1)
    sample = lambda seed: np.asarray(  # noqa: E731
        q.apply({}, big, train=True, rngs={"quantizer": jax.random.key(seed)}).quantized
    )
    noise = (sample(3) - big_mean) / np.exp(0.5 * big_logvar)
    assert abs(noise.mean()) < 0.05 and abs(noise.std() - 1.0) < 0.05
    np.testing.assert_array_equal(sample(3), sample(3))
    assert not np.allclose(sample(3), sample(4))
    means_only = DiagonalGaussianBottleneck(code_dim=4, sample_latents=False)
    np.testing.assert_allclose(means_only.apply({}, m, train=True).quantized, ref_mean, rtol=1e-6)
    np.testing.assert_allclose(q.apply({}, m, method=q.encode_to_codes), ref_mean, rtol=1e-6)


def test_bottleneck_gradient_is_reparameterised():
    q = DiagonalGaussianBottleneck(code_dim=2, kl_weight=0.0)
    m = moments(dim=2)
    rng = jax.random.key(5)
    grad = jax.grad(lambda m: q.apply({}, m, train=True, rngs={"quantizer": rng}).quantized.sum())
    g = np.asarray(grad(m))
    sample = q.apply({}, m, train=True, rngs={"quantizer": rng}).quantized
    std = np.exp(0.5 * np.clip(np.asarray(m[..., 2:]), -30, 20))
    noise = (np.asarray(sample) - np.asarray(m[..., :2])) / std
    np.testing.assert_allclose(g[..., :2], 1.0, rtol=1e-6)  # d sample / d mean
    np.testing.assert_allclose(g[..., 2:], 0.5 * std * noise, rtol=1e-4, atol=1e-6)


def test_bottleneck_rejects_wrong_channels():
    q = DiagonalGaussianBottleneck(code_dim=4)
    with pytest.raises(ValueError, match="expected 8 latent channels"):
        q.apply({}, jnp.zeros((1, 4, 4, 4)))
    with pytest.raises(ValueError, match="expected 4 latent channels"):
        q.apply({}, jnp.zeros((1, 4, 4, 8)), method=q.decode_codes)


def test_kl16_preset_has_mar_vae_layout():
    cfg = get_preset("kl16")
    assert cfg.continuous and (cfg.code_dim, cfg.moments_dim, cfg.encoder_channels) == (16, 32, 32)
    assert cfg.code_shape(256) == (16, 16, 16)
    shapes = nn.unbox(
        jax.eval_shape(lambda: Tokenizer(cfg).init(jax.random.key(0), jnp.zeros((1, 32, 32, 3))))
    )["params"]
    assert shapes["encoder"]["conv_out"]["kernel"].shape == (3, 3, 512, 32)
    assert shapes["quant_conv"]["kernel"].shape == (1, 1, 32, 32)
    assert shapes["post_quant_conv"]["kernel"].shape == (1, 1, 16, 16)
    assert shapes["decoder"]["conv_in"]["kernel"].shape == (3, 3, 16, 512)
    assert "quantizer" not in shapes  # the bottleneck has no parameters
    assert not any("attn" in name for name in shapes["decoder"] if name.startswith("conv"))
    assert any("attn" in name for name in shapes["encoder"])
    with pytest.raises(ValueError, match="no code vocabulary"):
        _ = cfg.vocab_size


def test_tokenizer_roundtrip_uses_means_in_eval():
    cfg = get_preset("digits_kl")
    model = Tokenizer(cfg)
    images = jax.random.uniform(jax.random.key(1), (2, 16, 16, 1), minval=-1, maxval=1)
    init = jax.jit(lambda k: model.init({"params": k, "quantizer": k}, images))
    variables = init(jax.random.key(0))

    @jax.jit
    def run(variables, images):
        recon, out = model.apply(variables, images)
        latents = model.apply(variables, images, method=Tokenizer.encode_to_codes)
        return recon, out, latents, model.apply(variables, latents, method=Tokenizer.decode_codes)

    recon, out, latents, decoded = run(variables, images)
    assert latents.shape == (2, 8, 8, 4) and latents.dtype == jnp.float32
    np.testing.assert_allclose(out.codes, latents, rtol=1e-6)
    np.testing.assert_allclose(decoded, jnp.clip(recon, -1, 1), rtol=1e-5, atol=1e-5)


@pytest.fixture(scope="module")
def kl_workdir(tmp_path_factory):
    root = tmp_path_factory.mktemp("kl")
    images = codes_setup.write_image_folder(root / "images", 16)
    workdir = codes_setup.train_tiny_tokenizer(root / "tok", images, 2, preset="digits_kl")
    return images, workdir


def test_train_tokenizer_stores_a_scale_that_unit_normalises_latents(kl_workdir):
    from jaxar.recipes.images import image_arrays
    from jaxar.recipes.tokenizer import LATENT_SCALE_FILE, evaluate_tokenizer, load_tokenizer

    folder, workdir = kl_workdir
    stored = json.loads((workdir / LATENT_SCALE_FILE).read_text())
    tok = load_tokenizer(workdir)
    raw = load_tokenizer(workdir, latent_scale=False)
    np.testing.assert_allclose(tok.latent_scale, stored["scale"], rtol=1e-6)
    images, _ = image_arrays(codes_setup.data_config(folder), "train")
    latents = np.asarray(tok.encode(images))
    assert latents.shape == (len(images), 64, 4) and latents.dtype == np.float32
    np.testing.assert_allclose(latents, np.asarray(raw.encode(images)) * tok.latent_scale,
                               rtol=1e-5, atol=1e-6)  # fmt: skip
    np.testing.assert_allclose(latents.reshape(-1, 4).std(0), 1.0, rtol=1e-3)
    # decode undoes the scale: decode(encode(x)) is the reconstruction
    np.testing.assert_allclose(tok.decode(latents), tok.reconstruct(images), atol=1e-5)
    uint8 = tok.decode_uint8(latents)
    assert uint8.dtype == np.uint8 and uint8.shape == images.shape
    assert tok.fingerprint != raw.fingerprint  # the scale is part of what codes depend on
    assert tok.weights_digest == raw.weights_digest
    explicit = load_tokenizer(workdir, latent_scale=2.0)
    np.testing.assert_allclose(explicit.latent_scale, [2.0] * 4)
    metrics = evaluate_tokenizer(tok, images)
    np.testing.assert_allclose(metrics["latent_std"], latents.std(), rtol=1e-4)
    np.testing.assert_allclose(metrics["latent_mean"], latents.mean(), rtol=1e-4, atol=1e-6)
    assert np.isfinite(metrics["psnr"])
    assert "codebook_usage" not in metrics


def test_a_scale_measured_on_other_weights_is_refused(kl_workdir, tmp_path):
    import shutil

    from jaxar.recipes.tokenizer import LATENT_SCALE_FILE, load_tokenizer

    _, workdir = kl_workdir
    copy = tmp_path / "tok"
    shutil.copytree(workdir, copy)
    stored = json.loads((copy / LATENT_SCALE_FILE).read_text())
    stored["weights_fingerprint"] = "0" * 64
    (copy / LATENT_SCALE_FILE).write_text(json.dumps(stored))
    with pytest.raises(ValueError, match="measured on other weights"):
        load_tokenizer(copy)
    (copy / LATENT_SCALE_FILE).unlink()
    with pytest.warns(UserWarning, match="unscaled"):
        assert load_tokenizer(copy).latent_scale is None


@pytest.mark.parametrize("dtype", ["bfloat16", "float16"])
def test_extracted_latents_are_stored_in_half_precision(kl_workdir, tmp_path, dtype):
    from jaxar.recipes.extraction import ensure_codes
    from jaxar.recipes.images import image_arrays
    from jaxar.recipes.tokenizer import load_tokenizer

    folder, workdir = kl_workdir
    tok = load_tokenizer(workdir)
    config = codes_setup.generator_config(folder, workdir, steps=1, latent_dtype=dtype)
    config.codes_dir = str(tmp_path / "codes")
    split_dir = ensure_codes(config, tok, tmp_path)
    index = json.loads((split_dir / "index.json").read_text())
    assert index["layout"]["code_dtype"] == {"bfloat16": "bfloat16", "float16": "<f2"}[dtype]
    from jaxar.data.codes import CodesSource, ParseCodes

    source = CodesSource(split_dir)
    parse = ParseCodes(index["layout"])
    rows = [parse.map(source[i]) for i in range(len(source))]
    stored = np.stack([r["codes"] for r in rows])
    assert stored.dtype == np.float32 and stored.shape == (16, 64, 4)
    images, _ = image_arrays(codes_setup.data_config(folder), "train")
    expected = np.asarray(tok.encode(images))[[int(r["id"]) for r in rows]]
    tolerance = 1e-2 if dtype == "bfloat16" else 1e-3
    np.testing.assert_allclose(stored, expected, rtol=tolerance, atol=tolerance)


def test_token_families_refuse_a_continuous_tokenizer(kl_workdir, tmp_path):
    from jaxar.recipes.generator import train_generator

    folder, workdir = kl_workdir
    config = codes_setup.generator_config(folder, workdir, steps=1)
    with pytest.raises(ValueError, match="no code vocabulary"):
        train_generator(config, tmp_path / "gpt")


def test_unknown_latent_dtype_is_refused():
    from jaxar.recipes.experiment import CodesOptions

    with pytest.raises(ValueError, match="latent_dtype"):
        CodesOptions(latent_dtype="int8")
    assert TokenizerConfig(quantizer="kl").moments_dim == 16
    assert not TokenizerConfig().continuous


def test_latent_scale_config_field_is_accepted():
    from jaxar.recipes.experiment import tokenizer_experiment

    c = ml_collections.ConfigDict(codes_setup_config())
    assert tokenizer_experiment(c).latent_scale_images == 32


def codes_setup_config():
    from jaxar.configs.tokenizer_digits import get_config

    c = get_config("kl")
    c.latent_scale_images = 32
    return c.to_dict()
