"""The one sampler interface (``jaxar.sampling.base``) as a user reaches it: ``load_generator``
-> ``.sampler(...)`` / ``.sample(...)``, accelerators as options, ``experiments/sample.py``.

Every family gets a workdir with random weights over a random-weight digits tokenizer of the
kind it needs (vq, msvq, rq), written as converters write them."""

from __future__ import annotations

import flax.linen as nn
import jax
import numpy as np
import pytest
from jax.extend.core import subjaxprs

from jaxar.convert.workdir import generator_config, tokenizer_config, write_workdir
from jaxar.recipes.families import get_family
from jaxar.recipes.generator import load_generator
from jaxar.recipes.tokenizer import load_tokenizer
from jaxar.sampling.base import SampleOutput, SamplingOptions, compile_timer, split_settings
from jaxar.tokenizers.autoencoder import Tokenizer, get_preset

SIZE, CLASSES = 16, 10
FAMILIES = {  # family -> (tokenizer preset, generator preset)
    "gpt": ("digits_vq", "GPT-tiny"),
    "maskgit": ("digits_vq", "MaskGIT-tiny"),
    "randar": ("digits_vq", "RandAR-tiny"),
    "var": ("digits_msvq", "VAR-tiny"),
    "rq": ("digits_rq", "RQ-tiny"),
}
LABELS = np.array([0, 3, 7, 9], np.int32)


def _tokenizer_workdir(path, preset: str) -> None:
    cfg = get_preset(preset)
    images = np.zeros((1, SIZE, SIZE, cfg.image_channels), np.float32)
    keys = {"params": jax.random.key(0), "quantizer": jax.random.key(1)}
    variables = dict(Tokenizer(cfg).init(keys, images))
    params = {"model": variables.pop("params")}
    write_workdir(path, nn.unbox(params), tokenizer_config(cfg, SIZE, {"test": preset}),
                  model_state=variables)  # fmt: skip


def _generator_workdir(path, family_name: str, preset: str, tokenizer_dir, sampling) -> None:
    family = get_family(family_name)
    tokenizer = load_tokenizer(tokenizer_dir)
    model = {"family": family_name, "preset": preset, "num_classes": CLASSES}
    cfg, task = family.build(model, tokenizer, {})
    codes = np.zeros((2, tokenizer.num_tokens, *_depth(cfg)), np.int32)
    params, _ = task.init(jax.random.key(2), {"codes": codes, "label": np.zeros(2, np.int32)})
    params = _randomized(nn.unbox(params))  # zero-initialised heads would make logits uniform
    config = generator_config(tokenizer_dir, family_name, cfg, sampling, SIZE, {"test": preset})
    write_workdir(path, nn.unbox(params), config)


def _randomized(params):
    leaves, tree = jax.tree.flatten(params)
    keys = jax.random.split(jax.random.key(3), len(leaves))
    noise = [x + 0.3 * jax.random.normal(k, x.shape, x.dtype) for k, x in zip(keys, leaves)]
    return tree.unflatten(noise)


def _depth(cfg) -> tuple[int, ...]:
    return (cfg.code_depth,) if hasattr(cfg, "code_depth") else ()


@pytest.fixture(scope="module")
def workdirs(tmp_path_factory):
    root = tmp_path_factory.mktemp("sampler_interface")
    for preset in {tok for tok, _ in FAMILIES.values()}:
        _tokenizer_workdir(root / preset, preset)
    for name, (tok, preset) in FAMILIES.items():
        _generator_workdir(root / name, name, preset, root / tok, {"temperature": 1.0})
    sjd = {"accelerator": "sjd", "window": 4, "temperature": 0.0}
    _generator_workdir(root / "gpt_sjd", "gpt", "GPT-tiny", root / "digits_vq", sjd)
    return root


@pytest.fixture(scope="module")
def generators(workdirs):
    return {name: load_generator(workdirs / name) for name in FAMILIES}


def _null_perturbed(params, null_index: int):
    """params with every class table's null-class row (index ``null_index``) replaced."""

    def perturb(leaf):
        if leaf.ndim == 2 and leaf.shape[0] == null_index + 1:
            return leaf.at[null_index].set(50.0 * np.sign(np.arange(leaf.shape[1]) % 2 - 0.5))
        return leaf

    changed = jax.tree.map(perturb, params)
    assert any(not np.array_equal(a, b) for a, b in zip(jax.tree.leaves(params),
                                                        jax.tree.leaves(changed)))  # fmt: skip
    return changed


@pytest.mark.parametrize("name", sorted(FAMILIES))
def test_every_family_compiles_once_and_returns_one_output_type(generators, name):
    gen = generators[name]
    sampler = gen.sampler(cfg_scale=2.0, top_k=8)
    first = sampler(gen.params, LABELS, 0)
    second = sampler(gen.params, LABELS, jax.random.key(1))
    again = gen.sample(LABELS, 2, cfg_scale=2.0, top_k=8)  # the cached sampler, same shapes
    assert gen.sampler(cfg_scale=2.0, top_k=8) is sampler and sampler.traces == 1
    for out in (first, second, again):
        assert isinstance(out, SampleOutput)
        depth = _depth(gen.model_config)
        assert out.codes.shape == (len(LABELS), gen.tokenizer.num_tokens, *depth)
        assert out.codes.dtype == np.int32 and out.codes.max() < gen.tokenizer.vocab_size
        assert out.images.shape == (len(LABELS), SIZE, SIZE, 1) and out.images.dtype == np.uint8
        assert out.forward_passes.shape == (len(LABELS),) and out.forward_passes.min() >= 1
    assert not np.array_equal(first.codes, second.codes)  # the rng is used
    np.testing.assert_array_equal(first.codes, sampler(gen.params, LABELS, 0).codes)  # int seed
    assert sampler.traces == 1
    np.testing.assert_array_equal(first.images, gen.tokenizer.decode_uint8(first.codes))


@pytest.mark.parametrize("name", sorted(FAMILIES))
@pytest.mark.parametrize("schedule", ["constant", "linear"])
def test_cfg_scale_one_is_the_unguided_model_in_every_family(generators, name, schedule):
    gen = generators[name]
    broken = _null_perturbed(gen.params, CLASSES)  # the null class only matters with guidance
    plain = gen.sampler(cfg_scale=1.0, cfg_schedule=schedule)
    assert not plain.options.guided
    np.testing.assert_array_equal(plain(gen.params, LABELS, 5, decode=False).codes,
                                  plain(broken, LABELS, 5, decode=False).codes)  # fmt: skip
    guided = gen.sampler(cfg_scale=3.0, cfg_schedule=schedule)
    assert not np.array_equal(guided(gen.params, LABELS, 5, decode=False).codes,
                              guided(broken, LABELS, 5, decode=False).codes)  # fmt: skip


def test_var_uses_the_common_meaning_with_its_published_ramp(generators):
    gen = generators["var"]
    assert gen.sampler().settings["cfg_schedule"] == "linear"  # VAR's ramp is the default
    assert gen.sampler(cfg_scale=1.0).options.guided is False  # 1 = off, as everywhere


ACCELERATED = {  # accelerator -> its settings on the tiny GPT (8x8 codes)
    "sjd": {"window": 4},
    "lantern": {"k": 4, "delta": 0.2, "window": 4},
    "gsd": {"rank_radius": 3, "prob_gap": 0.15, "distance_quantile": 0.25, "window": 4},
    "zipar": {"window": 2},
}


@pytest.mark.parametrize("accelerator", sorted(ACCELERATED))
def test_accelerators_through_the_common_interface(generators, accelerator):
    gen = generators["gpt"]
    sampler = gen.sampler(accelerator, cfg_scale=2.0, **ACCELERATED[accelerator])
    a = sampler(gen.params, LABELS, 0)
    b = sampler(gen.params, LABELS, 1)
    assert sampler.traces == 1 and sampler.name == f"gpt+{accelerator}"
    assert gen.sampler(accelerator, cfg_scale=2.0, **ACCELERATED[accelerator]) is sampler
    for out in (a, b):
        assert out.codes.shape == (len(LABELS), gen.tokenizer.num_tokens)
        assert out.images.shape == (len(LABELS), SIZE, SIZE, 1)
        assert 1 <= out.forward_passes.min() and out.forward_passes.max() <= out.codes.shape[1]


def test_greedy_sjd_equals_the_plain_greedy_sampler_exactly(generators):
    gen = generators["gpt"]
    for cfg_scale in (1.0, 2.0):
        plain = gen.sample(LABELS, 0, cfg_scale=cfg_scale, temperature=0.0)
        sjd = gen.sample(LABELS, 0, "sjd", cfg_scale=cfg_scale, temperature=0.0, window=4)
        np.testing.assert_array_equal(sjd.codes, plain.codes)
        assert sjd.forward_passes.mean() < plain.forward_passes.mean() == 64


def test_accelerator_from_the_config_and_turned_off(workdirs, generators):
    gen = load_generator(workdirs / "gpt_sjd")  # config: accelerator sjd, window 4, greedy
    assert gen.sampler().name == "gpt+sjd" and gen.sampler().settings["window"] == 4
    plain = generators["gpt"]  # the same weights (same init key), a plain config
    np.testing.assert_array_equal(gen.sample(LABELS, 0).codes,
                                  plain.sample(LABELS, 0, temperature=0.0).codes)  # fmt: skip
    with pytest.raises(ValueError, match=r"unknown sampling setting\(s\) \['window'\]"):
        gen.sampler("none")  # the config's window belongs to no sampler now


@pytest.mark.parametrize("name", ["maskgit", "randar", "var", "rq"])
def test_accelerators_name_the_families_they_support(generators, name):
    with pytest.raises(ValueError, match=f"does not support the '{name}' family.*'gpt'"):
        generators[name].sampler("sjd", window=4)


def test_bad_settings_name_the_problem(generators):
    gen = generators["maskgit"]
    with pytest.raises(ValueError, match=r"unknown sampling setting\(s\) \['windo'\].*num_steps"):
        gen.sampler(windo=3)
    with pytest.raises(ValueError, match="unknown accelerator 'fast'"):
        generators["gpt"].sampler("fast")
    with pytest.raises(ValueError, match=r"\['radius'\] for family 'gpt' with accelerator 'gsd'"):
        generators["gpt"].sampler("gsd", radius=3)
    with pytest.raises(ValueError, match="cfg_scale must be a finite number"):
        gen.sampler(cfg_scale=float("nan"))
    with pytest.raises(ValueError, match="labels values must be in"):
        gen.sample(np.array([0, CLASSES]), 0)  # the null class is not a user label
    common, own = split_settings({"top_k": 3, "num_steps": 4}, ("num_steps",), "maskgit")
    assert common == SamplingOptions(top_k=3) and own == {"num_steps": 4}


def test_timed_splits_compile_from_sampling(generators):
    gen = generators["randar"]
    sampler = gen.sampler(top_p=0.9)
    _, first = sampler.timed(gen.params, LABELS, 0)
    _, second = sampler.timed(gen.params, LABELS, 1)
    assert first["compile_s"] > 0.0 and second["compile_s"] == 0.0 and second["sample_s"] > 0.0
    with compile_timer() as outer:
        jax.jit(lambda x: x * 3)(np.ones(3))
    assert outer.seconds > 0.0


def test_sample_script_with_an_accelerator(workdirs, tmp_path, capsys):
    import experiments.sample as script

    out = tmp_path / "samples"
    script.main(["--workdir", str(workdirs / "gpt"), "--out", str(out), "--num_samples", "5",
                 "--batch_size", "2", "--accelerator", "sjd", "--set", "window=4"])  # fmt: skip
    log = capsys.readouterr().out
    assert "gpt+sjd sampler: compiled in" in log and "(1 trace(s))" in log
    with np.load(out / "samples.npz") as samples:
        assert samples["arr_0"].shape == (5, SIZE, SIZE, 3)
    with pytest.raises(SystemExit, match=r"\['radius'\] for family 'gpt' with accelerator"):
        script.main(["--workdir", str(workdirs / "gpt"), "--out", str(tmp_path / "x"),
                     "--accelerator", "zipar", "--set", "radius=3"])  # fmt: skip


def _dot_operand_dtypes(jaxpr) -> set[str]:
    found = set()
    for eqn in jaxpr.eqns:
        if eqn.primitive.name == "dot_general":
            found |= {str(v.aval.dtype) for v in eqn.invars}
    for sub in subjaxprs(jaxpr):
        found |= _dot_operand_dtypes(sub)
    return found


@pytest.mark.parametrize("name", list(FAMILIES))
def test_bfloat16_precision_in_every_family(generators, name):
    """``precision="bfloat16"`` reaches every family from the interface: its matmuls read
    bfloat16 operands (and the float32 sampler's do not), it compiles once and gives codes of
    the vocabulary. Agreement with float32 is guarded on a trained model in
    tests/test_precision.py (random weights have near-tied logits, so greedy codes diverge)."""
    gen = generators[name]
    sampler = gen.sampler(precision="bfloat16", temperature=0.0)
    assert gen.sampler(precision="bfloat16", temperature=0.0) is sampler
    out = sampler(gen.params, LABELS, 0)
    sampler(gen.params, LABELS, 1)
    assert sampler.traces == 1
    plain = gen.sample(LABELS, 0, temperature=0.0)
    assert out.codes.shape == plain.codes.shape
    assert 0 <= out.codes.min() and out.codes.max() < gen.tokenizer.vocab_size
    jaxpr = jax.make_jaxpr(sampler.jitted)(gen.params, LABELS, jax.random.key(0), *sampler._extra)
    assert "bfloat16" in _dot_operand_dtypes(jaxpr.jaxpr)
    plain_jaxpr = jax.make_jaxpr(gen.sampler(temperature=0.0).jitted)(
        gen.params, LABELS, jax.random.key(0), *gen.sampler(temperature=0.0)._extra
    )
    assert "bfloat16" not in _dot_operand_dtypes(plain_jaxpr.jaxpr)


def test_bad_precision_is_named(generators):
    with pytest.raises(ValueError, match="precision must be one of"):
        generators["gpt"].sampler(precision="float16")
