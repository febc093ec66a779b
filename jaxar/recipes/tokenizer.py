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
import warnings
from collections.abc import Iterator
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh

from jaxar.data.codes import read_json, write_json_atomic
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
    state = fit_from_config(exp.run, task, image_dataset(data, split="train"), workdir, resolved)
    if exp.tokenizer.continuous:
        images, _ = image_arrays(data, split="train", limit=exp.latent_scale_images)
        tokenizer = load_tokenizer(workdir, latent_scale=False)
        write_latent_scale(workdir, measure_latent_scale(tokenizer, images), tokenizer)
    return state


LATENT_SCALE_FILE = "latent_scale.json"


def measure_latent_scale(tokenizer: LoadedTokenizer, images: Any, batch_size: int = 256):
    """Per-channel ``1 / std`` of a continuous tokenizer's latents (posterior means) over
    ``images`` (float [N,H,W,C] in [-1,1] or batches of them): scaled latents have unit
    variance per channel, which is what MAR's diffusion head assumes (MAR: one scalar, 0.2325
    for KL-16)."""
    total, total_sq = np.zeros((2, tokenizer.latent_dim), np.float64)
    count = 0
    for batch in _image_batches(images, batch_size):
        latents = np.asarray(tokenizer.encode(batch), np.float64).reshape(-1, tokenizer.latent_dim)
        total += latents.sum(0)
        total_sq += np.square(latents).sum(0)
        count += len(latents)
    if not count:
        raise ValueError("measure_latent_scale got no images")
    var = total_sq / count - np.square(total / count)
    return (1.0 / np.sqrt(np.maximum(var, 1e-12))).astype(np.float32)


def write_latent_scale(workdir: str | os.PathLike, scale: Any, tokenizer=None) -> np.ndarray:
    """Stores the per-channel latent scale of the continuous tokenizer in ``workdir`` (a float
    or [code_dim] values) as ``latent_scale.json``, tied to the weights' fingerprint so that a
    scale never outlives the weights it was measured on. Only process 0 writes."""
    tokenizer = tokenizer or load_tokenizer(workdir, latent_scale=False)
    if not tokenizer.config.continuous:
        raise ValueError(f"{workdir}: latent scales are for continuous (kl) tokenizers only")
    dim = tokenizer.latent_dim
    scale = np.broadcast_to(np.asarray(scale, np.float32), (dim,)).copy()
    if not np.all(np.isfinite(scale)) or np.any(scale <= 0):
        raise ValueError(f"latent scale must be finite and positive, got {scale}")
    if jax.process_index() == 0:
        write_json_atomic(
            resolve(workdir) / LATENT_SCALE_FILE,
            {"scale": [float(v) for v in scale], "weights_fingerprint": tokenizer.weights_digest,
             "step": tokenizer.step, "ema": tokenizer.ema},
        )  # fmt: skip
    return scale


def read_latent_scale(tokenizer: LoadedTokenizer) -> np.ndarray | None:
    """The scale stored with ``tokenizer`` (None when its workdir has none); a scale measured
    on other weights (another step, raw params instead of EMA) is an error."""
    if tokenizer.workdir is None:
        return None
    stored = read_json(resolve(tokenizer.workdir) / LATENT_SCALE_FILE)
    if stored is None:
        return None
    if stored.get("weights_fingerprint") != tokenizer.weights_digest:
        raise ValueError(
            f"{tokenizer.workdir}/{LATENT_SCALE_FILE} was measured on other weights (step "
            f"{stored.get('step')}, ema={stored.get('ema')}) than the ones loaded (step "
            f"{tokenizer.step}, ema={tokenizer.ema}); pass latent_scale= explicitly or rewrite it "
            "with write_latent_scale"
        )
    scale = np.asarray(stored["scale"], np.float32)
    if scale.shape != (tokenizer.latent_dim,):
        raise ValueError(f"{LATENT_SCALE_FILE}: expected {tokenizer.latent_dim} scales: {scale}")
    return scale


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
    # Continuous (kl) tokenizers: per-channel factor applied to latents after encoding (and
    # undone before decoding); None = 1.
    latent_scale: np.ndarray | None = None

    @functools.cached_property
    def fingerprint(self) -> str:
        """sha256 of the config, image shape, every weight and the latent scale: equal iff
        the same tokenizer."""
        if self.latent_scale is None:
            return self.weights_digest
        scale = [float(v) for v in np.asarray(self.latent_scale).reshape(-1)]
        return hashlib.sha256(json.dumps([self.weights_digest, scale]).encode()).hexdigest()

    @functools.cached_property
    def weights_digest(self) -> str:
        """sha256 of the config, image shape and every weight."""
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

    @property
    def continuous(self) -> bool:
        """Whether tokens are float latents (a kl tokenizer) rather than code ids."""
        return self.config.continuous

    @property
    def latent_dim(self) -> int:
        """Channels of one token's latent (continuous tokenizers: the float token size)."""
        return self.config.latent_dim

    @property
    def encode_scale(self) -> jax.Array:
        scale = 1.0 if self.latent_scale is None else self.latent_scale
        return jnp.broadcast_to(jnp.asarray(scale, jnp.float32), (self.latent_dim,))

    def encode(self, images: jax.Array) -> jax.Array:
        """Images float [B,H,W,C] in [-1,1] -> flat codes (``jaxar.recipes.codes``); for a
        continuous tokenizer float32 latents [B, h*w, D] times ``latent_scale``."""
        scale = self.encode_scale if self.config.continuous else None
        return encode_flat(self.module, self.variables, jnp.asarray(images, jnp.float32), scale)

    def decode(self, flat_codes: jax.Array) -> jax.Array:
        """Flat codes (scaled latents) -> images float [B,H,W,C] in [-1,1]. Traceable."""
        if self.config.continuous:
            flat_codes = jnp.asarray(flat_codes, jnp.float32) / self.encode_scale
        codes = unflatten_codes(flat_codes, self.config, self.image_size)
        return self.module.apply(self.variables, codes, method=Tokenizer.decode_codes)

    def decode_uint8(self, flat_codes: Any) -> np.ndarray:
        """Flat codes (or scaled latents) -> uint8 images [B,H,W,C] on the host, through one
        compiled decoder."""
        if self.config.continuous:
            codes = jnp.asarray(flat_codes, jnp.float32) / self.encode_scale
        else:
            codes = jnp.asarray(flat_codes, jnp.int32)
        return np.asarray(jax.device_get(_decode_uint8(self.module, self.image_size,
                                                       self.variables, codes)))  # fmt: skip

    def code_embeddings(self) -> jax.Array:
        """The latent vector of every code id, [vocab_size, latent_dim] (single-code
        quantizers: vq, fsq, lfq, ibq); what LANTERN / GSD measure neighbourhoods in."""
        if self.config.quantizer in ("rq", "msvq", "kl"):
            raise ValueError(
                f"code_embeddings needs a single-code quantizer, not {self.config.quantizer!r}"
            )
        ids = jnp.arange(self.vocab_size, dtype=jnp.int32).reshape(1, -1, 1)
        lookup = lambda module, codes: module.quantizer.decode_codes(codes)  # noqa: E731
        return self.module.apply(self.variables, ids, method=lookup).reshape(self.vocab_size, -1)

    def reconstruct(self, images: jax.Array) -> jax.Array:
        return _reconstruct(self.module, self.variables, jnp.asarray(images, jnp.float32))


@functools.partial(jax.jit, static_argnums=0)
def encode_flat(module: Tokenizer, variables: dict, images: jax.Array, scale=None) -> jax.Array:
    """Images -> flat codes (``jaxar.recipes.codes``), latents times ``scale`` when given."""
    codes = flatten_codes(module.apply(variables, images, method=Tokenizer.encode_to_codes))
    return codes if scale is None else codes * scale


@functools.partial(jax.jit, static_argnums=(0, 1))
def _decode_uint8(module: Tokenizer, image_size: int, variables: dict, flat: jax.Array):
    codes = unflatten_codes(flat, module.config, image_size)
    return to_uint8(module.apply(variables, codes, method=Tokenizer.decode_codes))


@functools.partial(jax.jit, static_argnums=0)
def _reconstruct(module: Tokenizer, variables: dict, images: jax.Array) -> jax.Array:
    codes = module.apply(variables, images, method=Tokenizer.encode_to_codes)
    return module.apply(variables, codes, method=Tokenizer.decode_codes)


def load_tokenizer(
    workdir: str | os.PathLike, use_ema: bool = True, step: int | None = None,
    latent_scale: Any = True,
) -> LoadedTokenizer:  # fmt: skip
    """Restores a tokenizer trained by ``train_tokenizer`` (EMA weights when present), on this
    process's first device (every process of a multi-host run loads its own copy).

    ``latent_scale`` (continuous tokenizers): True reads ``latent_scale.json`` from the workdir
    (none there: scale 1, with a warning), False leaves latents unscaled, a float or [D] values
    set it."""
    workdir = resolve(workdir)
    local = Mesh(np.asarray(jax.local_devices()[:1]), ("replica",))
    restored, config = restore_for_eval(workdir, mesh=local, step=step)
    if config is None:
        raise ValueError(f"checkpoint in {workdir} stores no config; cannot rebuild the tokenizer")
    has_ema = bool(use_ema and restored.get("ema_params"))
    params = restored["ema_params"] if has_ema else restored["params"]
    variables = {"params": params["model"], **(restored.get("model_state") or {})}
    data = config["data"]
    tokenizer = LoadedTokenizer(
        tokenizer_config_from(config["tokenizer"]), variables, data["image_size"], data["channels"],
        workdir=os.fspath(workdir), step=int(restored["step"]), ema=has_ema,
    )  # fmt: skip
    if not tokenizer.config.continuous or latent_scale is False:
        return tokenizer
    if latent_scale is True:
        scale = read_latent_scale(tokenizer)
        if scale is None:
            warnings.warn(
                f"{workdir} has no {LATENT_SCALE_FILE}: latents are unscaled", stacklevel=2
            )
            return tokenizer
    else:
        dim = tokenizer.latent_dim
        scale = np.broadcast_to(np.asarray(latent_scale, np.float32), (dim,)).copy()
    return dataclasses.replace(tokenizer, latent_scale=scale)


def _image_batches(images: Any, batch_size: int) -> Iterator[np.ndarray]:
    """An array [N,H,W,C] (split into batches), or an iterable of arrays / {"image"} dicts."""
    if isinstance(images, np.ndarray | jax.Array):
        for i in range(0, len(images), batch_size):
            yield np.asarray(images[i : i + batch_size])
        return
    for batch in images:
        yield np.asarray(batch["image"] if isinstance(batch, dict) else batch)


def encode_arrays(tokenizer: LoadedTokenizer, images: np.ndarray, batch_size: int = 256):
    """Flat codes (numpy int32; float32 latents for a continuous tokenizer) of a small
    in-memory ``images`` float [N,H,W,C] in [-1,1].

    Large splits are encoded to disk with ``jaxar.recipes.extraction.extract_codes``."""
    out = [np.asarray(tokenizer.encode(b)) for b in _image_batches(images, batch_size)]
    return np.concatenate(out).astype(np.float32 if tokenizer.config.continuous else np.int32)


def evaluate_tokenizer(tokenizer: LoadedTokenizer, images: Any, batch_size: int = 256):
    """PSNR and SSIM (on images mapped to [0, 1]) and codebook usage / perplexity (continuous
    tokenizers: the mean and std of the scaled latents instead).

    ``images``: float [N,H,W,C] in [-1,1], or an iterable of such batches (or of
    ``{"image": ...}`` dicts, e.g. ``jaxar.recipes.images.image_batches``), streamed: only
    per-image sums and code counts are kept."""
    continuous = tokenizer.config.continuous
    counts = np.zeros(1 if continuous else tokenizer.vocab_size, np.float64)
    moments = np.zeros(3, np.float64)  # count, sum, sum of squares of the scaled latents
    psnr_sum = ssim_sum = 0.0
    num_images = 0
    for batch in _image_batches(images, batch_size):
        recon = np.asarray(tokenizer.reconstruct(batch))
        codes = np.asarray(tokenizer.encode(batch)).reshape(-1)
        if continuous:
            codes = codes.astype(np.float64)
            moments += [codes.size, codes.sum(), np.square(codes).sum()]
        else:
            counts += np.bincount(codes, minlength=tokenizer.vocab_size)
        psnr_sum += float(np.sum(psnr((batch + 1) / 2, (recon + 1) / 2)))
        ssim_sum += float(np.sum(ssim((batch + 1) / 2, (recon + 1) / 2)))
        num_images += len(batch)
    if num_images == 0:
        raise ValueError("evaluate_tokenizer got no images")
    if continuous:
        mean = moments[1] / moments[0]
        return {
            "psnr": psnr_sum / num_images, "ssim": ssim_sum / num_images,
            "latent_mean": float(mean),
            "latent_std": float(np.sqrt(max(moments[2] / moments[0] - mean**2, 0.0))),
            "num_images": num_images,
        }  # fmt: skip
    probs = counts / counts.sum()
    nonzero = probs[probs > 0]
    return {
        "psnr": psnr_sum / num_images,
        "ssim": ssim_sum / num_images,
        "codebook_usage": float(np.mean(counts > 0)),
        "perplexity": float(np.exp(-np.sum(nonzero * np.log(nonzero)))),
        "num_images": num_images,
    }
