"""Scanned transformer stacks (``scan_layers``) and remat policies (``remat_policy``): every
family gives the unscanned model's logits, loss and gradients from the stacked params, the
samplers give the same greedy codes, converters stack for a scanning config, and the helpers
(stacked params, stacked caches, weight decay) agree between the two layouts."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import traverse_util

from jaxar.generators import gpt, mar, maskgit, randar, rq_transformer, var
from jaxar.layers.caches import cache_slots, init_stack_cache, set_cache_index
from jaxar.layers.scan import REMAT_POLICIES, stack_layer_params, unstack_layer_params
from jaxar.sharding import DEFAULT_RULES, logical_to_sharding, make_mesh
from jaxar.train.optimizer import weight_decay_mask

ATOL = 1e-5
LABELS = jnp.array([1, 4, 7])


def _gpt_cfg(**kw):
    return gpt.gpt_config("GPT-tiny", class_dropout_prob=0.0, **kw)


def _var_cfg(**kw):
    return var.var_config("VAR-tiny", class_dropout_prob=0.0, **kw)


def _maskgit_cfg(**kw):
    return maskgit.maskgit_config("MaskGIT-tiny", num_layers=2, class_dropout_prob=0.0, **kw)


def _randar_cfg(**kw):
    return randar.randar_config("RandAR-tiny", num_layers=2, class_dropout_prob=0.0, **kw)


def _rq_cfg(**kw):
    return rq_transformer.rq_config(
        "RQ-tiny", spatial_layers=2, depth_layers=2, class_dropout_prob=0.0, **kw
    )


def _codes(cfg, seed=0):
    rng = np.random.default_rng(seed)
    shape = (len(LABELS), cfg.block_size) + (
        (cfg.code_depth,) if hasattr(cfg, "code_depth") else ()
    )
    return jnp.asarray(rng.integers(0, cfg.vocab_size, shape), jnp.int32)


def _var_inputs(cfg, seed=0):
    rng = np.random.default_rng(seed)
    return jnp.asarray(rng.normal(size=(len(LABELS), cfg.seq_len - cfg.first_l, cfg.code_dim)))


@dataclasses.dataclass(frozen=True)
class Family:
    """How to build, call and train one family's tiny model."""

    config: object  # (**overrides) -> config
    model: type
    stacks: object  # cfg -> ((prefix, num_layers), ...)
    args: object  # cfg -> teacher-forced call arguments
    loss: object  # (model, params, cfg) -> (loss, metrics)


FAMILIES = {
    "gpt": Family(
        _gpt_cfg, gpt.GPT, lambda c: (("layers", c.num_layers),),
        lambda c: (_codes(c), LABELS),
        lambda m, p, c: gpt.gpt_loss(m, p, {"codes": _codes(c), "label": LABELS},
                                     jax.random.key(5)),
    ),
    "var": Family(
        _var_cfg, var.VAR, lambda c: (("blocks", c.depth),),
        lambda c: (LABELS, _var_inputs(c)),
        lambda m, p, c: var.var_loss(
            m, p, {"codes": jnp.asarray(np.random.default_rng(1).integers(
                0, c.vocab_size, (len(LABELS), c.seq_len)), jnp.int32), "label": LABELS},
            jax.random.key(5), _var_inputs(c)),
    ),
    "maskgit": Family(
        _maskgit_cfg, maskgit.MaskGIT, lambda c: (("layers", c.num_layers),),
        lambda c: (_codes(c), LABELS),
        lambda m, p, c: maskgit.maskgit_loss(m, p, {"codes": _codes(c), "label": LABELS},
                                             jax.random.key(5)),
    ),
    "randar": Family(
        _randar_cfg, randar.RandAR, lambda c: (("layers", c.num_layers),),
        lambda c: (_codes(c), LABELS, randar.random_orders(jax.random.key(2), len(LABELS),
                                                           c.block_size)),
        lambda m, p, c: randar.randar_loss(m, p, {"codes": _codes(c), "label": LABELS},
                                           jax.random.key(5)),
    ),
    "rq": Family(
        _rq_cfg, rq_transformer.RQTransformer,
        lambda c: (("spatial_layers", c.spatial_layers), ("depth_layers", c.depth_layers)),
        lambda c: (_codes(c), LABELS),
        lambda m, p, c: rq_transformer.rq_loss(m, p, {"codes": _codes(c), "label": LABELS},
                                               jax.random.key(5)),
    ),
}  # fmt: skip


def _randomized(params, seed=3, scale=0.3):
    leaves, tree = jax.tree.flatten(params)
    keys = jax.random.split(jax.random.key(seed), len(leaves))
    return tree.unflatten([x + scale * jax.random.normal(k, x.shape) for k, x in zip(keys, leaves)])


def _init(family: Family, cfg):
    params = family.model(cfg).init(jax.random.key(0), *family.args(cfg))["params"]
    return _randomized(nn.unbox(params))  # zero heads would hide differences


def _stack(params, stacks):
    for prefix, num in stacks:
        params = stack_layer_params(params, prefix, num)
    return params


def _unstack(params, stacks):
    for prefix, num in stacks:
        params = unstack_layer_params(params, prefix, num)
    return params


def _assert_trees_close(a, b, atol=ATOL):
    fa, fb = traverse_util.flatten_dict(a, sep="/"), traverse_util.flatten_dict(b, sep="/")
    assert set(fa) == set(fb)
    for name in fa:
        np.testing.assert_allclose(fa[name], fb[name], atol=atol, rtol=1e-5, err_msg=name)


@pytest.mark.parametrize("name", sorted(FAMILIES))
def test_scanned_init_stacks_params_on_a_layers_axis(name):
    family = FAMILIES[name]
    cfg = family.config(scan_layers=True)
    boxed = family.model(cfg).init(jax.random.key(0), *family.args(cfg))["params"]
    plain = _init(family, family.config())
    want = jax.tree.map(jnp.shape, _stack(plain, family.stacks(cfg)))
    assert jax.tree.map(jnp.shape, nn.unbox(boxed)) == want
    for prefix, num in family.stacks(cfg):
        for leaf in jax.tree.leaves(boxed[prefix], is_leaf=lambda x: isinstance(x, nn.Partitioned)):
            assert leaf.names[0] == "layers" and leaf.value.shape[0] == num
        assert f"{prefix}_0" not in boxed
    mesh = make_mesh(devices=jax.devices()[:1])
    specs = logical_to_sharding(boxed, mesh, DEFAULT_RULES)  # "layers" is a known axis
    assert len(jax.tree.leaves(specs)) == len(jax.tree.leaves(nn.unbox(boxed)))


@pytest.mark.parametrize("name", sorted(FAMILIES))
def test_scanned_logits_loss_and_grads_equal_unscanned(name):
    family = FAMILIES[name]
    cfg, scfg = family.config(), family.config(scan_layers=True)
    stacks = family.stacks(cfg)
    params = _init(family, cfg)
    stacked = _stack(params, stacks)
    args = family.args(cfg)
    plain = family.model(cfg).apply({"params": params}, *args)
    scanned = family.model(scfg).apply({"params": stacked}, *args)
    assert np.abs(np.asarray(plain)).max() > 1e-2  # non-trivial logits
    np.testing.assert_allclose(scanned, plain, atol=ATOL, rtol=1e-5)

    def grads(c, p):
        return jax.value_and_grad(lambda q: family.loss(family.model(c), q, c)[0])(p)

    loss, grad = grads(cfg, params)
    s_loss, s_grad = grads(scfg, stacked)
    np.testing.assert_allclose(s_loss, loss, atol=ATOL, rtol=1e-6)
    _assert_trees_close(_unstack(s_grad, stacks), grad)


@pytest.mark.parametrize("name", ["gpt", "var", "rq"])
@pytest.mark.parametrize("scan", [False, True])
def test_remat_policies_give_the_same_loss_and_grads(name, scan):
    family = FAMILIES[name]
    cfg = family.config(scan_layers=scan)
    params = _init(family, family.config())
    if scan:
        params = _stack(params, family.stacks(cfg))

    def grads(policy):
        c = dataclasses.replace(cfg, remat_policy=policy)
        loss_fn = lambda q: family.loss(family.model(c), q, c)[0]  # noqa: E731
        return jax.jit(jax.value_and_grad(loss_fn))(params), str(jax.make_jaxpr(loss_fn)(params))

    (loss, grad), jaxpr = grads("none")
    assert "remat2[" not in jaxpr
    for policy in sorted(set(REMAT_POLICIES) - {"none"}):
        (r_loss, r_grad), jaxpr = grads(policy)
        np.testing.assert_allclose(r_loss, loss, atol=ATOL, rtol=1e-6)
        _assert_trees_close(r_grad, grad)
        saved = REMAT_POLICIES[policy]
        assert "remat2[" in jaxpr and getattr(saved, "__name__", repr(saved)) in jaxpr, policy


def test_drop_path_is_scanned_per_layer():
    cfg = _gpt_cfg(scan_layers=True, drop_path=0.9, num_layers=4)
    family = FAMILIES["gpt"]
    params = _stack(_init(family, _gpt_cfg(num_layers=4)), (("layers", 4),))
    args = family.args(cfg)
    model = gpt.GPT(cfg)
    eval_logits = model.apply({"params": params}, *args)
    train = [
        model.apply({"params": params}, *args, train=True, rngs={"dropout": jax.random.key(s)})
        for s in range(2)
    ]
    assert not np.allclose(train[0], eval_logits, atol=1e-3)  # some branch was dropped
    assert not np.allclose(train[0], train[1], atol=1e-3)  # and the rng decides which
    still = model.apply({"params": params}, *args, train=False, rngs={"dropout": jax.random.key(0)})
    np.testing.assert_array_equal(still, eval_logits)


def _gpt_params(cfg, seed=1, scale=0.3):
    family = FAMILIES["gpt"]
    plain = dataclasses.replace(cfg, scan_layers=False)
    abstract = jax.eval_shape(lambda: gpt.GPT(plain).init(jax.random.key(0), *family.args(plain)))
    leaves, tree = jax.tree.flatten(nn.unbox(abstract["params"]))
    keys = jax.random.split(jax.random.key(seed), len(leaves))
    params = tree.unflatten([scale * jax.random.normal(k, x.shape) for k, x in zip(keys, leaves)])
    return params, stack_layer_params(params, "layers", cfg.num_layers)


def test_gpt_samplers_give_the_same_greedy_codes_scanned():
    from jaxar.sampling.autoregressive import make_sampler
    from jaxar.sampling.speculative import make_sjd_sampler
    from jaxar.sampling.zipar import make_zipar_sampler

    cfg = _gpt_cfg()
    scfg = dataclasses.replace(cfg, scan_layers=True)
    params, stacked = _gpt_params(cfg)
    opts = dict(temperature=0.0, cfg_scale=2.0)
    rng = jax.random.key(0)
    plain = np.asarray(make_sampler(cfg, **opts)(params, LABELS, rng))
    assert len(np.unique(plain)) > 3
    np.testing.assert_array_equal(make_sampler(scfg, **opts)(stacked, LABELS, rng), plain)
    for make in (make_sjd_sampler, make_zipar_sampler):  # the cache rewinds
        base, base_passes = make(cfg, window=3, **opts)(params, LABELS, rng)
        codes, passes = make(scfg, window=3, **opts)(stacked, LABELS, rng)
        np.testing.assert_array_equal(codes, base)
        np.testing.assert_array_equal(passes, base_passes)


def test_var_sampler_gives_the_same_greedy_codes_scanned():
    from jaxar.quantizers.multiscale import MultiScaleQuantizer
    from jaxar.sampling.scalewise import make_scalewise_sampler

    cfg = _var_cfg()
    scfg = dataclasses.replace(cfg, scan_layers=True)
    params = _init(FAMILIES["var"], cfg)
    quantizer = MultiScaleQuantizer(cfg.vocab_size, cfg.code_dim, scales=cfg.patch_nums)
    size = cfg.patch_nums[-1]
    q = nn.unbox(quantizer.init(jax.random.key(1), jnp.zeros((1, size, size, cfg.code_dim))))
    rng = jax.random.key(0)

    def run(c, p):
        sampler = make_scalewise_sampler(c, quantizer, cfg_scale=2.0, top_k=1)
        return np.concatenate([np.asarray(x).reshape(len(LABELS), -1) for x in
                               sampler({"var": p, "quantizer": q["params"]}, LABELS, rng)["codes"]],
                              axis=1)  # fmt: skip

    plain = run(cfg, params)
    assert len(np.unique(plain)) > 3
    np.testing.assert_array_equal(run(scfg, _stack(params, (("blocks", cfg.depth),))), plain)


def test_randar_and_rq_samplers_give_the_same_greedy_codes_scanned():
    from jaxar.sampling.random_order import make_randar_sampler
    from jaxar.sampling.rq import make_rq_sampler

    rng = jax.random.key(0)
    for name, make in (("randar", make_randar_sampler), ("rq", make_rq_sampler)):
        family = FAMILIES[name]
        cfg = family.config()
        params = _init(family, cfg)
        scfg = dataclasses.replace(cfg, scan_layers=True)
        plain = np.asarray(make(cfg, temperature=0.0, cfg_scale=2.0)(params, LABELS, rng))
        assert len(np.unique(plain)) > 3, name
        stacked = _stack(params, family.stacks(cfg))
        got = make(scfg, temperature=0.0, cfg_scale=2.0)(stacked, LABELS, rng)
        np.testing.assert_array_equal(got, plain, err_msg=name)


def test_converted_llamagen_checkpoint_into_a_scanning_config():
    from jaxar.convert import llamagen

    state = llamagen.read_state_dict(
        Path(__file__).parent / "data" / "llamagen_gpt_tiny.safetensors"
    )
    cfg = llamagen.infer_gpt_config(state, num_heads=4)
    scfg = dataclasses.replace(cfg, scan_layers=True)
    params = llamagen.convert_gpt_state_dict(state, cfg)
    stacked = llamagen.convert_gpt_state_dict(state, scfg)
    assert "layers_0" in params and "layers_0" not in stacked
    assert stacked["layers"]["attention"]["query"]["kernel"].shape[0] == cfg.num_layers
    codes, labels = jnp.asarray(np.arange(2 * 16).reshape(2, 16) % 64), jnp.array([1, 2])
    want = gpt.GPT(cfg).apply({"params": params}, codes, labels)
    got = gpt.GPT(scfg).apply({"params": stacked}, codes, labels)
    np.testing.assert_allclose(got, want, atol=ATOL, rtol=1e-5)


def test_converted_var_checkpoint_into_a_scanning_config():
    from jaxar.convert import var as convert_var

    cfg = _var_cfg()
    params = _init(FAMILIES["var"], cfg)
    state = _var_state_dict(params, cfg)
    plain = convert_var.convert_var_state_dict(state, cfg)
    _assert_trees_close(plain, params, atol=1e-6)
    scfg = dataclasses.replace(cfg, scan_layers=True)
    stacked = convert_var.convert_var_state_dict(state, scfg)
    assert "blocks_0" not in stacked and stacked["blocks"]["attn"]["proj"]["kernel"].shape[0] == 2
    args = FAMILIES["var"].args(cfg)
    np.testing.assert_allclose(
        var.VAR(scfg).apply({"params": stacked}, *args),
        var.VAR(cfg).apply({"params": params}, *args), atol=ATOL, rtol=1e-5,
    )  # fmt: skip


def _var_state_dict(params, cfg) -> dict[str, np.ndarray]:
    """jaxar VAR params -> a VAR torch-style state dict (the converter's inverse, for tests)."""
    c, p = cfg.embed_dim, {k: np.asarray(v) for k, v in traverse_util.flatten_dict(params).items()}
    state = {
        "class_emb.weight": p[("class_emb", "embedding")],
        "lvl_embed.weight": p[("lvl_embed", "embedding")],
        "pos_start": p[("pos_start",)][None], "pos_1LC": p[("pos_1LC",)][None],
    }  # fmt: skip
    for torch_name, ours in (("word_embed", "word_embed"), ("head", "head"),
                             ("head_nm.ada_lin.1", "head_nm/ada_lin")):  # fmt: skip
        path = tuple(ours.split("/"))
        state[f"{torch_name}.weight"] = p[(*path, "kernel")].T
        state[f"{torch_name}.bias"] = p[(*path, "bias")]
    for i in range(cfg.depth):
        b, t = f"blocks.{i}.", f"blocks_{i}"
        qkv = [p[(t, "attn", n, "kernel")].reshape(c, c).T for n in ("query", "key", "value")]
        state[b + "attn.mat_qkv.weight"] = np.concatenate(qkv)
        state[b + "attn.q_bias"] = p[(t, "attn", "q_bias")].reshape(c)
        state[b + "attn.v_bias"] = p[(t, "attn", "v_bias")].reshape(c)
        state[b + "attn.proj.weight"] = p[(t, "attn", "proj", "kernel")].reshape(c, c).T
        state[b + "attn.proj.bias"] = p[(t, "attn", "proj", "bias")]
        state[b + "attn.scale_mul_1H11"] = p[(t, "attn", "scale_mul")].reshape(1, -1, 1, 1)
        for fc in ("fc1", "fc2"):
            state[b + f"ffn.{fc}.weight"] = p[(t, "ffn", fc, "kernel")].T
            state[b + f"ffn.{fc}.bias"] = p[(t, "ffn", fc, "bias")]
        state[b + "ada_lin.1.weight"] = p[(t, "ada_lin", "kernel")].T
        state[b + "ada_lin.1.bias"] = p[(t, "ada_lin", "bias")]
    return state


@pytest.mark.parametrize(
    "make", [_gpt_cfg, _var_cfg, _maskgit_cfg, _randar_cfg, _rq_cfg], ids=lambda f: f.__name__
)
def test_bad_stack_options_raise_clear_errors(make):
    with pytest.raises(ValueError, match=r"remat_policy must be one of \['dots', 'dots_no_batch'"):
        make(remat_policy="everything")
    with pytest.raises(ValueError, match="scan_layers must be True or False"):
        make(scan_layers="yes")


def test_stack_helpers_round_trip_and_check():
    family = FAMILIES["var"]
    cfg = family.config()
    boxed = family.model(cfg).init(jax.random.key(0), *family.args(cfg))["params"]
    stacked = stack_layer_params(boxed, "blocks", cfg.depth)
    kernel = stacked["blocks"]["attn"]["query"]["kernel"]
    assert kernel.names == ("layers", "embed", "heads", "kv") and kernel.value.shape[0] == 2
    back = unstack_layer_params(stacked, "blocks", cfg.depth)
    assert jax.tree.structure(back) == jax.tree.structure(boxed)
    _assert_trees_close(nn.unbox(back), nn.unbox(boxed), atol=0)
    numpy = jax.tree.map(np.asarray, nn.unbox(boxed))
    assert isinstance(stack_layer_params(numpy, "blocks", 2)["blocks"]["ffn"]["fc1"]["bias"],
                      np.ndarray)  # fmt: skip
    with pytest.raises(ValueError, match="missing"):
        stack_layer_params(numpy, "blocks", 3)
    with pytest.raises(ValueError, match="not in params"):
        unstack_layer_params(numpy, "blocks", 2)


def test_weight_decay_mask_is_the_same_in_both_layouts():
    family = FAMILIES["var"]  # VAR's per-head scale_mul is 1-D per layer: no decay
    params = _init(family, family.config())
    stacked = _stack(params, family.stacks(family.config()))
    mask = weight_decay_mask(params)
    assert not mask["blocks_0"]["attn"]["scale_mul"] and mask["blocks_0"]["attn"]["query"]["kernel"]
    flat = traverse_util.flatten_dict(mask)
    for path, decays in traverse_util.flatten_dict(weight_decay_mask(stacked)).items():
        layers = [(f"blocks_{i}", *path[1:]) for i in range(2)] if path[0] == "blocks" else [path]
        assert all(flat.pop(p) == decays for p in layers), path
    assert not flat


def test_stacked_cache_helpers():
    per_layer = init_stack_cache(3, 2, 7, 4, 8, jnp.float32)
    stacked = init_stack_cache(3, 2, 7, 4, 8, jnp.float32, stacked=True)
    assert isinstance(per_layer, list) and len(per_layer) == 3
    assert stacked["k"].shape == (3, *per_layer[0]["k"].shape) and stacked["index"].shape == (3,)
    assert cache_slots(per_layer) == cache_slots(stacked) == 7
    np.testing.assert_array_equal(set_cache_index(stacked, 5)["index"], [5, 5, 5])
    assert [int(c["index"]) for c in set_cache_index(per_layer, 4)] == [4, 4, 4]
    with pytest.raises(ValueError, match="positive"):
        init_stack_cache(0, 2, 7, 4, 8, jnp.float32, stacked=True)


def test_deep_presets_scan_and_small_ones_do_not():
    presets = {**gpt.GPT_CONFIGS, **var.VAR_CONFIGS, **maskgit.MASKGIT_CONFIGS,
               **randar.RANDAR_CONFIGS, **rq_transformer.RQ_CONFIGS, **mar.MAR_CONFIGS}  # fmt: skip
    for name, cfg in presets.items():
        small = name.endswith(("tiny", "digits"))
        assert cfg.scan_layers is not small and cfg.remat_policy == "none", name


def test_match_layer_layout_converts_either_way():
    from jaxar.layers.scan import match_layer_layout

    family = FAMILIES["rq"]  # two stacks
    cfg = family.config()
    params = _init(family, cfg)
    stacked = _stack(params, family.stacks(cfg))
    for source in (params, stacked):
        _assert_trees_close(match_layer_layout(source, True), stacked, atol=0)
        _assert_trees_close(match_layer_layout(source, False), params, atol=0)


def test_an_unscanned_workdir_loads_into_a_scanning_config(tmp_path):
    from jaxar.convert.workdir import generator_config, tokenizer_config, write_workdir
    from jaxar.recipes.generator import load_generator
    from jaxar.tokenizers.autoencoder import Tokenizer, get_preset

    tok = get_preset("digits_vq")
    images = np.zeros((1, 16, 16, tok.image_channels), np.float32)
    variables = dict(Tokenizer(tok).init({"params": jax.random.key(0)}, images))
    tok_params = {"model": nn.unbox(variables.pop("params"))}
    write_workdir(tmp_path / "tok", tok_params, tokenizer_config(tok, 16, {"test": 1}),
                  model_state=variables)  # fmt: skip
    cfg = _gpt_cfg(vocab_size=tok.codebook_size, block_size=64)  # an 8 x 8 grid
    params, stacked = _gpt_params(cfg)
    old = generator_config(tmp_path / "tok", "gpt", cfg, {}, 16, {"test": 1})  # per layer
    old["model"]["scan_layers"] = True  # e.g. a preset whose default changed since
    write_workdir(tmp_path / "gen", params, old)
    gen = load_generator(tmp_path / "gen")
    assert gen.model_config.scan_layers and "layers_0" not in gen.params
    _assert_trees_close(gen.params, stacked, atol=0)
    out = gen.sample(LABELS, 0, temperature=0.0)
    plain = gpt.GPT(cfg).apply({"params": params}, jnp.asarray(out.codes), LABELS)
    np.testing.assert_array_equal(np.argmax(plain, -1), out.codes)  # greedy = argmax
