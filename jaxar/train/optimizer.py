"""AdamW with linear warmup + cosine decay, global-norm clipping and gradient accumulation.

``OptimizerConfig.total_steps`` and ``warmup_steps`` count optimizer updates. With
``accum_steps > 1`` one update happens every ``accum_steps`` train steps (``optax.MultiSteps``
averages the micro-batch gradients), so train step ``s`` uses the rate of update
``s // accum_steps``.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
import optax

from jaxar.task import STACK_NAMES

# Parameter names that never get weight decay (biases and normalisation scales).
NO_DECAY_NAMES = ("bias", "scale")


@dataclasses.dataclass(frozen=True)
class OptimizerConfig:
    """AdamW hyperparameters. ``grad_clip_norm`` of None or 0 disables clipping."""

    learning_rate: float
    warmup_steps: int
    total_steps: int
    end_lr_ratio: float = 0.1
    b1: float = 0.9
    b2: float = 0.95
    eps: float = 1e-8
    weight_decay: float = 0.05
    grad_clip_norm: float | None = 1.0
    accum_steps: int = 1

    def __post_init__(self):
        problems = []
        if not self.learning_rate > 0:
            problems.append(f"learning_rate must be > 0, got {self.learning_rate}")
        if self.total_steps < 1:
            problems.append(f"total_steps must be >= 1, got {self.total_steps}")
        if not 0 <= self.warmup_steps <= self.total_steps:
            problems.append(
                f"warmup_steps must be in [0, total_steps={self.total_steps}], "
                f"got {self.warmup_steps}"
            )
        if not 0.0 <= self.end_lr_ratio <= 1.0:
            problems.append(f"end_lr_ratio must be in [0, 1], got {self.end_lr_ratio}")
        for name in ("b1", "b2"):
            if not 0.0 <= getattr(self, name) < 1.0:
                problems.append(f"{name} must be in [0, 1), got {getattr(self, name)}")
        if not self.eps > 0:
            problems.append(f"eps must be > 0, got {self.eps}")
        if self.weight_decay < 0:
            problems.append(f"weight_decay must be >= 0, got {self.weight_decay}")
        if self.grad_clip_norm is not None and self.grad_clip_norm < 0:
            problems.append(f"grad_clip_norm must be >= 0 or None, got {self.grad_clip_norm}")
        if not isinstance(self.accum_steps, int) or self.accum_steps < 1:
            problems.append(f"accum_steps must be an int >= 1, got {self.accum_steps}")
        if problems:
            raise ValueError("invalid OptimizerConfig: " + "; ".join(problems))


def learning_rate_schedule(cfg: OptimizerConfig) -> optax.Schedule:
    """Linear warmup from 0 to ``learning_rate``, then cosine decay to ``end_lr_ratio * lr``.

    The argument of the schedule counts optimizer updates.
    """
    decay = optax.cosine_decay_schedule(
        init_value=cfg.learning_rate,
        decay_steps=max(cfg.total_steps - cfg.warmup_steps, 1),
        alpha=cfg.end_lr_ratio,
    )
    if cfg.warmup_steps == 0:
        return decay
    warmup = optax.linear_schedule(0.0, cfg.learning_rate, cfg.warmup_steps)
    return optax.join_schedules([warmup, decay], boundaries=[cfg.warmup_steps])


def learning_rate_at(cfg: OptimizerConfig, step: int | jax.Array) -> jax.Array:
    """Learning rate used at train step ``step`` (accounts for gradient accumulation)."""
    return learning_rate_schedule(cfg)(jnp.asarray(step) // cfg.accum_steps)


def _path_name(entry: Any) -> str:
    for attr in ("key", "name", "idx"):
        if hasattr(entry, attr):
            return str(getattr(entry, attr))
    return str(entry)


def weight_decay_mask(params: Any) -> Any:
    """True for leaves that get weight decay: >= 2-D per layer and not named bias/scale."""

    def decays(path, leaf) -> bool:
        names = [_path_name(entry) for entry in path]
        if names and names[-1] == "value":  # leaf inside an nn.Partitioned box
            names = names[:-1]
        name = names[-1] if names else ""
        stacked = any(n in STACK_NAMES for n in names[:-1])
        return jnp.ndim(leaf) - int(stacked) >= 2 and name not in NO_DECAY_NAMES

    return jax.tree_util.tree_map_with_path(decays, params)


def make_optimizer(cfg: OptimizerConfig) -> optax.GradientTransformation:
    """``clip_by_global_norm -> adamw(schedule, masked decay)``, wrapped in MultiSteps if needed."""
    parts = []
    if cfg.grad_clip_norm:
        parts.append(optax.clip_by_global_norm(cfg.grad_clip_norm))
    parts.append(
        optax.adamw(
            learning_rate=learning_rate_schedule(cfg),
            b1=cfg.b1,
            b2=cfg.b2,
            eps=cfg.eps,
            weight_decay=cfg.weight_decay,
            mask=weight_decay_mask,
        )
    )
    optimizer = optax.chain(*parts)
    if cfg.accum_steps > 1:
        optimizer = optax.MultiSteps(optimizer, every_k_schedule=cfg.accum_steps)
    return optimizer
