"""VAR scale-wise sampling: CFG ratio schedule, cached decode == teacher forcing, f_hat, errors."""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxar.generators.var import VAR, concat_scales, var_config
from jaxar.quantizers.multiscale import MultiScaleQuantizer
from jaxar.sampling.logits import cfg_combine
from jaxar.sampling.scalewise import (
    ScalewiseOptions,
    generate,
    make_scalewise_sampler,
    var_guidance_scales,
)

CFG = var_config("VAR-tiny")
QUANTIZER = MultiScaleQuantizer(codebook_size=32, code_dim=4, scales=(1, 2, 3, 4))


@jax.jit
def _make_params():
    z = jax.random.normal(jax.random.key(0), (2, 4, 4, 4))
    q_params = QUANTIZER.init(jax.random.key(1), z)["params"]
    codes = QUANTIZER.apply({"params": q_params}, z, method=QUANTIZER.encode_to_codes)
    inputs = QUANTIZER.apply({"params": q_params}, codes, method=QUANTIZER.next_scale_inputs)
    labels = jnp.array([3, 7], jnp.int32)
    params = nn.unbox(VAR(CFG).init(jax.random.key(2), labels, inputs)["params"])
    leaves, tree = jax.tree.flatten(params)
    keys = jax.random.split(jax.random.key(9), len(leaves))  # random weights everywhere
    params = tree.unflatten([0.3 * jax.random.normal(k, x.shape) for k, x in zip(keys, leaves)])
    return {"var": params, "quantizer": nn.unbox(q_params)}, codes, inputs, labels


@pytest.fixture(scope="module")
def setup():
    return _make_params()


def test_cfg_schedule_maps_from_the_original():
    # jaxar's common meaning: cfg_scale = 1 + VAR's cfg, linear ramp 1 -> cfg_scale
    np.testing.assert_allclose(var_guidance_scales(4, 2.5), [1.0, 1.5, 2.0, 2.5], rtol=1e-6)
    np.testing.assert_allclose(var_guidance_scales(4, 2.5, "constant"), [2.5] * 4, rtol=1e-6)
    np.testing.assert_allclose(var_guidance_scales(5, 1.0), [1.0] * 5, rtol=1e-6)
    # VAR: (1 + t_k) * cond - t_k * uncond with t_k = cfg * k / (K - 1), cfg = 1.5, k = 2 of 4
    cond, uncond, t = jnp.array([2.0, -1.0]), jnp.array([0.5, 1.0]), 1.5 * (2 / 3)
    np.testing.assert_allclose(
        cfg_combine(cond, uncond, var_guidance_scales(4, 1 + 1.5)[2]), (1 + t) * cond - t * uncond,
        rtol=1e-6,
    )  # fmt: skip
    with pytest.raises(ValueError, match="at least 2"):
        var_guidance_scales(1, 2.0)
    assert not ScalewiseOptions(cfg_scale=1.0).guided and ScalewiseOptions(cfg_scale=2.5).guided


@pytest.mark.parametrize("cfg_scale", [1.0, 3.0])
def test_cached_sampler_equals_teacher_forcing(setup, cfg_scale):
    params, codes, inputs, labels = setup
    model = VAR(CFG)
    opts = ScalewiseOptions(cfg_scale=cfg_scale, return_logits=True)
    run = jax.jit(lambda p, lab, r, c: generate(model, QUANTIZER, p, lab, r, opts, forced_codes=c))
    out = run(params, labels, jax.random.key(0), codes)
    for got, want in zip(out["codes"], codes):
        np.testing.assert_array_equal(got, want)

    def teacher(p):
        cond = model.apply({"params": p["var"]}, labels, inputs)
        uncond = model.apply({"params": p["var"]}, jnp.full_like(labels, CFG.null_class), inputs)
        return cond, uncond

    cond, uncond = jax.jit(teacher)(params)
    scales = var_guidance_scales(CFG.num_scales, cfg_scale)
    for k, (begin, end) in enumerate(CFG.begin_ends):
        want = cond[:, begin:end]
        if cfg_scale != 1.0:
            want = cfg_combine(want, uncond[:, begin:end], scales[k])
        np.testing.assert_allclose(out["logits"][k], want, atol=1e-5, rtol=1e-5)
    f_hat = QUANTIZER.apply({"params": params["quantizer"]}, codes, method=QUANTIZER.decode_codes)
    np.testing.assert_allclose(out["f_hat"], f_hat, atol=1e-5)


def test_sampler_determinism_greedy_and_decode(setup):
    params, _, _, labels = setup
    decode = lambda p, f_hat: jnp.tanh(f_hat[..., :1])  # stands in for a tokenizer decoder
    sampler = make_scalewise_sampler(CFG, QUANTIZER, decode_fn=decode, cfg_scale=2.5, top_k=4)
    a = sampler(params, labels, jax.random.key(1))
    b = sampler(params, labels, jax.random.key(1))
    c = sampler(params, labels, jax.random.key(2))
    np.testing.assert_array_equal(concat_scales(a["codes"]), concat_scales(b["codes"]))
    assert not np.array_equal(concat_scales(a["codes"]), concat_scales(c["codes"]))
    assert a["images"].shape == (2, 4, 4, 1)
    f_hat = QUANTIZER.apply(
        {"params": params["quantizer"]}, a["codes"], method=QUANTIZER.decode_codes
    )
    np.testing.assert_allclose(a["f_hat"], f_hat, atol=1e-5)
    greedy = make_scalewise_sampler(CFG, QUANTIZER, cfg_scale=2.5, temperature=0.0)
    top1 = make_scalewise_sampler(CFG, QUANTIZER, cfg_scale=2.5, top_k=1)
    np.testing.assert_array_equal(
        concat_scales(greedy(params, labels, jax.random.key(3))["codes"]),
        concat_scales(top1(params, labels, jax.random.key(4))["codes"]),
    )


def test_bad_inputs(setup):
    params, _, _, labels = setup
    sampler = make_scalewise_sampler(CFG, QUANTIZER)
    with pytest.raises(ValueError, match="labels"):
        sampler(params, jnp.array([1, 10]), jax.random.key(0))  # 10 = the null class
    with pytest.raises(ValueError, match="'var' and 'quantizer'"):
        sampler(params["var"], labels, jax.random.key(0))
    with pytest.raises(ValueError, match="top_p"):
        ScalewiseOptions(top_p=0.0)
    with pytest.raises(ValueError, match="cfg_scale"):
        ScalewiseOptions(cfg_scale=-1.0)
    other = MultiScaleQuantizer(codebook_size=32, code_dim=4, scales=(1, 2, 4))
    with pytest.raises(ValueError, match="do not match"):
        make_scalewise_sampler(CFG, other)
