"""Input checks shared by every layer of the package (models, samplers, recipes).

They sit at the bottom of the import stack so that generators and samplers need not import
each other for them.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np


def concrete(x: Any) -> np.ndarray | None:
    """Host value of ``x``, or None under tracing."""
    if isinstance(x, jax.core.Tracer):
        return None
    return np.asarray(x)


def labels_checker(num_classes: int) -> Callable[[Any], None]:
    """The host check of class labels [B] in [0, num_classes) (the null class is not a label)."""
    return lambda labels: check_int_input("labels", labels, 1, num_classes)


def check_int_input(name: str, x: Any, ndim: int, upper: int) -> None:
    """ValueError unless ``x`` is an integer array of rank ``ndim`` with values in [0, upper)."""
    if jnp.ndim(x) != ndim:
        raise ValueError(f"{name} must have rank {ndim}, got shape {jnp.shape(x)}")
    if not jnp.issubdtype(jnp.result_type(x), jnp.integer):
        raise ValueError(f"{name} must be integers, got dtype {jnp.result_type(x)}")
    host = concrete(x)
    if host is not None and host.size and (host.min() < 0 or host.max() >= upper):
        raise ValueError(f"{name} values must be in [0, {upper}), got [{host.min()}, {host.max()}]")
