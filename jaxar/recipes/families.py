"""The generator families the experiment scripts know, behind one small interface.

A ``Family`` turns a ``model`` config dict (``{family, preset, **overrides}``) plus the
restored tokenizer into a model config and a training ``Task``, and builds its samplers: one
``jaxar.sampling.base.Sampler`` per (model config, settings, accelerator), whose output has the
codes in the flat layout of ``jaxar.recipes.codes`` and the forward passes per image. Sampling
settings are the common ``SamplingOptions`` (one meaning in every family) plus the family's own
``sampler_fields``; an accelerator (``jaxar.sampling.accelerators``) adds its own. Imports are
lazy so a family's modules load only when it is used.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from typing import Any

import jax.numpy as jnp

from jaxar.recipes.config import dataclass_from
from jaxar.sampling.accelerators import get_accelerator
from jaxar.sampling.base import (
    Sampler,
    at_precision,
    constant_passes,
    split_settings,
    unscanned_for_decoding,
    with_per_layer_params,
    with_precision,
)
from jaxar.task import Task


@dataclasses.dataclass(frozen=True)
class SamplerBody:
    """A family's traceable sampler: ``run(params, labels, rng, *extra) -> {"codes" (flat),
    "forward_passes" [B](, "logits")}``, the host-side ``check(labels)`` and ``extra``."""

    run: Callable[..., dict]
    check: Callable[[Any], None]
    extra: tuple = ()


@dataclasses.dataclass(frozen=True)
class Family:
    name: str
    # (model config dict, tokenizer, loss options) -> (model config, Task)
    build: Callable[[dict, Any, dict], tuple[Any, Task]]
    # (model config, tokenizer, sampling settings: common + own) -> SamplerBody
    sampler_body: Callable[[Any, Any, dict], SamplerBody]
    sampler_fields: tuple[str, ...] = ()  # the family's own sampling settings
    sampler_defaults: tuple[tuple[str, Any], ...] = ()  # e.g. VAR: cfg_schedule "linear"
    decodes_per_token: bool = False  # samples with a per-layer stack (unscanned_for_decoding)

    @staticmethod
    def num_classes(model_cfg: Any) -> int:
        return model_cfg.num_classes

    def make_sampler(
        self,
        model_cfg: Any,
        tokenizer: Any,
        settings: dict[str, Any],
        accelerator: str | None = None,
        decode: Callable | None = None,
    ) -> Sampler:
        """One compiled ``Sampler`` for these settings (and accelerator, e.g. ``"sjd"``)."""
        settings = {**dict(self.sampler_defaults), **settings}
        accel_settings, owner, fields = {}, f"family {self.name!r}", self.sampler_fields
        if accelerator:
            accel = get_accelerator(accelerator, self.name)
            accel_settings = {k: settings.pop(k) for k in accel.fields if k in settings}
            owner = f"family {self.name!r} with accelerator {accelerator!r}"
            fields = fields + accel.fields
        options, _ = split_settings(settings, fields, owner)
        stored_cfg = model_cfg
        if self.decodes_per_token:
            model_cfg = unscanned_for_decoding(model_cfg)
        model_cfg = at_precision(model_cfg, options.precision)
        if accelerator:
            codebook = tokenizer.code_embeddings() if accel.needs_codebook else None
            run, extra, check = accel.build(model_cfg, codebook, settings, accel_settings)
            body = SamplerBody(_passes_dict(run), check, tuple(extra))
        else:
            body = self.sampler_body(model_cfg, tokenizer, settings)
        name = self.name + (f"+{accelerator}" if accelerator else "")
        run = with_precision(body.run, options.precision)
        if self.decodes_per_token:
            run = with_per_layer_params(run, stored_cfg)
        return Sampler(
            run, options=options, settings={**settings, **accel_settings},
            check=body.check, extra=body.extra, decode=decode, name=name,
        )  # fmt: skip


def _passes_dict(run: Callable) -> Callable:
    """An accelerator's ``(codes, passes)`` body -> the common output dict."""

    def wrapped(params, labels, rng, *extra):
        codes, passes = run(params, labels, rng, *extra)
        return {"codes": codes, "forward_passes": passes}

    return wrapped


def _with_logits(out: Any, codes_of: Callable, passes, logits_of: Callable | None = None):
    """The common output dict of a body that returns codes or ``(codes, logits)``."""
    codes, logits = out if isinstance(out, tuple) else (out, None)
    result = {"codes": codes_of(codes), "forward_passes": passes}
    if logits is not None:
        result["logits"] = logits if logits_of is None else logits_of(logits)
    return result


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


def _gpt_sampler(cfg, tokenizer, settings: dict) -> SamplerBody:
    from jaxar.sampling.autoregressive import make_sampler

    del tokenizer
    inner = make_sampler(cfg, **settings)
    passes = constant_passes(cfg.block_size)  # one per token (prefill + scan)

    def run(params, labels, rng):
        return _with_logits(inner.run(params, labels, rng), lambda c: c, passes(labels))

    return SamplerBody(run, inner.check)


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

    def sampler(cfg, tokenizer, settings: dict) -> SamplerBody:
        del tokenizer
        inner = getattr(importlib.import_module(sampler_module), make_sampler)(cfg, **settings)
        depth = getattr(cfg, "code_depth", None) if "code_depth" in tokenizer_fields else None
        shape = () if depth is None else (depth,)
        passes = inner.forward_passes_per_image
        passes = constant_passes(passes["spatial"] if isinstance(passes, dict) else passes)

        def run(params, labels, rng):
            out = inner.run(params, labels, rng)
            flat = lambda x: x.reshape(len(labels), -1, *shape)  # noqa: E731
            logits = lambda x: x.reshape(len(labels), -1, *shape, x.shape[-1])  # noqa: E731
            return _with_logits(out, flat, passes(labels), logits)

        return SamplerBody(run, inner.check)

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


def _var_sampler(cfg, tokenizer, settings: dict) -> SamplerBody:
    from jaxar.generators.var import concat_scales
    from jaxar.sampling.scalewise import make_scalewise_sampler
    from jaxar.tokenizers.autoencoder import make_quantizer

    inner = make_scalewise_sampler(cfg, make_quantizer(tokenizer.config), **settings)
    passes = constant_passes(len(cfg.patch_nums))  # one cached pass per scale

    def run(params, labels, rng, quantizer_params):
        out = inner.run({"var": params, "quantizer": quantizer_params}, labels, rng)
        result = {"codes": concat_scales(out["codes"]), "forward_passes": passes(labels)}
        if "logits" in out:
            result["logits"] = jnp.concatenate(out["logits"], axis=1)
        return result

    quantizer_params = tokenizer.variables["params"]["quantizer"]
    return SamplerBody(run, inner.check, (quantizer_params,))


def _mar_build(model: dict, tokenizer, loss: dict):
    from jaxar.generators.mar import MARConfig, make_mar_task, mar_config

    if not tokenizer.continuous:
        raise ValueError(
            f"MAR needs a continuous (kl) tokenizer, got a discrete one ({tokenizer.vocab_size} "
            "codes): train one with --config tokenizer_digits.py:kl or convert MAR's KL-16 VAE"
        )
    grid = math.isqrt(tokenizer.num_tokens)
    if grid * grid != tokenizer.num_tokens:
        raise ValueError(f"MAR needs a square latent grid, got {tokenizer.num_tokens} tokens")
    derived = {"latent_dim": tokenizer.latent_dim, "latent_grid": grid}
    cfg = _preset_config(model, mar_config, MARConfig, **derived)
    _check_matches_tokenizer("mar", cfg, derived)
    if loss:
        raise ValueError(f"MAR has no loss options, got {sorted(loss)}")
    return cfg, make_mar_task(cfg)


def _mar_sampler(cfg, tokenizer, settings: dict) -> SamplerBody:
    from jaxar.sampling.mar import make_mar_sampler

    del tokenizer
    inner = make_mar_sampler(cfg, **settings)
    passes = constant_passes(inner.forward_passes_per_image)
    head_calls = constant_passes(inner.head_calls_per_image)

    def run(params, labels, rng):
        latents = inner.run(params, labels, rng)
        return {
            "codes": latents,
            "forward_passes": passes(labels),
            "head_calls": head_calls(labels),
        }

    return SamplerBody(run, inner.check)


FAMILIES: dict[str, Family] = {
    "var": Family("var", _var_build, _var_sampler, ("return_logits",),
                  (("cfg_schedule", "linear"),)),
    "gpt": Family(
        "gpt", _gpt_build, _gpt_sampler, ("cfg_interval", "return_logits", "decode_segments"),
        decodes_per_token=True,
    ),
    "maskgit": Family("maskgit", *_token_family(
        "jaxar.generators.maskgit", "MaskGITConfig", "maskgit_config", "make_maskgit_task",
        "jaxar.sampling.masked", "make_maskgit_sampler"),
        ("num_steps", "choice_temperature", "temperature_schedule", "mask_schedule")),
    "randar": Family("randar", *_token_family(
        "jaxar.generators.randar", "RandARConfig", "randar_config", "make_randar_task",
        "jaxar.sampling.random_order", "make_randar_sampler"),
        ("order", "num_inference_steps", "return_logits"), decodes_per_token=True),
    "rq": Family("rq", *_token_family(
        "jaxar.generators.rq_transformer", "RQTransformerConfig", "rq_config", "make_rq_task",
        "jaxar.sampling.rq", "make_rq_sampler", code_depth="rq_depth"), ("return_logits",),
        decodes_per_token=True),
    "mar": Family("mar", _mar_build, _mar_sampler,
                  ("num_iter", "num_sampling_steps", "diffusion_sampler", "ddim_eta"),
                  (("cfg_schedule", "linear"),)),
}  # fmt: skip


def get_family(name: str) -> Family:
    if name not in FAMILIES:
        raise ValueError(f"unknown generator family {name!r}; known: {sorted(FAMILIES)}")
    return FAMILIES[name]
