"""Tokenizer jobs: train through the generic loop, restore for use, evaluate, encode datasets.

Experiment config (see ``jaxar/configs/tokenizer_digits.py``)::

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
import hashlib
import json
import os
from collections.abc import Iterator
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh

from jaxar.data.transforms import to_uint8
from jaxar.eval.image_metrics import psnr, ssim
from jaxar.paths import resolve
from jaxar.recipes.codes import flat_length, flatten_codes, unflatten_codes
from jaxar.recipes.config import fit_from_config, tokenizer_config_from
from jaxar.recipes.experiment import tokenizer_experiment
from jaxar.recipes.images import image_arrays, image_dataset
from jaxar.tokenizers.autoencoder import Tokenizer, TokenizerConfig
from jaxar.tokenizers.task import make_tokenizer_task
from jaxar.train.checkpoint import restore_for_eval


def train_tokenizer(config: Any, workdir: str | os.PathLike):
    """Trains (or resumes) the tokenizer described by ``config`` (a ConfigDict, dict or
    ``TokenizerExperiment``, resolved once, here); returns the final state."""
    exp = tokenizer_experiment(config)
    data = exp.data
    preview, _ = image_arrays(data, split="train", limit=exp.preview_count)
    shape = (data["image_size"], data["image_size"], data["channels"])
    task = make_tokenizer_task(exp.tokenizer, exp.loss, shape, preview_images=preview)
    resolved = {"tokenizer": dataclasses.asdict(exp.tokenizer)}
    return fit_from_config(exp.run, task, image_dataset(data, split="train"), workdir, resolved)


@dataclasses.dataclass(frozen=True)
class LoadedTokenizer:
    """A restored tokenizer with jitted encode/decode in the flat code layout."""

    config: TokenizerConfig
    variables: dict
    image_size: int
    channels: int
    workdir: str | None = None  # resolved (absolute path or URL) when loaded from a workdir
    step: int | None = None
    ema: bool = True  # EMA weights (when the checkpoint has them) rather than raw params

    @functools.cached_property
    def fingerprint(self) -> str:
        """sha256 of the config, image shape and every weight: equal iff same tokenizer."""
        digest = hashlib.sha256()
        head = [dataclasses.asdict(self.config), self.image_size, self.channels]
        digest.update(json.dumps(head, sort_keys=True, default=str).encode())
        leaves = jax.tree_util.tree_flatten_with_path(jax.device_get(self.variables))[0]
        for path, leaf in leaves:
            leaf = np.ascontiguousarray(leaf)
            digest.update(f"{jax.tree_util.keystr(path)}:{leaf.dtype}:{leaf.shape}".encode())
            digest.update(leaf.tobytes())
        return digest.hexdigest()

    def reference(self) -> dict[str, Any]:
        """What a generator stores about its tokenizer: where, which step, which weights."""
        return {"workdir": self.workdir, "step": self.step, "ema": self.ema,
                "fingerprint": self.fingerprint}  # fmt: skip

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

    def decode_uint8(self, flat_codes: Any) -> np.ndarray:
        """Flat codes -> uint8 images [B,H,W,C] on the host, through one compiled decoder."""
        codes = jnp.asarray(flat_codes, jnp.int32)
        return np.asarray(jax.device_get(_decode_uint8(self.module, self.image_size,
                                                       self.variables, codes)))  # fmt: skip

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


@functools.partial(jax.jit, static_argnums=(0, 1))
def _decode_uint8(module: Tokenizer, image_size: int, variables: dict, flat: jax.Array):
    codes = unflatten_codes(flat, module.config, image_size)
    return to_uint8(module.apply(variables, codes, method=Tokenizer.decode_codes))


@functools.partial(jax.jit, static_argnums=0)
def _reconstruct(module: Tokenizer, variables: dict, images: jax.Array) -> jax.Array:
    codes = module.apply(variables, images, method=Tokenizer.encode_to_codes)
    return module.apply(variables, codes, method=Tokenizer.decode_codes)


def load_tokenizer(workdir: str | os.PathLike, use_ema: bool = True, step: int | None = None):
    """Restores a tokenizer trained by ``train_tokenizer`` (EMA weights when present), on this
    process's first device (every process of a multi-host run loads its own copy)."""
    workdir = resolve(workdir)
    local = Mesh(np.asarray(jax.local_devices()[:1]), ("replica",))
    restored, config = restore_for_eval(workdir, mesh=local, step=step)
    if config is None:
        raise ValueError(f"checkpoint in {workdir} stores no config; cannot rebuild the tokenizer")
    has_ema = bool(use_ema and restored.get("ema_params"))
    params = restored["ema_params"] if has_ema else restored["params"]
    variables = {"params": params["model"], **(restored.get("model_state") or {})}
    data = config["data"]
    return LoadedTokenizer(
        tokenizer_config_from(config["tokenizer"]), variables, data["image_size"], data["channels"],
        workdir=os.fspath(workdir), step=int(restored["step"]), ema=has_ema,
    )  # fmt: skip


def _image_batches(images: Any, batch_size: int) -> Iterator[np.ndarray]:
    """An array [N,H,W,C] (split into batches), or an iterable of arrays / {"image"} dicts."""
    if isinstance(images, np.ndarray | jax.Array):
        for i in range(0, len(images), batch_size):
            yield np.asarray(images[i : i + batch_size])
        return
    for batch in images:
        yield np.asarray(batch["image"] if isinstance(batch, dict) else batch)


def encode_arrays(tokenizer: LoadedTokenizer, images: np.ndarray, batch_size: int = 256):
    """Flat codes (numpy int32) of a small in-memory ``images`` float [N,H,W,C] in [-1,1].

    Large splits are encoded to disk with ``jaxar.recipes.extraction.extract_codes``."""
    out = [np.asarray(tokenizer.encode(b)) for b in _image_batches(images, batch_size)]
    return np.concatenate(out).astype(np.int32)


def evaluate_tokenizer(tokenizer: LoadedTokenizer, images: Any, batch_size: int = 256):
    """PSNR and SSIM (on images mapped to [0, 1]) and codebook usage / perplexity.

    ``images``: float [N,H,W,C] in [-1,1], or an iterable of such batches (or of
    ``{"image": ...}`` dicts, e.g. ``jaxar.recipes.images.image_batches``), streamed: only
    per-image sums and code counts are kept."""
    counts = np.zeros(tokenizer.vocab_size, np.float64)
    psnr_sum = ssim_sum = 0.0
    num_images = 0
    for batch in _image_batches(images, batch_size):
        recon = np.asarray(tokenizer.reconstruct(batch))
        codes = np.asarray(tokenizer.encode(batch)).reshape(-1)
        counts += np.bincount(codes, minlength=tokenizer.vocab_size)
        psnr_sum += float(np.sum(psnr((batch + 1) / 2, (recon + 1) / 2)))
        ssim_sum += float(np.sum(ssim((batch + 1) / 2, (recon + 1) / 2)))
        num_images += len(batch)
    if num_images == 0:
        raise ValueError("evaluate_tokenizer got no images")
    probs = counts / counts.sum()
    nonzero = probs[probs > 0]
    return {
        "psnr": psnr_sum / num_images,
        "ssim": ssim_sum / num_images,
        "codebook_usage": float(np.mean(counts > 0)),
        "perplexity": float(np.exp(-np.sum(nonzero * np.log(nonzero)))),
        "num_images": num_images,
    }
