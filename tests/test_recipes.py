"""Recipes: config plumbing, code layouts, CLI overrides, and a tiny end-to-end demo run."""

import argparse
import json
import os

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from jaxar.recipes.cli import apply_overrides, load_config
from jaxar.recipes.codes import flat_length, flatten_codes, unflatten_codes
from jaxar.recipes.config import dataclass_from, tokenizer_config_from, train_config_from
from jaxar.recipes.families import get_family
from jaxar.train.optimizer import OptimizerConfig

CONFIGS = os.path.join(os.path.dirname(__file__), "..", "experiments", "configs")


@pytest.mark.parametrize(
    "preset, image_size, shape",
    [
        ("digits_vq", 16, (64,)),
        ("digits_rq", 16, (64, 2)),
        ("digits_msvq", 16, (1 + 4 + 16 + 36 + 64,)),
    ],
)
def test_flat_code_layout_round_trips(preset, image_size, shape):
    cfg = tokenizer_config_from({"preset": preset})
    rng = np.random.default_rng(0)
    code_shape = cfg.code_shape(image_size)
    if cfg.quantizer == "msvq":
        codes = tuple(jnp.asarray(rng.integers(0, 9, (3, h, w))) for h, w in code_shape)
    else:
        codes = jnp.asarray(rng.integers(0, 9, (3, *code_shape)))
    flat = flatten_codes(codes)
    assert flat.shape == (3, *shape)
    assert flat_length(cfg, image_size) == shape[0]
    back = unflatten_codes(flat, cfg, image_size)
    for a, b in zip(np.atleast_1d(back) if not isinstance(back, tuple) else back,
                    np.atleast_1d(codes) if not isinstance(codes, tuple) else codes):  # fmt: skip
        np.testing.assert_array_equal(a, b)
    with pytest.raises(ValueError, match="tokens per image"):
        unflatten_codes(flat[:, :-1], cfg, image_size)


def test_dataclass_from_rejects_unknown_fields_and_tuples_lists():
    cfg = dataclass_from(
        OptimizerConfig, {"learning_rate": 1e-3, "warmup_steps": 1, "total_steps": 10}
    )
    assert cfg.learning_rate == 1e-3
    with pytest.raises(ValueError, match="no fields \\['lr'\\]"):
        dataclass_from(OptimizerConfig, {"lr": 1e-3, "warmup_steps": 1, "total_steps": 10})
    tok = tokenizer_config_from({"preset": "digits_fsq", "fsq_levels": [8, 8]})
    assert tok.fsq_levels == (8, 8)


def test_configs_load_and_override():
    config = load_config(os.path.join(CONFIGS, "tokenizer_digits.py") + ":fsq")
    assert config.tokenizer.preset == "digits_fsq"
    apply_overrides(config, ["train.num_steps=7", "data.name=digits"])
    assert train_config_from(config).num_steps == 7
    with pytest.raises(KeyError, match="no such config field"):
        apply_overrides(config, ["train.num_stepz=7"])
    apply_overrides(config, ["+tokenizer.ch_mult=(1, 2, 2)"])
    assert config.tokenizer.ch_mult == (1, 2, 2)
    with pytest.raises(ValueError, match="key=value"):
        apply_overrides(config, ["train.num_steps"])
    with pytest.raises(FileNotFoundError):
        load_config("nope.py")
    with pytest.raises(ValueError, match="unknown generator family"):
        get_family("diffusion")


def test_tiny_demo_end_to_end(tmp_path):
    from jaxar.recipes.demo import run_demo

    with pytest.raises(ValueError, match="samples_per_class must be >= 2"):
        run_demo(str(tmp_path / "none"), samples_per_class=1)  # refused before any training

    report = run_demo(str(tmp_path), tokenizer_steps=4, generator_steps=4, samples_per_class=2)
    assert set(report) >= {"tokenizer", "samples", "total_minutes"}
    assert np.isfinite(report["tokenizer"]["psnr"])
    assert 0.0 <= report["samples"]["class_accuracy"] <= 1.0
    assert os.path.getsize(tmp_path / "samples_grid.png") > 0
    assert json.loads((tmp_path / "report.json").read_text())["samples"] == json.loads(
        json.dumps(report["samples"])
    )
    assert (tmp_path / "generator" / "codes" / "train" / "index.json").exists()
    # checkpoints keep the full tokenizer / model config, not just a preset name
    from jaxar.recipes.generator import load_generator
    from jaxar.train.checkpoint import restore_for_eval

    _, stored = restore_for_eval(tmp_path / "tokenizer")
    assert stored["tokenizer"]["codebook_size"] == 256 and "preset" not in stored["tokenizer"]
    _, stored = restore_for_eval(tmp_path / "generator")
    assert stored["model"]["family"] == "gpt" and "preset" not in stored["model"]
    assert stored["model"]["vocab_size"] == 256 and stored["model"]["block_size"] == 64
    assert load_generator(tmp_path / "generator").model_config.dim == stored["model"]["dim"]
    # EMA weights when asked for, raw weights otherwise (and the two really differ)
    state, _ = restore_for_eval(tmp_path / "generator")
    ema = load_generator(tmp_path / "generator", use_ema=True).params
    raw = load_generator(tmp_path / "generator", use_ema=False).params
    jax.tree.map(np.testing.assert_array_equal, ema, state["ema_params"])
    jax.tree.map(np.testing.assert_array_equal, raw, state["params"])
    assert any(
        not np.array_equal(a, b)
        for a, b in zip(jax.tree.leaves(state["ema_params"]), jax.tree.leaves(state["params"]))
    )
    # the sampling script end to end: counts, batches and outputs
    out = tmp_path / "sampled"
    flags = ["--num_samples", "5", "--batch_size", "2", "--cfg_scale", "1.5"]
    _sample_script(["--workdir", str(tmp_path / "generator"), "--out", str(out), *flags])
    with np.load(out / "samples.npz") as samples:
        assert samples["arr_0"].shape[0] == 5 and samples["arr_0"].shape[-1] == 3
        np.testing.assert_array_equal(samples["arr_1"], np.arange(5) % 10)
    assert (out / "grid.png").stat().st_size > 0


def test_generator_family_gpt_uses_tokenizer_vocab():
    class Spec:
        vocab_size, num_tokens = 37, 16

    cfg, task = get_family("gpt").build(
        {"family": "gpt", "preset": "GPT-tiny", "dim": 32, "num_heads": 2}, Spec(), {}
    )
    assert (cfg.vocab_size, cfg.block_size, cfg.dim) == (37, 16, 32)
    assert task.name
    assert isinstance(ml_collections.ConfigDict({"a": 1}).to_dict(), dict)


@pytest.mark.parametrize("family, preset, quantizer", [
    ("maskgit", "MaskGIT-tiny", "digits_vq"),
    ("randar", "RandAR-tiny", "digits_vq"),
    ("rq", "RQ-tiny", "digits_rq"),
])  # fmt: skip
def test_token_families_take_vocab_and_length_from_the_tokenizer(family, preset, quantizer):
    class Tok:
        config = tokenizer_config_from({"preset": quantizer, "codebook_size": 48})
        vocab_size, num_tokens = 48, 64

    cfg, task = get_family(family).build({"family": family, "preset": preset}, Tok(), {})
    assert (cfg.vocab_size, cfg.block_size) == (48, 64)
    if family == "rq":
        assert cfg.code_depth == Tok.config.rq_depth
    assert callable(task.loss_fn)


def test_var_family_needs_a_multiscale_tokenizer():
    class Tok:
        config = tokenizer_config_from({"preset": "digits_vq"})
        vocab_size, num_tokens, variables = 256, 64, {}

    with pytest.raises(ValueError, match="msvq"):
        get_family("var").build({"family": "var", "preset": "VAR-digits"}, Tok(), {})


def test_families_reject_model_sizes_that_do_not_match_the_tokenizer():
    class Tok:
        config = tokenizer_config_from({"preset": "digits_vq", "codebook_size": 48})
        vocab_size, num_tokens = 48, 64

    gpt = {"family": "gpt", "preset": "GPT-tiny", "dim": 32, "num_heads": 2}
    with pytest.raises(ValueError, match=r"model.vocab_size=100 does not match.*vocab_size=48"):
        get_family("gpt").build({**gpt, "vocab_size": 100}, Tok(), {})
    with pytest.raises(ValueError, match=r"model.block_size=16 does not match.*block_size=64"):
        get_family("gpt").build({**gpt, "block_size": 16}, Tok(), {})
    for family, preset in (("maskgit", "MaskGIT-tiny"), ("randar", "RandAR-tiny")):
        with pytest.raises(ValueError, match=r"model.vocab_size=47 does not match"):
            get_family(family).build(
                {"family": family, "preset": preset, "vocab_size": 47}, Tok(), {}
            )


SAMPLER_OPTIONS = [
    ("jaxar.sampling.autoregressive", "GPTSamplingOptions"),
    ("jaxar.sampling.masked", "MaskedSamplingOptions"),
    ("jaxar.sampling.random_order", "RandomOrderOptions"),
    ("jaxar.sampling.rq", "RQSamplingOptions"),
    ("jaxar.sampling.scalewise", "ScalewiseOptions"),
    ("jaxar.sampling.mar", "MARSamplingOptions"),
]


@pytest.mark.parametrize("module, name", SAMPLER_OPTIONS)
@pytest.mark.parametrize("field, value, accepted", [
    ("cfg_scale", float("nan"), "cfg_scale must be a finite number >= 0"),
    ("cfg_scale", float("inf"), "cfg_scale must be a finite number >= 0"),
    ("cfg_scale", -1.0, "cfg_scale must be a finite number >= 0"),
    ("temperature", float("nan"), "temperature must be a finite number >= 0"),
    ("temperature", float("inf"), "temperature must be a finite number >= 0"),
    ("top_p", float("nan"), r"top_p must be a number in \(0, 1\]"),
    ("top_p", 0.0, r"top_p must be a number in \(0, 1\]"),
    ("top_k", -1, "top_k must be an int >= 0"),
])  # fmt: skip
def test_every_sampler_rejects_bad_settings(module, name, field, value, accepted):
    import importlib

    options = getattr(importlib.import_module(module), name)
    options(**{field: 1.0 if field != "top_k" else 0})  # a good value passes
    with pytest.raises(ValueError, match=accepted):
        options(**{field: value})


def _sample_script(argv):
    import experiments.sample as script

    return script.main(argv)


@pytest.mark.parametrize("flags, message", [
    (["--batch_size", "0"], "--batch_size must be an integer >= 1, got 0"),
    (["--num_samples", "-3"], "--num_samples must be an integer >= 1, got -3"),
    (["--cfg_scale", "nan"], "--cfg_scale must be a finite number >= 0, got nan"),
    (["--top_p", "1.5"], r"--top_p must be a number in \(0, 1\]"),
])  # fmt: skip
def test_sample_script_checks_flags_before_any_work(tmp_path, flags, message):
    # the workdir does not exist: failing on it would mean the check came after loading
    argv = ["--workdir", str(tmp_path / "missing"), "--out", str(tmp_path / "out"), *flags]
    with pytest.raises(SystemExit, match=message):
        _sample_script(argv)


def test_sample_script_refuses_existing_outputs(tmp_path):
    (tmp_path / "file").write_text("keep me")
    argv = ["--workdir", str(tmp_path / "missing"), "--out", str(tmp_path / "file")]
    with pytest.raises(SystemExit, match=r"--out must be a folder.*is a file"):
        _sample_script(argv)
    assert (tmp_path / "file").read_text() == "keep me"
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "samples.npz").write_bytes(b"old")
    argv = ["--workdir", str(tmp_path / "missing"), "--out", str(tmp_path / "out")]
    with pytest.raises(SystemExit, match=r"already holds \['samples.npz'\]; pass --overwrite"):
        _sample_script(argv)
    with pytest.raises(FileNotFoundError, match="missing"):  # --overwrite: goes on to load
        _sample_script([*argv, "--overwrite"])


def test_strict_restore_is_reachable_from_every_config():
    for name in sorted(os.listdir(CONFIGS)):
        if name.endswith(".py") and not name.startswith("_"):
            config = load_config(os.path.join(CONFIGS, name))
            apply_overrides(config, ["train.strict_restore=True"])
            assert train_config_from(config).strict_restore is True, name


def test_packaged_configs_load_by_name():
    by_name = load_config("tokenizer_digits:msvq")
    by_path = load_config(os.path.join(CONFIGS, "tokenizer_digits.py") + ":msvq")
    assert by_name.to_dict() == by_path.to_dict() and by_name.tokenizer.preset == "digits_msvq"
    assert load_config("gpt_digits.py").model.family == "gpt"
    with pytest.raises(FileNotFoundError, match=r"nope.*packaged configs: \[.*'gpt_digits'"):
        load_config("nope")


def test_config_flags_style_overrides():
    from jaxar.recipes.cli import config_flag_overrides, setup

    assert config_flag_overrides(["--config.train.num_steps=10", "--config.seed", "3"]) == [
        "train.num_steps=10", "seed=3"]  # fmt: skip
    config, _ = setup(argparse.ArgumentParser(), ["--config", "gpt_digits", "--workdir", "w",
                      "--config.train.num_steps=7", "--set", "seed=5"])  # fmt: skip
    assert config.train.num_steps == 7 and config.seed == 5
    with pytest.raises(KeyError, match="no such config field"):
        setup(argparse.ArgumentParser(), ["--config", "gpt_digits", "--workdir", "w",
                                          "--config.train.num_stepz=7"])  # fmt: skip
    with pytest.raises(SystemExit):
        setup(argparse.ArgumentParser(), ["--config", "gpt_digits", "--workdir", "w", "--bogus"])


def test_experiment_configs_resolve_once_into_typed_settings():
    from jaxar.recipes.experiment import (
        CodesOptions,
        GeneratorExperiment,
        generator_experiment,
        tokenizer_experiment,
    )
    from jaxar.train.loop import TrainConfig

    config = load_config(os.path.join(CONFIGS, "maskgit_digits.py"))
    exp = generator_experiment(config)
    assert isinstance(exp, GeneratorExperiment) and generator_experiment(exp) is exp
    assert isinstance(exp.run.train, TrainConfig) and exp.run.train.num_steps == 1500
    assert exp.codes == CodesOptions() and exp.data["image_size"] == 16
    assert exp.run.stored["model"]["family"] == "maskgit"
    tok = tokenizer_experiment(load_config(os.path.join(CONFIGS, "tokenizer_digits.py") + ":rq"))
    assert tok.tokenizer.quantizer == "rq" and tok.preview_count == 16  # the config sets 16
    config.tokenizer_workdr = "typo"  # a misspelt top-level field is an error, not ignored
    with pytest.raises(ValueError, match=r"no fields \['tokenizer_workdr'\]"):
        generator_experiment(config)
    del config["tokenizer_workdr"]
    config.codes = {"augment": "rotate"}
    with pytest.raises(ValueError, match="codes.augment='rotate'"):
        generator_experiment(config)
    config.codes = {"shards": 3}
    with pytest.raises(ValueError, match=r"CodesOptions has no fields \['shards'\]"):
        generator_experiment(config)
    config.codes = {}
    config.mesh = {"dta": 2}
    with pytest.raises(ValueError, match=r"mesh has no axes \['dta'\]"):
        generator_experiment(config)
