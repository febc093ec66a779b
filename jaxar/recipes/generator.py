"""Generator jobs: encode a dataset with a trained tokenizer, train a generator, sample.

Experiment config (see ``experiments/configs/gpt_digits.py``)::

    seed, mesh {data, fsdp, tensor},
    data {name, image_size, channels, batch_size, ...}   (the images the codes come from),
    tokenizer_workdir                                    (a train_tokenizer workdir),
    model {family, preset, **config overrides}           (jaxar.recipes.families),
    loss {...}                                           (family-specific options),
    train {num_steps, ..., optimizer {...}},
    sampling {cfg_scale, temperature, top_k, top_p, ...} (defaults for sampling)

Codes use the flat layout of ``jaxar.recipes.codes``; they are cached in
``workdir/codes_<split>.npz`` so a resumed run does not encode again.
"""

from __future__ import annotations

import dataclasses
import os
from typing import Any

import jax
import numpy as np

from jaxar.data import make_array_dataset
from jaxar.data.transforms import to_uint8
from jaxar.recipes.config import as_dict, fit_from_config
from jaxar.recipes.families import FAMILIES, Family, get_family
from jaxar.recipes.images import image_arrays
from jaxar.recipes.tokenizer import LoadedTokenizer, encode_arrays, load_tokenizer
from jaxar.train.checkpoint import restore_for_eval

__all__ = ["FAMILIES", "LoadedGenerator", "encoded_dataset", "load_generator", "train_generator"]


def encoded_dataset(config: Any, tokenizer: LoadedTokenizer, workdir, split: str = "train"):
    """``{"codes": int32 [N, L(, D)], "label": int32 [N]}`` of a split, cached in workdir."""
    path = os.path.join(os.fspath(workdir), f"codes_{split}.npz")
    if os.path.exists(path):
        with np.load(path) as stored:
            return {"codes": stored["codes"], "label": stored["label"]}
    images, labels = image_arrays(config.data, split=split)
    arrays = {"codes": encode_arrays(tokenizer, images), "label": labels}
    os.makedirs(os.fspath(workdir), exist_ok=True)
    tmp = path + ".tmp.npz"
    np.savez(tmp, **arrays)
    os.replace(tmp, path)  # atomic: a killed run never leaves a half-written cache
    return arrays


def _preview_fn(family: Family, model_cfg, tokenizer: LoadedTokenizer, sampling: dict, classes):
    sampler = family.make_sampler(model_cfg, tokenizer, sampling)
    labels = np.arange(classes, dtype=np.int32)

    def sample_images(params, rng):
        codes = np.asarray(sampler(params, labels, rng))  # host: params may live on a mesh
        return np.asarray(to_uint8(np.asarray(tokenizer.decode(codes))))

    return sample_images


def train_generator(config: Any, workdir: str | os.PathLike):
    """Trains (or resumes) a generator on the tokenized dataset; returns the final state."""
    tokenizer = load_tokenizer(config.tokenizer_workdir)
    family = get_family(config.model.family)
    model_cfg, task = family.build(as_dict(config.model), tokenizer, as_dict(config.get("loss")))
    arrays = encoded_dataset(config, tokenizer, workdir)
    data = as_dict(config.data)
    dataset = make_array_dataset(
        arrays, global_batch_size=data["batch_size"], seed=data.get("seed", 0)
    )
    sampling = as_dict(config.get("sampling"))
    preview = _preview_fn(family, model_cfg, tokenizer, sampling, family.num_classes(model_cfg))
    task = dataclasses.replace(task, sample_images=preview)
    resolved = {"model": {"family": family.name, **dataclasses.asdict(model_cfg)}}
    return fit_from_config(config, task, dataset, workdir, resolved)


@dataclasses.dataclass(frozen=True)
class LoadedGenerator:
    """A restored generator with its tokenizer; ``sample`` gives flat codes and images."""

    family: Family
    model_config: Any
    params: Any
    tokenizer: LoadedTokenizer
    config: dict

    def sampler(self, **sampling: Any):
        """A jitted ``(params, labels [B], rng) -> flat codes`` with the given settings."""
        settings = {**self.config.get("sampling", {}), **sampling}
        return self.family.make_sampler(self.model_config, self.tokenizer, settings)

    def sample(self, labels, rng, **sampling: Any):
        """-> (flat codes, uint8 images [B,H,W,C])."""
        codes = self.sampler(**sampling)(self.params, np.asarray(labels, np.int32), rng)
        codes = np.asarray(codes)  # host: the tokenizer may live on other devices
        images = to_uint8(np.asarray(jax.device_get(self.tokenizer.decode(codes))))
        return np.asarray(codes), np.asarray(images)


def load_generator(workdir: str | os.PathLike, use_ema: bool = True, step: int | None = None):
    """Restores a generator trained by ``train_generator`` (and its tokenizer)."""
    restored, config = restore_for_eval(workdir, step=step)
    if config is None:
        raise ValueError(f"checkpoint in {workdir} stores no config; cannot rebuild the model")
    tokenizer = load_tokenizer(config["tokenizer_workdir"], use_ema=use_ema)
    family = get_family(config["model"]["family"])
    model_cfg, _ = family.build(config["model"], tokenizer, config.get("loss") or {})
    params = restored["ema_params"] if use_ema and restored.get("ema_params") else None
    return LoadedGenerator(family, model_cfg, params or restored["params"], tokenizer, config)
