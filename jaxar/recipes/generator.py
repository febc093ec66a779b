"""Generator jobs: encode a dataset with a trained tokenizer, train a generator, sample.

Experiment config (see ``jaxar/configs/gpt_digits.py``)::

    seed, mesh {data, fsdp, tensor},
    data {name, image_size, channels, batch_size, ...}   (the images the codes come from),
    tokenizer_workdir                                    (a train_tokenizer workdir),
    model {family, preset, **config overrides}           (jaxar.recipes.families),
    loss {...}                                           (family-specific options),
    train {num_steps, ..., optimizer {...}},
    sampling {cfg_scale, temperature, top_k, top_p, ...} (defaults for sampling)

    codes_dir, codes {augment, shard_size, ...}         (jaxar.recipes.extraction)

Codes use the flat layout of ``jaxar.recipes.codes`` and are extracted once to ArrayRecord
shards (default ``<workdir>/codes/train``; every process encodes its own part), then read with
grain, each process its own rows of every global batch. The stored config holds the
tokenizer as a resolved reference ``tokenizer_ref = {workdir, step, ema, fingerprint}``, so
``load_generator`` works from any directory and notices a different tokenizer.
"""

from __future__ import annotations

import dataclasses
import logging
import os
from typing import Any

import numpy as np

from jaxar.layers.scan import match_layer_layout
from jaxar.paths import resolve
from jaxar.recipes.config import fit_from_config
from jaxar.recipes.experiment import generator_experiment
from jaxar.recipes.extraction import codes_dataset, ensure_codes
from jaxar.recipes.families import FAMILIES, Family, get_family
from jaxar.recipes.tokenizer import LoadedTokenizer, load_tokenizer
from jaxar.sampling.base import SampleOutput, Sampler, freeze
from jaxar.train.checkpoint import restore_for_eval

__all__ = [
    "FAMILIES",
    "LoadedGenerator",
    "SampleOutput",
    "Sampler",
    "generator_dataset",
    "load_generator",
    "train_generator",
]

log = logging.getLogger(__name__)


def _without_ids(batch: dict) -> dict:
    return {"codes": batch["codes"], "label": batch["label"]}


def generator_dataset(config: Any, tokenizer: LoadedTokenizer, workdir, split: str = "train"):
    """The training batches ``{"codes": int32 [B, L(, D)], "label": int32 [B]}`` of a split
    (codes extracted first if needed; the example ids stay on the host)."""
    return codes_dataset(config, ensure_codes(config, tokenizer, workdir, split)).map(_without_ids)


def _preview_fn(family: Family, model_cfg, tokenizer: LoadedTokenizer, sampling: dict, classes):
    sampler = family.make_sampler(model_cfg, tokenizer, sampling, decode=tokenizer.decode_uint8)
    labels = np.arange(classes, dtype=np.int32)

    def sample_images(params, rng):
        return sampler(params, labels, rng).images

    return sample_images


def train_generator(config: Any, workdir: str | os.PathLike):
    """Trains (or resumes) a generator on the tokenized dataset; returns the final state.

    ``config`` (a ConfigDict, dict or ``GeneratorExperiment``) is resolved once, here.
    Extracts the codes first when ``codes_dir`` (default ``<workdir>/codes``) lacks them."""
    exp = generator_experiment(config)
    if not exp.tokenizer_workdir:
        raise ValueError("tokenizer_workdir is not set: point it at a train_tokenizer workdir")
    workdir = resolve(workdir)
    tokenizer = load_tokenizer(exp.tokenizer_workdir)
    family = get_family(exp.model.get("family"))
    model_cfg, task = family.build(exp.model, tokenizer, exp.loss)
    dataset = generator_dataset(exp, tokenizer, workdir)
    preview = _preview_fn(family, model_cfg, tokenizer, exp.sampling, family.num_classes(model_cfg))
    task = dataclasses.replace(task, sample_images=preview)
    resolved = {
        "model": {"family": family.name, **dataclasses.asdict(model_cfg)},
        "tokenizer_workdir": tokenizer.workdir,
        "tokenizer_ref": tokenizer.reference(),
    }
    return fit_from_config(exp.run, task, dataset, workdir, resolved)


@dataclasses.dataclass(frozen=True)
class LoadedGenerator:
    """A restored generator with its tokenizer.

    ``sampler(accelerator=None, **settings)`` gives the ``jaxar.sampling.base.Sampler`` for the
    stored ``sampling`` config updated by ``settings`` (built once per distinct settings and
    kept, so repeated calls and batches reuse one compilation); ``sample(labels, rng, ...)``
    runs it on the restored params -> ``SampleOutput`` (flat codes, uint8 images, forward
    passes per image). ``accelerator`` (e.g. ``"sjd"``; default: the config's
    ``sampling.accelerator``, ``"none"`` for the plain sampler) picks a training-free
    accelerator, whose settings (``window``, ...) go with the others."""

    family: Family
    model_config: Any
    params: Any
    tokenizer: LoadedTokenizer
    config: dict
    _samplers: dict = dataclasses.field(default_factory=dict, compare=False, repr=False)

    def sampler(self, accelerator: str | None = None, **settings: Any) -> Sampler:
        settings = {**self.config.get("sampling", {}), **settings}
        stored = settings.pop("accelerator", None)
        accelerator = stored if accelerator is None else accelerator
        accelerator = None if accelerator in (None, "", "none") else accelerator
        key = (accelerator, freeze(settings))
        if key not in self._samplers:
            self._samplers[key] = self.family.make_sampler(
                self.model_config, self.tokenizer, settings, accelerator,
                decode=self.tokenizer.decode_uint8,
            )  # fmt: skip
        return self._samplers[key]

    def sample(self, labels, rng, accelerator: str | None = None, **settings: Any):
        """Samples ``labels`` [B] (rng: a key or an int seed) -> ``SampleOutput``."""
        sampler = self.sampler(accelerator, **settings)
        return sampler(self.params, np.asarray(labels, np.int32), rng)


def _load_generator_tokenizer(config: dict, override: str | os.PathLike | None, use_ema: bool):
    """The tokenizer a generator was trained on: ``override`` or the stored reference (new
    checkpoints: ``tokenizer_ref``; older ones: a plain ``tokenizer_workdir`` string)."""
    ref = config.get("tokenizer_ref") or {}
    path = override or ref.get("workdir") or config.get("tokenizer_workdir")
    if not path:
        raise ValueError("the generator's config names no tokenizer; pass tokenizer_workdir=")
    tokenizer = load_tokenizer(path, use_ema=ref.get("ema", use_ema))
    expected = ref.get("fingerprint")
    if expected and tokenizer.fingerprint != expected:
        log.warning(
            "tokenizer %s (step %s, fingerprint %s) is not the one the generator was trained "
            "on (step %s, fingerprint %s): codes may decode wrongly",
            tokenizer.workdir, tokenizer.step, tokenizer.fingerprint[:12], ref.get("step"),
            expected[:12],
        )  # fmt: skip
    return tokenizer


def load_generator(
    workdir: str | os.PathLike,
    use_ema: bool = True,
    step: int | None = None,
    tokenizer_workdir: str | os.PathLike | None = None,
):
    """Restores a generator trained by ``train_generator`` and its tokenizer.

    ``tokenizer_workdir`` overrides the stored tokenizer reference (e.g. a moved tokenizer);
    a tokenizer whose fingerprint differs from the stored one is loaded with a warning. The
    tokenizer's EMA choice is the one the generator's codes were made with."""
    restored, config = restore_for_eval(workdir, step=step)
    if config is None:
        raise ValueError(f"checkpoint in {workdir} stores no config; cannot rebuild the model")
    tokenizer = _load_generator_tokenizer(config, tokenizer_workdir, use_ema)
    family = get_family(config["model"]["family"])
    model_cfg, _ = family.build(config["model"], tokenizer, config.get("loss") or {})
    params = restored["ema_params"] if use_ema and restored.get("ema_params") else None
    params = match_layer_layout(params or restored["params"], model_cfg.scan_layers)
    return LoadedGenerator(family, model_cfg, params, tokenizer, config)
