"""The train step of a generator experiment config as an ahead-of-time compile target.

No tokenizer checkpoint is needed: the config's ``tokens`` entry (``{vocab_size, num_tokens}``,
or ``{num_tokens, latent_dim}`` for a continuous tokenizer, e.g. MAR over KL-16) stands in for
it, so a pod-sized config can be checked on a laptop with fake devices.
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
    """What a generator needs to know of its tokenizer: code vocabulary and tokens per image
    (continuous tokenizers: ``latent_dim`` channels per token and no vocabulary)."""

    num_tokens: int
    vocab_size: int = 0
    latent_dim: int = 0

    @property
    def continuous(self) -> bool:
        return self.latent_dim > 0

    def batch_codes(self, batch_size: int) -> jax.ShapeDtypeStruct:
        if self.continuous:
            return jax.ShapeDtypeStruct((batch_size, self.num_tokens, self.latent_dim), jnp.float32)
        return jax.ShapeDtypeStruct((batch_size, self.num_tokens), jnp.int32)


def generator_train_target(config: Any) -> AotTarget:
    """``AotTarget`` for ``train_step(state, batch, rng)`` of a generator config."""
    if "tokens" not in config:
        raise ValueError(
            "config needs tokens={vocab_size, num_tokens} (continuous: {num_tokens, "
            "latent_dim}) for an AOT check"
        )
    spec = TokenSpec(**as_dict(config.tokens))
    family = get_family(config.model.family)
    _, task = family.build(as_dict(config.model), spec, as_dict(config.get("loss")))
    train = train_config_from(config)
    optimizer = make_optimizer(train.optimizer)
    batch_size = config.data.batch_size
    batch = {
        "codes": spec.batch_codes(batch_size),
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
