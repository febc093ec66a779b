"""The train step of a generator experiment config as an ahead-of-time compile target.

No tokenizer checkpoint is needed: the config's ``tokens`` entry (``{vocab_size, num_tokens}``)
stands in for it, so a pod-sized config can be checked on a laptop with fake devices.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxar.aot import AotTarget
from jaxar.recipes.config import as_dict, train_config_from
from jaxar.recipes.families import get_family
from jaxar.sharding import batch_sharding, logical_to_sharding, replicated
from jaxar.train.optimizer import make_optimizer
from jaxar.train.state import _init_state
from jaxar.train.step import make_train_step


@dataclasses.dataclass(frozen=True)
class TokenSpec:
    """What a generator needs to know of its tokenizer: code vocabulary and tokens per image."""

    vocab_size: int
    num_tokens: int


def generator_train_target(config: Any) -> AotTarget:
    """``AotTarget`` for ``train_step(state, batch, rng)`` of a generator config."""
    if "tokens" not in config:
        raise ValueError("config needs tokens={vocab_size, num_tokens} for an AOT check")
    spec = TokenSpec(**as_dict(config.tokens))
    family = get_family(config.model.family)
    _, task = family.build(as_dict(config.model), spec, as_dict(config.get("loss")))
    train = train_config_from(config)
    optimizer = make_optimizer(train.optimizer)
    batch_size = config.data.batch_size
    batch = {
        "codes": jax.ShapeDtypeStruct((batch_size, spec.num_tokens), jnp.int32),
        "label": jax.ShapeDtypeStruct((batch_size,), jnp.int32),
    }
    ema = train.ema_decay is not None
    init = lambda key, b: _init_state(task, optimizer, ema, key, b)
    boxed = jax.eval_shape(init, jax.random.key(0), batch)
    state = nn.unbox(boxed)
    step = make_train_step(task.loss_fn, optimizer, ema_decay=train.ema_decay)

    def in_shardings(mesh):
        return (logical_to_sharding(boxed, mesh), batch_sharding(mesh), replicated(mesh))

    def out_shardings(mesh):
        return (logical_to_sharding(boxed, mesh), replicated(mesh))

    return AotTarget(
        step, (state, batch, jax.random.key(0)), in_shardings, out_shardings, donate_argnums=0
    )
