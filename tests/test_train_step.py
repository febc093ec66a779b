"""Train state, optimizer and the jitted sharded train step (jaxar.train)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import PartitionSpec as P

from jaxar.data.global_batch import host_to_global
from jaxar.sharding import batch_sharding, make_mesh
from jaxar.train.optimizer import (
    OptimizerConfig,
    learning_rate_at,
    make_optimizer,
    weight_decay_mask,
)
from jaxar.train.state import create_train_state
from jaxar.train.step import jit_train_step, make_train_step
from tests.resume_worker import make_records, make_task

OPT = OptimizerConfig(learning_rate=1e-2, warmup_steps=0, total_steps=10)


def _batch(n=8, offset=0):
    records = make_records()[offset : offset + n]
    return {k: np.stack([r[k] for r in records]) for k in records[0]}


def _run(mesh, opt_cfg, batches, ema_decay=0.9, compute_dtype=None, noise=0.1):
    """Creates a state on ``mesh`` and applies one jitted step per batch.

    Returns (final state, shardings, losses, host params before and after every step).
    """
    task, optimizer = make_task(noise=noise), make_optimizer(opt_cfg)
    state, shardings = create_train_state(
        task, optimizer, jax.random.key(0), batches[0], mesh, ema=ema_decay is not None
    )
    history = [jax.device_get(state.params)]
    step = make_train_step(
        task.loss_fn,
        optimizer,
        ema_decay=ema_decay,
        compute_dtype=compute_dtype,
        learning_rate_fn=lambda s: learning_rate_at(opt_cfg, s),
    )
    step = jit_train_step(step, mesh, shardings, batch_sharding(mesh))
    losses = []
    for batch in batches:
        state, metrics = step(state, host_to_global(batch, mesh), jax.random.key(1))
        losses.append(float(metrics["loss"]))
        history.append(jax.device_get(state.params))
    return state, shardings, losses, history


def _assert_trees_close(a, b, atol):
    jax.tree.map(lambda x, y: np.testing.assert_allclose(x, y, atol=atol, rtol=0), a, b)


@pytest.fixture(scope="module")
def single_run():
    return _run(make_mesh(devices=jax.devices()[:1]), OPT, [_batch(8, 0), _batch(8, 8)])


def test_sharded_step_matches_single_device(single_run):
    sharded, shardings, sharded_losses, _ = _run(
        make_mesh(2, 2, 2), OPT, [_batch(8, 0), _batch(8, 8)]
    )
    single, _, single_losses, _ = single_run
    kernel = sharded.params["Dense_0"]["kernel"]
    assert kernel.sharding.spec == P("fsdp", "tensor")  # really sharded
    assert shardings.opt_state[1][0].mu["Dense_0"]["kernel"].spec == P("fsdp", "tensor")
    assert shardings.ema_params["Dense_0"]["kernel"].spec == P("fsdp", "tensor")
    np.testing.assert_allclose(sharded_losses, single_losses, atol=1e-5, rtol=0)
    _assert_trees_close(jax.device_get(sharded.params), jax.device_get(single.params), 1e-5)
    _assert_trees_close(jax.device_get(sharded.ema_params), jax.device_get(single.ema_params), 1e-5)
    assert int(sharded.step) == 2
    assert sharded_losses[1] != sharded_losses[0]


def test_gradient_accumulation_matches_full_batch():
    # eps=1e-3 keeps Adam's first update a smooth function of the gradient (no sign flips
    # of near-zero entries from float rounding); no input noise so both see the same loss.
    cfg = OptimizerConfig(learning_rate=1e-2, warmup_steps=0, total_steps=10, eps=1e-3)
    accum_cfg = OptimizerConfig(**{**cfg.__dict__, "accum_steps": 2})
    mesh = make_mesh(4, 1, 1, devices=jax.devices()[:4])
    accumulated, _, _, history = _run(mesh, accum_cfg, [_batch(8, 0), _batch(8, 8)], noise=0.0)
    one_step, _, _, _ = _run(mesh, cfg, [_batch(16)], noise=0.0)
    _assert_trees_close(history[1], history[0], 0.0)  # no update after the first micro-batch
    moved = jax.tree.map(
        lambda a, b: np.abs(a - b).max(), jax.device_get(one_step.params), history[0]
    )
    assert max(jax.tree.leaves(moved)) > 1e-3  # the step did change the params
    _assert_trees_close(jax.device_get(accumulated.params), jax.device_get(one_step.params), 1e-6)


def test_ema_update(single_run):
    decay = 0.9
    state, _, _, history = single_run
    expected = history[0]
    for params in history[1:]:
        expected = jax.tree.map(lambda e, p: decay * e + (1 - decay) * p, expected, params)
    _assert_trees_close(jax.device_get(state.ema_params), expected, 1e-6)
    with pytest.raises(ValueError, match="ema_decay"):
        make_train_step(make_task().loss_fn, make_optimizer(OPT), ema_decay=1.5)


def test_bfloat16_compute_keeps_float32_master_params(single_run):
    _, _, f32_losses, _ = single_run
    bf16, _, bf16_losses, _ = _run(
        make_mesh(8, 1, 1), OPT, [_batch(8, 0)], ema_decay=None, compute_dtype=jnp.bfloat16
    )
    assert bf16.ema_params is None
    assert all(x.dtype == jnp.float32 for x in jax.tree.leaves(bf16.params))
    assert bf16_losses[0] != f32_losses[0]  # really computed in bfloat16
    np.testing.assert_allclose(bf16_losses[0], f32_losses[0], rtol=2e-2)


def test_learning_rate_schedule():
    cfg = OptimizerConfig(learning_rate=1.0, warmup_steps=10, total_steps=110, end_lr_ratio=0.1)
    assert float(learning_rate_at(cfg, 0)) == 0.0
    np.testing.assert_allclose(learning_rate_at(cfg, 5), 0.5, rtol=1e-6)
    np.testing.assert_allclose(learning_rate_at(cfg, 10), 1.0, rtol=1e-6)
    np.testing.assert_allclose(learning_rate_at(cfg, 60), 0.55, rtol=1e-5)
    np.testing.assert_allclose(learning_rate_at(cfg, 110), 0.1, rtol=1e-5)
    accum = OptimizerConfig(learning_rate=1.0, warmup_steps=10, total_steps=110, accum_steps=4)
    np.testing.assert_allclose(learning_rate_at(accum, 20), learning_rate_at(cfg, 5), rtol=1e-6)


def test_weight_decay_mask():
    params = {
        "dense": {"kernel": jnp.ones((2, 3)), "bias": jnp.ones(3)},
        "norm": {"scale": jnp.ones(3)},
        "pos": jnp.ones((4,)),
        "emb": jnp.ones((5, 2)),
    }
    mask = weight_decay_mask(params)
    assert mask == {
        "dense": {"kernel": True, "bias": False},
        "norm": {"scale": False},
        "pos": False,
        "emb": True,
    }


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"learning_rate": 0.0}, "learning_rate"),
        ({"warmup_steps": 20}, "warmup_steps"),
        ({"total_steps": 0}, "total_steps"),
        ({"end_lr_ratio": 1.5}, "end_lr_ratio"),
        ({"b2": 1.0}, "b2"),
        ({"weight_decay": -1.0}, "weight_decay"),
        ({"accum_steps": 0}, "accum_steps"),
        ({"grad_clip_norm": -1.0}, "grad_clip_norm"),
    ],
)
def test_bad_optimizer_config_raises(kwargs, match):
    base = {"learning_rate": 1e-3, "warmup_steps": 1, "total_steps": 10}
    with pytest.raises(ValueError, match=match):
        OptimizerConfig(**{**base, **kwargs})


def test_host_to_global_checks_divisibility():
    mesh = make_mesh(2, 2, 2)
    batch = host_to_global(_batch(8), mesh)
    assert batch["x"].sharding.spec[0] == ("data", "fsdp")
    with pytest.raises(ValueError, match="not divisible"):
        host_to_global(_batch(6), mesh)
    with pytest.raises(ValueError, match="scalar"):
        host_to_global({"x": np.float32(1.0)}, mesh)
