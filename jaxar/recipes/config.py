"""Turning experiment configs (ml_collections / dicts) into the library's frozen dataclasses."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any, TypeVar

from jaxar.sharding import make_mesh
from jaxar.tokenizers.autoencoder import TokenizerConfig, get_preset
from jaxar.train.loop import TrainConfig, fit
from jaxar.train.optimizer import OptimizerConfig

T = TypeVar("T")


def as_dict(config: Any) -> dict[str, Any]:
    """A plain dict of a ConfigDict / mapping / dataclass (nested values converted too)."""
    if config is None:
        return {}
    if hasattr(config, "to_dict"):
        return config.to_dict()
    if dataclasses.is_dataclass(config):
        return dataclasses.asdict(config)
    if isinstance(config, Mapping):
        return {k: as_dict(v) if isinstance(v, Mapping) else v for k, v in config.items()}
    raise TypeError(f"cannot read a config from {type(config).__name__}")


def _tupled(value: Any) -> Any:
    return tuple(_tupled(v) for v in value) if isinstance(value, list | tuple) else value


def dataclass_from(cls: type[T], values: Any, **extra: Any) -> T:
    """``cls(**values)`` with lists turned into tuples; unknown keys raise a ValueError."""
    values = {**as_dict(values), **extra}
    fields = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - fields)
    if unknown:
        raise ValueError(f"{cls.__name__} has no fields {unknown}; known: {sorted(fields)}")
    return cls(**{k: _tupled(v) for k, v in values.items()})


def train_config_from(config: Any) -> TrainConfig:
    """``config.train`` (with an ``optimizer`` sub-dict) -> TrainConfig."""
    train = as_dict(config["train"])
    optimizer = dataclass_from(OptimizerConfig, train.pop("optimizer"))
    return dataclass_from(TrainConfig, train, optimizer=optimizer)


def fit_from_config(run: Any, task, dataset, workdir, resolved: dict | None = None):
    """``jaxar.train.loop.fit`` with everything taken from an experiment's ``RunSettings``
    (``jaxar.recipes.experiment``): the train settings, the mesh, the seed, and the whole
    config stored with each checkpoint.

    ``resolved`` replaces top-level entries of the stored config with fully resolved ones
    (e.g. the model config a preset expands to), so a checkpoint never depends on preset
    definitions that may change later."""
    return fit(
        task,
        iter(dataset),
        config=run.train,
        workdir=workdir,
        mesh=make_mesh(**run.mesh),
        rng_seed=run.seed,
        checkpoint_config={**run.stored, **(resolved or {})},
    )


def tokenizer_config_from(tokenizer: Any) -> TokenizerConfig:
    """``{preset: name, **overrides}`` -> TokenizerConfig (lists become tuples)."""
    values = as_dict(tokenizer)
    preset = values.pop("preset", None)
    if preset is None:
        return dataclass_from(TokenizerConfig, values)
    base = dataclasses.asdict(get_preset(preset))
    return dataclass_from(TokenizerConfig, {**base, **values})
