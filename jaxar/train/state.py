"""Train state and its sharded creation."""

from __future__ import annotations

from typing import Any

import flax.struct
import jax
import jax.numpy as jnp
import optax
from jax.sharding import Mesh

from jaxar.sharding import DEFAULT_RULES, sharded_init
from jaxar.task import Task


@flax.struct.dataclass
class TrainState:
    """Everything that changes during training (a pytree).

    Attributes:
      step: int32 scalar, number of train steps taken.
      params: trainable parameters (unboxed arrays).
      opt_state: optimizer state; its param-shaped parts share the params' shardings.
      ema_params: exponential moving average of ``params`` (same tree), or None.
      model_state: non-trainable collections (``{}`` when none).
    """

    step: jax.Array
    params: Any
    opt_state: Any
    ema_params: Any
    model_state: Any


def _init_state(
    task: Task, optimizer: optax.GradientTransformation, ema: bool, rng: jax.Array, batch: Any
) -> TrainState:
    """Builds a TrainState whose param-shaped leaves keep their ``nn.Partitioned`` boxes.

    ``jax.tree.map`` maps through the boxes, so optimizer moments and EMA copies inherit the
    params' logical annotations and hence their shardings.
    """
    params, model_state = task.init(rng, batch)
    return TrainState(
        step=jnp.zeros((), jnp.int32),
        params=params,
        opt_state=optimizer.init(params),
        ema_params=jax.tree.map(jnp.copy, params) if ema else None,
        model_state=model_state if model_state is not None else {},
    )


def create_train_state(
    task: Task,
    optimizer: optax.GradientTransformation,
    rng: jax.Array,
    sample_batch: dict[str, Any],
    mesh: Mesh,
    rules=DEFAULT_RULES,
    ema: bool = True,
) -> tuple[TrainState, TrainState]:
    """Initialises a TrainState directly in its shardings on ``mesh``.

    ``jax.eval_shape`` -> logical partition specs -> NamedShardings -> ``jax.jit`` with
    ``out_shardings``. The same rng gives the same values on any mesh.

    Args:
      task: provides ``init(rng, batch)``.
      optimizer: an optax transformation (e.g. ``make_optimizer(cfg)``).
      rng: PRNG key for parameter init.
      sample_batch: a batch with the training shapes (host numpy is fine).
      mesh: target device mesh.
      rules: logical-axis rules.
      ema: keep an EMA copy of the params.

    Returns:
      ``(state, state_shardings)``; ``state_shardings`` is a TrainState of NamedShardings.
    """
    sample_batch = jax.tree.map(jnp.asarray, sample_batch)
    return sharded_init(
        lambda key, batch: _init_state(task, optimizer, ema, key, batch),
        mesh,
        rng,
        sample_batch,
        rules=rules,
    )
