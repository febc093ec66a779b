"""The generator families the experiment scripts know, behind one small interface.

A ``Family`` turns a ``model`` config dict (``{family, preset, **overrides}``) plus the
restored tokenizer into a model config and a training ``Task``, and builds jitted samplers
``(params, labels [B], rng) -> flat codes`` (layout of ``jaxar.recipes.codes``). Imports are
lazy so a family's modules load only when it is used.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

from jaxar.recipes.config import dataclass_from
from jaxar.train.task import Task


@dataclasses.dataclass(frozen=True)
class Family:
    name: str
    # (model config dict, tokenizer, loss options) -> (model config, Task)
    build: Callable[[dict, Any, dict], tuple[Any, Task]]
    # (model config, tokenizer, sampling options) -> jitted (params, labels, rng) -> codes
    make_sampler: Callable[[Any, Any, dict], Callable]

    @staticmethod
    def num_classes(model_cfg: Any) -> int:
        return model_cfg.num_classes


def _preset_config(values: dict, presets: Callable[..., Any], cls: type, **derived: Any):
    values = {k: v for k, v in values.items() if k != "family"}
    preset = values.pop("preset", None)
    if preset is None:
        return dataclass_from(cls, {**derived, **values})
    base = dataclasses.asdict(presets(preset))
    return dataclass_from(cls, {**base, **derived, **values})


def _gpt_build(model: dict, tokenizer, loss: dict):
    from jaxar.generators.gpt import GPTConfig, gpt_config, make_gpt_task

    cfg = _preset_config(
        model, gpt_config, GPTConfig,
        vocab_size=tokenizer.vocab_size, block_size=tokenizer.num_tokens,
    )  # fmt: skip
    return cfg, make_gpt_task(cfg, label_smoothing=loss.get("label_smoothing", 0.0))


def _gpt_sampler(cfg, tokenizer, sampling: dict):
    from jaxar.sampling.autoregressive import make_sampler

    del tokenizer
    return make_sampler(cfg, **sampling)


FAMILIES: dict[str, Family] = {
    "gpt": Family("gpt", _gpt_build, _gpt_sampler),
}


def get_family(name: str) -> Family:
    if name not in FAMILIES:
        raise ValueError(f"unknown generator family {name!r}; known: {sorted(FAMILIES)}")
    return FAMILIES[name]
