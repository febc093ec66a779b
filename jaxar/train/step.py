"""The train step: value_and_grad -> optimizer update -> EMA, jitted with shardings."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import optax
from jax.sharding import Mesh

from jaxar.sharding import DEFAULT_RULES, replicated, use_mesh
from jaxar.task import LossFn
from jaxar.train.state import TrainState

TrainStep = Callable[[TrainState, dict[str, Any], jax.Array], tuple[TrainState, dict]]


def cast_floating(tree: Any, dtype: Any) -> Any:
    """Casts the floating-point leaves of ``tree`` to ``dtype`` (others unchanged)."""

    def cast(x):
        if jnp.issubdtype(jnp.result_type(x), jnp.floating):
            return jnp.asarray(x, dtype)
        return x

    return jax.tree.map(cast, tree)


def ema_update(ema_params: Any, params: Any, decay: float) -> Any:
    """``ema <- decay * ema + (1 - decay) * params`` leaf by leaf."""
    return jax.tree.map(
        lambda e, p: decay * e + (1.0 - decay) * p.astype(e.dtype), ema_params, params
    )


def make_train_step(
    loss_fn: LossFn,
    optimizer: optax.GradientTransformation,
    ema_decay: float | None = 0.999,
    compute_dtype: Any = None,
    learning_rate_fn: Callable[[jax.Array], jax.Array] | None = None,
) -> TrainStep:
    """Returns ``train_step(state, batch, rng) -> (state, metrics)``.

    The rng is folded with ``state.step`` so each step draws fresh, reproducible randomness.
    With ``compute_dtype`` (e.g. ``jnp.bfloat16``) floating params are cast for the forward
    and backward pass; the float32 master params and optimizer state are untouched.
    Metrics: the loss_fn's metrics plus ``loss``, ``grad_norm`` (before clipping) and
    ``learning_rate`` when ``learning_rate_fn(step)`` is given.
    With ``ema_decay`` set, ``state.ema_params`` must not be None.
    """
    if ema_decay is not None and not 0.0 <= ema_decay < 1.0:
        raise ValueError(f"ema_decay must be in [0, 1) or None, got {ema_decay}")

    def train_step(state: TrainState, batch: dict[str, Any], rng: jax.Array):
        step_rng = jax.random.fold_in(rng, state.step)

        def compute_loss(params):
            if compute_dtype is not None:
                params = cast_floating(params, compute_dtype)
            return loss_fn(params, state.model_state, batch, step_rng, state.step)

        grad_fn = jax.value_and_grad(compute_loss, has_aux=True)
        (loss, (metrics, new_model_state)), grads = grad_fn(state.params)
        updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        ema_params = state.ema_params
        if ema_decay is not None:
            if ema_params is None:
                raise ValueError("ema_decay is set but the TrainState has no ema_params")
            ema_params = ema_update(ema_params, params, ema_decay)
        metrics = dict(metrics)
        metrics["loss"] = loss.astype(jnp.float32)
        metrics["grad_norm"] = optax.tree.norm(grads).astype(jnp.float32)
        if learning_rate_fn is not None:
            metrics["learning_rate"] = jnp.asarray(learning_rate_fn(state.step), jnp.float32)
        new_state = state.replace(
            step=state.step + 1,
            params=params,
            opt_state=opt_state,
            ema_params=ema_params,
            model_state=new_model_state if new_model_state is not None else {},
        )
        return new_state, metrics

    return train_step


def jit_train_step(
    train_step: TrainStep,
    mesh: Mesh,
    state_shardings: TrainState,
    batch_shardings: Any,
    rules=DEFAULT_RULES,
) -> TrainStep:
    """``jax.jit`` with in/out shardings and the state donated (``donate_argnums=0``).

    ``batch_shardings`` may be one sharding (a prefix for every batch leaf) or a tree.
    Tracing happens under ``use_mesh(mesh, rules)`` so logical constraints inside the model
    resolve. The jitted function is available as ``.jitted`` (e.g. for ``.lower``).
    """
    jitted = jax.jit(
        train_step,
        in_shardings=(state_shardings, batch_shardings, replicated(mesh)),
        out_shardings=(state_shardings, replicated(mesh)),
        donate_argnums=0,
    )

    def call(state, batch, rng):
        with use_mesh(mesh, rules):
            return jitted(state, batch, rng)

    call.jitted = jitted
    return call
