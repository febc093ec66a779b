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


def _check_matches_tokenizer(family: str, cfg: Any, expected: dict[str, Any]) -> None:
    """Raises ValueError when a model field the tokenizer fixes was set to another value."""
    for field, value in expected.items():
        got = getattr(cfg, field)
        if got != value:
            raise ValueError(
                f"model.{field}={got!r} does not match the tokenizer, which needs "
                f"model.{field}={value!r} for family {family!r}; drop the override (it is "
                f"derived from the tokenizer) or use a matching tokenizer_workdir"
            )


def _gpt_build(model: dict, tokenizer, loss: dict):
    from jaxar.generators.gpt import GPTConfig, gpt_config, make_gpt_task

    derived = {"vocab_size": tokenizer.vocab_size, "block_size": tokenizer.num_tokens}
    cfg = _preset_config(model, gpt_config, GPTConfig, **derived)
    _check_matches_tokenizer("gpt", cfg, derived)
    return cfg, make_gpt_task(cfg, label_smoothing=loss.get("label_smoothing", 0.0))


def _gpt_sampler(cfg, tokenizer, sampling: dict):
    from jaxar.sampling.autoregressive import make_sampler

    del tokenizer
    sampler = make_sampler(cfg, **sampling)
    sampler.forward_passes_per_image = cfg.block_size  # one per token (prefill + scan)
    return sampler


def _token_family(
    config_module: str,
    config_cls: str,
    presets: str,
    make_task: str,
    sampler_module: str,
    make_sampler: str,
    **tokenizer_fields: str,
):
    """A family whose model config takes ``vocab_size`` and ``block_size`` from the tokenizer
    (plus ``tokenizer_fields``: model field -> TokenizerConfig field) and whose sampler
    returns codes in the flat layout (or [B,h,w(,D)], reshaped here)."""
    import importlib

    def build(model: dict, tokenizer, loss: dict):
        module = importlib.import_module(config_module)
        derived = {k: getattr(tokenizer.config, v) for k, v in tokenizer_fields.items()}
        derived.update(vocab_size=tokenizer.vocab_size, block_size=tokenizer.num_tokens)
        cfg = _preset_config(
            model, getattr(module, presets), getattr(module, config_cls), **derived
        )  # fmt: skip
        _check_matches_tokenizer(model.get("family", config_module), cfg, derived)
        return cfg, getattr(module, make_task)(cfg, **loss)

    def sampler(cfg, tokenizer, sampling: dict):
        del tokenizer
        inner = getattr(importlib.import_module(sampler_module), make_sampler)(cfg, **sampling)
        depth = getattr(cfg, "code_depth", None) if "code_depth" in tokenizer_fields else None

        def flat(params, labels, rng):
            codes = inner(params, labels, rng)
            return codes.reshape(len(labels), -1, *(() if depth is None else (depth,)))

        flat.forward_passes_per_image = getattr(inner, "forward_passes_per_image", None)
        return flat

    return build, sampler


def _var_build(model: dict, tokenizer, loss: dict):
    from jaxar.generators.var import VARConfig, make_var_task, var_config
    from jaxar.tokenizers.autoencoder import make_quantizer

    tok = tokenizer.config
    if tok.quantizer != "msvq":
        raise ValueError(f"VAR needs a multi-scale (msvq) tokenizer, got {tok.quantizer!r}")
    derived = {"vocab_size": tok.codebook_size, "code_dim": tok.code_dim,
               "patch_nums": tuple(tok.scales)}  # fmt: skip
    cfg = _preset_config(model, var_config, VARConfig, **derived)
    _check_matches_tokenizer("var", cfg, derived)
    quantizer_params = tokenizer.variables["params"]["quantizer"]
    task = make_var_task(cfg, make_quantizer(tok), quantizer_params, **loss)
    return cfg, task


def _var_sampler(cfg, tokenizer, sampling: dict):
    from jaxar.generators.var import concat_scales
    from jaxar.sampling.scalewise import make_scalewise_sampler
    from jaxar.tokenizers.autoencoder import make_quantizer

    inner = make_scalewise_sampler(cfg, make_quantizer(tokenizer.config), **sampling)
    quantizer_params = tokenizer.variables["params"]["quantizer"]

    def flat(params, labels, rng):
        out = inner({"var": params, "quantizer": quantizer_params}, labels, rng)
        return concat_scales(out["codes"])

    flat.forward_passes_per_image = len(cfg.patch_nums)
    return flat


FAMILIES: dict[str, Family] = {
    "var": Family("var", _var_build, _var_sampler),
    "gpt": Family("gpt", _gpt_build, _gpt_sampler),
    "maskgit": Family("maskgit", *_token_family(
        "jaxar.generators.maskgit", "MaskGITConfig", "maskgit_config", "make_maskgit_task",
        "jaxar.sampling.masked", "make_maskgit_sampler")),
    "randar": Family("randar", *_token_family(
        "jaxar.generators.randar", "RandARConfig", "randar_config", "make_randar_task",
        "jaxar.sampling.random_order", "make_randar_sampler")),
    "rq": Family("rq", *_token_family(
        "jaxar.generators.rq_transformer", "RQTransformerConfig", "rq_config", "make_rq_task",
        "jaxar.sampling.rq", "make_rq_sampler", code_depth="rq_depth")),
}  # fmt: skip


def get_family(name: str) -> Family:
    if name not in FAMILIES:
        raise ValueError(f"unknown generator family {name!r}; known: {sorted(FAMILIES)}")
    return FAMILIES[name]
