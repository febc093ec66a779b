"""MAR as a user reaches it: a KL tokenizer trained by ``train_tokenizer``, ``train_generator``
over its extracted float latents, ``load_generator`` -> ``.sampler(...)``, CFG, and
``experiments/sample.py``, the AOT check of its train step (which also shows MAR refusing a
discrete tokenizer)."""

from __future__ import annotations

import codes_setup
import jax
import numpy as np
import pytest

MODEL = dict(family="mar", preset="MAR-tiny", num_classes=codes_setup.CLASSES, head_depth=1,
             head_width=32, diffusion_steps=50, label_drop_prob=0.5)  # fmt: skip
LABELS = np.array([0, 1, 3, 2], np.int32)


def mar_config(folder, tokenizer, steps=3):
    config = codes_setup.generator_config(folder, tokenizer, steps, latent_dtype="float16")
    config.model = dict(MODEL)
    config.loss = dict()
    config.sampling = dict(num_iter=2, num_sampling_steps=3, cfg_scale=1.0, temperature=1.0)
    return config


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    from jaxar.recipes.generator import train_generator

    root = tmp_path_factory.mktemp("mar")
    folder = codes_setup.write_image_folder(root / "images", 16)
    tokenizer = codes_setup.train_tiny_tokenizer(root / "tok", folder, 1, preset="digits_kl")
    train_generator(mar_config(folder, tokenizer), root / "mar")
    return folder, tokenizer, root / "mar"


def test_train_generator_trains_mar_on_extracted_latents(trained):
    import json

    from jaxar.data.codes import CodesSource, ParseCodes
    from jaxar.recipes.images import image_arrays
    from jaxar.recipes.tokenizer import load_tokenizer

    folder, tokenizer_dir, workdir = trained
    records = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]
    losses = [r["loss"] for r in records if "loss" in r]
    assert len(losses) == 3 and all(np.isfinite(losses))
    source = CodesSource(workdir / "codes" / "train")
    assert source.index["layout"]["code_dtype"] == "<f2"
    row = ParseCodes(source.index["layout"]).map(source[0])
    tok = load_tokenizer(tokenizer_dir)
    images, _ = image_arrays(codes_setup.data_config(folder), "train")
    expected = np.asarray(tok.encode(images[int(row["id"]) : int(row["id"]) + 1]))[0]
    np.testing.assert_allclose(row["codes"], expected, rtol=2e-3, atol=2e-3)


def test_loaded_mar_samples_latents_with_one_compile(trained):
    from jaxar.recipes.generator import load_generator

    _, _, workdir = trained
    gen = load_generator(workdir)
    sampler = gen.sampler(cfg_scale=2.0)
    first = sampler(gen.params, LABELS, 0)
    second = sampler(gen.params, LABELS[::-1].copy(), 1)
    assert sampler.traces == 1 and gen.sampler(cfg_scale=2.0) is sampler
    for out in (first, second):
        assert out.codes.shape == (4, gen.tokenizer.num_tokens, 4)
        assert np.issubdtype(out.codes.dtype, np.floating) and np.all(np.isfinite(out.codes))
        assert out.images.shape == (4, 16, 16, 1) and out.images.dtype == np.uint8
        # 2 steps, each one transformer pass and 3 diffusion steps (guided: batch doubled)
        np.testing.assert_array_equal(out.forward_passes, 2)
        np.testing.assert_array_equal(out.head_calls, 2 * 3)
    np.testing.assert_array_equal(first.images, gen.tokenizer.decode_uint8(first.codes))
    np.testing.assert_array_equal(first.codes, sampler(gen.params, LABELS, 0).codes)
    assert not np.array_equal(first.codes, sampler(gen.params, LABELS, 7).codes)


def test_cfg_scale_one_never_reads_the_null_class(trained):
    from jaxar.recipes.generator import load_generator

    _, _, workdir = trained
    gen = load_generator(workdir)
    broken = jax.tree_util.tree_map_with_path(
        lambda path, x: x + 5.0 if "fake_latent" in jax.tree_util.keystr(path) else x, gen.params
    )
    plain = gen.sampler(cfg_scale=1.0)
    assert not plain.options.guided
    np.testing.assert_array_equal(plain(gen.params, LABELS, 3, decode=False).codes,
                                  plain(broken, LABELS, 3, decode=False).codes)  # fmt: skip
    guided = gen.sampler(cfg_scale=3.0)
    assert not np.array_equal(guided(gen.params, LABELS, 3, decode=False).codes,
                              guided(broken, LABELS, 3, decode=False).codes)  # fmt: skip


def test_sample_script_reports_diffusion_head_calls(trained, tmp_path, capsys):
    import experiments.sample as script

    _, _, workdir = trained
    out = tmp_path / "samples"
    script.main(["--workdir", str(workdir), "--out", str(out), "--num_samples", "3",
                 "--batch_size", "2", "--cfg_scale", "1.5", "--set", "num_iter=2"])  # fmt: skip
    log = capsys.readouterr().out
    assert "mar sampler: compiled in" in log and "head calls" in log
    with np.load(out / "samples.npz") as samples:
        assert samples["arr_0"].shape == (3, 16, 16, 3)
    with pytest.raises(SystemExit, match="top_k"):
        script.main(["--workdir", str(workdir), "--out", str(tmp_path / "x"), "--top_k", "5"])


def test_aot_check_compiles_the_mar_train_step_from_a_continuous_token_spec():
    import ml_collections

    from jaxar.aot import compile_target
    from jaxar.recipes.aot_target import generator_train_target

    config = ml_collections.ConfigDict(codes_setup.generator_config("unused", "unused", 4))
    config.model = dict(MODEL)
    config.loss = dict()
    config.tokens = dict(num_tokens=64, latent_dim=4)  # the digits KL tokenizer's 8x8 x 4
    report = compile_target(generator_train_target(config), (2, 1, 1))
    assert report.flops > 0 and report.device_count == 2
    # a discrete tokenizer (what family.build sees in train_generator / load_generator, here
    # its AOT stand-in): MAR refuses it
    config.tokens = dict(num_tokens=64, vocab_size=256)
    with pytest.raises(ValueError, match="MAR needs a continuous"):
        generator_train_target(config)
