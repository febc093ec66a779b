"""Tokenizer jobs: train through the generic loop, restore for use, evaluate, encode datasets.

Experiment config (see ``experiments/configs/tokenizer_digits.py``)::

    seed, mesh {data, fsdp, tensor},
    data {name, image_size, channels, batch_size, ...}  (jaxar.recipes.images),
    tokenizer {preset, **TokenizerConfig overrides},
    loss {**LossConfig fields},
    train {num_steps, log_every, checkpoint_every, sample_every, ema_decay, optimizer {...}},
    preview_count
"""

from __future__ import annotations

import dataclasses
import functools
import os
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jaxar.eval.image_metrics import psnr, ssim
from jaxar.recipes.codes import flat_length, flatten_codes, unflatten_codes
from jaxar.recipes.config import as_dict, dataclass_from, fit_from_config
from jaxar.recipes.images import image_arrays, image_dataset
from jaxar.tokenizers.autoencoder import Tokenizer, TokenizerConfig, get_preset
from jaxar.tokenizers.losses import LossConfig
from jaxar.tokenizers.task import make_tokenizer_task
from jaxar.train.checkpoint import restore_for_eval
from jaxar.train.task import Task


def tokenizer_config_from(tokenizer: Any) -> TokenizerConfig:
    """``{preset: name, **overrides}`` -> TokenizerConfig (lists become tuples)."""
    values = as_dict(tokenizer)
    preset = values.pop("preset", None)
    if preset is None:
        return dataclass_from(TokenizerConfig, values)
    base = dataclasses.asdict(get_preset(preset))
    return dataclass_from(TokenizerConfig, {**base, **values})


def train_tokenizer(config: Any, workdir: str | os.PathLike):
    """Trains (or resumes) the tokenizer described by ``config``; returns the final state."""
    data = as_dict(config.data)
    tok_cfg = tokenizer_config_from(config.tokenizer)
    loss_cfg = dataclass_from(LossConfig, config.get("loss", {}))
    preview, _ = image_arrays(data, split="train", limit=config.get("preview_count", 8))
    shape = (data["image_size"], data["image_size"], data["channels"])
    task = make_tokenizer_task(tok_cfg, loss_cfg, shape, preview_images=preview)
    task = Task(name="tokenizer", init=task.init, loss_fn=task.loss_fn,
                sample_images=task.sample_images)  # fmt: skip
    resolved = {"tokenizer": dataclasses.asdict(tok_cfg)}
    return fit_from_config(config, task, image_dataset(data, split="train"), workdir, resolved)


@dataclasses.dataclass(frozen=True)
class LoadedTokenizer:
    """A restored tokenizer with jitted encode/decode in the flat code layout."""

    config: TokenizerConfig
    variables: dict
    image_size: int
    channels: int

    @property
    def module(self) -> Tokenizer:
        return Tokenizer(self.config)

    @property
    def vocab_size(self) -> int:
        return self.config.vocab_size

    @property
    def num_tokens(self) -> int:
        return flat_length(self.config, self.image_size)

    def encode(self, images: jax.Array) -> jax.Array:
        """Images float [B,H,W,C] in [-1,1] -> flat codes (``jaxar.recipes.codes``)."""
        return _encode(self.module, self.variables, jnp.asarray(images, jnp.float32))

    def decode(self, flat_codes: jax.Array) -> jax.Array:
        """Flat codes -> images float [B,H,W,C] in [-1,1]. Traceable (usable inside jit)."""
        codes = unflatten_codes(flat_codes, self.config, self.image_size)
        return self.module.apply(self.variables, codes, method=Tokenizer.decode_codes)

    def code_embeddings(self) -> jax.Array:
        """The latent vector of every code id, [vocab_size, latent_dim] (single-code
        quantizers: vq, fsq, lfq, ibq); what LANTERN / GSD measure neighbourhoods in."""
        if self.config.quantizer in ("rq", "msvq"):
            raise ValueError(
                f"code_embeddings needs a single-code quantizer, not {self.config.quantizer!r}"
            )
        ids = jnp.arange(self.vocab_size, dtype=jnp.int32).reshape(1, -1, 1)
        lookup = lambda module, codes: module.quantizer.decode_codes(codes)  # noqa: E731
        return self.module.apply(self.variables, ids, method=lookup).reshape(self.vocab_size, -1)

    def reconstruct(self, images: jax.Array) -> jax.Array:
        return _reconstruct(self.module, self.variables, jnp.asarray(images, jnp.float32))


@functools.partial(jax.jit, static_argnums=0)
def _encode(module: Tokenizer, variables: dict, images: jax.Array) -> jax.Array:
    return flatten_codes(module.apply(variables, images, method=Tokenizer.encode_to_codes))


@functools.partial(jax.jit, static_argnums=0)
def _reconstruct(module: Tokenizer, variables: dict, images: jax.Array) -> jax.Array:
    codes = module.apply(variables, images, method=Tokenizer.encode_to_codes)
    return module.apply(variables, codes, method=Tokenizer.decode_codes)


def load_tokenizer(workdir: str | os.PathLike, use_ema: bool = True, step: int | None = None):
    """Restores a tokenizer trained by ``train_tokenizer`` (EMA weights when present)."""
    restored, config = restore_for_eval(workdir, step=step)
    if config is None:
        raise ValueError(f"checkpoint in {workdir} stores no config; cannot rebuild the tokenizer")
    params = restored["ema_params"] if use_ema and restored.get("ema_params") else None
    params = params or restored["params"]
    variables = {"params": params["model"], **(restored.get("model_state") or {})}
    data = config["data"]
    return LoadedTokenizer(
        tokenizer_config_from(config["tokenizer"]), variables, data["image_size"], data["channels"]
    )


def encode_arrays(tokenizer: LoadedTokenizer, images: np.ndarray, batch_size: int = 256):
    """Flat codes (numpy int32) of ``images`` float [N,H,W,C] in [-1,1], in batches."""
    out = [
        np.asarray(tokenizer.encode(images[i : i + batch_size]))
        for i in range(0, len(images), batch_size)
    ]
    return np.concatenate(out).astype(np.int32)


def evaluate_tokenizer(tokenizer: LoadedTokenizer, images: np.ndarray, batch_size: int = 256):
    """PSNR and SSIM (on images mapped to [0, 1]) and codebook usage / perplexity."""
    recon = np.concatenate([
        np.asarray(tokenizer.reconstruct(images[i : i + batch_size]))
        for i in range(0, len(images), batch_size)
    ])  # fmt: skip
    codes = encode_arrays(tokenizer, images, batch_size)
    counts = np.bincount(codes.reshape(-1), minlength=tokenizer.vocab_size).astype(np.float64)
    probs = counts / counts.sum()
    nonzero = probs[probs > 0]
    return {
        "psnr": float(np.mean(psnr((images + 1) / 2, (recon + 1) / 2))),
        "ssim": float(np.mean(ssim((images + 1) / 2, (recon + 1) / 2))),
        "codebook_usage": float(np.mean(counts > 0)),
        "perplexity": float(np.exp(-np.sum(nonzero * np.log(nonzero)))),
        "num_images": len(images),
    }
