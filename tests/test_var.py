"""VAR generator: shapes, block-causal masking, cached scale steps == teacher forcing, task."""

from __future__ import annotations

import dataclasses

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxar.generators.var import (
    VAR,
    VAR_CONFIGS,
    concat_scales,
    init_var_cache,
    make_var_task,
    split_scales,
    var_config,
)
from jaxar.quantizers.multiscale import MultiScaleQuantizer
from jaxar.sharding import LOGICAL_AXES

CFG = var_config("VAR-tiny")
QUANTIZER = MultiScaleQuantizer(codebook_size=32, code_dim=4, scales=(1, 2, 3, 4))


@jax.jit
def _make_setup():
    z = jax.random.normal(jax.random.key(0), (2, 4, 4, 4))
    q_params = QUANTIZER.init(jax.random.key(1), z)["params"]
    codes = QUANTIZER.apply({"params": q_params}, z, method=QUANTIZER.encode_to_codes)
    inputs = QUANTIZER.apply({"params": q_params}, codes, method=QUANTIZER.next_scale_inputs)
    labels = jnp.array([3, 7], jnp.int32)
    boxed = VAR(CFG).init(jax.random.key(2), labels, inputs)["params"]
    return boxed, q_params, codes, inputs, labels


@pytest.fixture(scope="module")
def setup():
    boxed, q_params, codes, inputs, labels = _make_setup()
    return nn.unbox(boxed), nn.unbox(q_params), codes, inputs, labels, boxed


def _randomized(params, std=0.3):
    """Random weights everywhere (VAR's init leaves the blocks near the identity)."""
    leaves, tree = jax.tree.flatten(nn.unbox(params))
    keys = jax.random.split(jax.random.key(9), len(leaves))
    return tree.unflatten([std * jax.random.normal(k, x.shape) for k, x in zip(keys, leaves)])


def test_presets_and_layout():
    d16 = VAR_CONFIGS["VAR-d16"]
    assert (d16.embed_dim, d16.num_heads, d16.seq_len) == (1024, 16, 680)
    assert VAR_CONFIGS["VAR-d30"].embed_dim == 1920
    assert CFG.begin_ends == ((0, 1), (1, 5), (5, 14), (14, 30))
    mask = CFG.block_causal_mask()
    assert mask[1, 4] and mask[4, 1] and not mask[4, 5] and mask[29].all()
    codes = jnp.arange(60).reshape(2, 30)
    maps = split_scales(codes, CFG.patch_nums)
    assert [m.shape for m in maps] == [(2, 1, 1), (2, 2, 2), (2, 3, 3), (2, 4, 4)]
    np.testing.assert_array_equal(concat_scales(maps), codes)


def test_params_are_annotated(setup):
    boxed = setup[5]
    leaves = jax.tree.leaves(boxed, is_leaf=lambda x: isinstance(x, nn.Partitioned))
    assert all(isinstance(x, nn.Partitioned) for x in leaves)
    names = {n for x in leaves for n in x.names if n is not None}
    assert names <= set(LOGICAL_AXES)


def test_later_scales_do_not_change_earlier_logits(setup):
    params, _, _, inputs, labels, _ = setup
    params = _randomized(params)
    apply = jax.jit(VAR(CFG).apply)
    base = apply({"params": params}, labels, inputs)
    assert base.shape == (2, 30, 32) and base.dtype == jnp.float32
    changed = inputs.at[:, 13:].add(1.0)  # inputs of scale 3 (tokens 14..29)
    out = apply({"params": params}, labels, changed)
    np.testing.assert_allclose(out[:, :14], base[:, :14], atol=1e-6)
    assert np.abs(out[:, 14:] - base[:, 14:]).max() > 1e-3


@pytest.mark.parametrize("variant", [{}, {"shared_aln": True, "attn_l2_norm": False}])
def test_cached_scale_steps_equal_teacher_forcing(setup, variant):
    cfg = dataclasses.replace(CFG, **variant)
    _, _, _, inputs, labels, _ = setup
    model = VAR(cfg)
    params = _randomized(jax.jit(model.init)(jax.random.key(2), labels, inputs)["params"])
    full, cond = jax.jit(
        lambda p: (
            model.apply({"params": p}, labels, inputs),
            model.apply({"params": p}, labels, method=VAR.embed_condition),
        )
    )(params)
    cache = init_var_cache(cfg, 2)
    step = jax.jit(model.apply, static_argnums=2, static_argnames="method")
    for k, (begin, end) in enumerate(cfg.begin_ends):
        x = None if k == 0 else inputs[:, begin - 1 : end - 1]
        logits, cache = step({"params": params}, cond, k, x, cache, method=VAR.scale_step)
        np.testing.assert_allclose(logits, full[:, begin:end], atol=1e-5, rtol=1e-5)
    assert int(cache[0]["index"]) == cfg.seq_len


def test_task_loss_and_class_dropout(setup):
    params, q_params, codes, _, labels, _ = setup
    task = make_var_task(CFG, QUANTIZER, q_params)
    batch = {"codes": np.asarray(concat_scales(codes)), "label": np.asarray(labels)}
    loss_and_grad = jax.jit(jax.value_and_grad(task.loss_fn, has_aux=True))
    (loss, (metrics, _)), grads = loss_and_grad(params, {}, batch, jax.random.key(4), 0)
    assert np.isfinite(loss) and abs(float(loss) - np.log(32)) < 0.5  # near uniform at init
    assert set(metrics) == {"loss", "accuracy", "accuracy_tail", "perplexity"}
    assert float(jnp.abs(grads["head"]["kernel"]).sum()) > 0
    model = VAR(CFG)
    drop = model.apply(
        {"params": params}, jnp.zeros(256, jnp.int32), train=True,
        rngs={"dropout": jax.random.key(5)}, method=VAR.embed_condition,
    )  # fmt: skip
    null = params["class_emb"]["embedding"][CFG.null_class]
    rate = float(jnp.mean(jnp.all(drop == null, axis=-1)))
    assert 0.03 < rate < 0.2  # class_dropout_prob = 0.1


def test_bad_inputs(setup):
    params, q_params, _, inputs, labels, _ = setup
    model = VAR(CFG)
    with pytest.raises(ValueError, match="inputs must be"):
        model.apply({"params": params}, labels, inputs[:, :-1])
    with pytest.raises(ValueError, match="labels"):
        model.apply({"params": params}, jnp.array([3, 11]), inputs)
    with pytest.raises(ValueError, match="labels"):
        model.apply({"params": params}, jnp.array([1.0, 2.0]), inputs)
    with pytest.raises(ValueError, match="codes must be"):
        split_scales(jnp.zeros((2, 29), jnp.int32), CFG.patch_nums)
    with pytest.raises(ValueError, match="patch_nums"):
        var_config("VAR-tiny", patch_nums=(2, 1))
    with pytest.raises(ValueError, match="divisible"):
        var_config("VAR-tiny", num_heads=3)
    with pytest.raises(ValueError, match="unknown VAR preset"):
        var_config("VAR-d99")
    with pytest.raises(ValueError, match="do not match"):
        make_var_task(var_config("VAR-tiny", code_dim=8), QUANTIZER, q_params)
