"""Encoding a dataset to codes on disk with a trained tokenizer (the step before generators).

Experiment config fields (besides ``data`` and ``tokenizer_workdir``)::

    codes_dir  where codes live (default ``<workdir>/codes``); ``<codes_dir>/<split>/``
    codes {augment: none | flip | ten_crop, crop_range (ten_crop, 1.1), shard_size (source
           images per shard, 1024), batch_size (views per tokenizer call, 64),
           read_threads (8), cache_dir (local copy of gs:// codes),
           latent_dtype (continuous tokenizers' latents on disk: bfloat16 | float16 | float32)}

A split's codes carry the tokenizer's reference (resolved workdir, step, fingerprint of config
and weights) and the data fields that change the images; codes made from anything else are
never reused: in the default ``<workdir>/codes`` they are extracted again (with a warning), in
a user-given ``codes_dir`` the run stops with ``StaleCodesError`` naming what differs.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import numpy as np
from etils import epath
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from jaxar.data.codes import INDEX_FILE, LATENT_DTYPES, code_dtype, make_codes_dataset, read_json
from jaxar.data.extract import StaleCodesError, extract_split, make_plan
from jaxar.paths import PathLike, join, resolve
from jaxar.recipes.experiment import generator_experiment
from jaxar.recipes.images import check_data_config, image_source
from jaxar.recipes.tokenizer import LoadedTokenizer, encode_flat

__all__ = [
    "StaleCodesError",
    "codes_dataset",
    "codes_dir_for",
    "codes_plan",
    "ensure_codes",
    "extract_codes",
    "local_encoder",
]

# Data fields that only affect how batches are drawn in training, not the codes.
NON_CODE_DATA_FIELDS = ("batch_size", "eval_batch_size", "seed", "random_flip", "worker_count")


def codes_dir_for(config: Any, workdir: PathLike | None) -> tuple[epath.Path, bool]:
    """(codes folder, whether it is the run's own default ``<workdir>/codes``)."""
    given = generator_experiment(config).codes_dir
    if given:
        return resolve(given), False
    if workdir is None:
        raise ValueError("set codes_dir (or give a workdir whose codes/ folder is used)")
    return join(workdir, "codes"), True


def codes_plan(config: Any, tokenizer: LoadedTokenizer, num_source: int, split: str):
    """The plan (``jaxar.data.extract.make_plan``) of a split's codes under ``config``."""
    exp = generator_experiment(config)
    data = check_data_config(exp.data, split)
    options = dataclasses.asdict(exp.codes)
    if (data["image_size"], data["channels"]) != (tokenizer.image_size, tokenizer.channels):
        raise ValueError(
            f"data.image_size={data['image_size']}, data.channels={data['channels']} differ from "
            f"the tokenizer's {tokenizer.image_size}, {tokenizer.channels} ({tokenizer.workdir})"
        )
    codes = jax.eval_shape(tokenizer.encode, jax.ShapeDtypeStruct((1, *_image_shape(data)), float))
    if tokenizer.config.continuous:
        stored = LATENT_DTYPES[exp.codes.latent_dtype]
    else:
        stored = code_dtype(tokenizer.vocab_size)
    meta = {
        "tokenizer": tokenizer.reference(),
        "data": {k: v for k, v in sorted(data.items()) if k not in NON_CODE_DATA_FIELDS},
        "split": split,
    }
    layout = {"code_shape": list(codes.shape[1:]), "code_dtype": stored}
    return make_plan(
        num_source, meta=meta, layout=layout, image_size=data["image_size"],
        channels=data["channels"], augment=options["augment"],
        crop_range=float(options["crop_range"]), shard_size=int(options["shard_size"]),
        batch_size=int(options["batch_size"]),
    )  # fmt: skip


def _image_shape(data: dict[str, Any]) -> tuple[int, int, int]:
    return data["image_size"], data["image_size"], data["channels"]


def local_encoder(tokenizer: LoadedTokenizer):
    """``images float32 [B,S,S,C] -> numpy codes`` (scaled float32 latents for a continuous
    tokenizer), jitted and batch-sharded over this process's devices (B must divide by their
    count; extraction pads to it)."""
    devices = jax.local_devices()
    mesh = Mesh(np.asarray(devices), ("batch",))
    variables = jax.device_put(jax.device_get(tokenizer.variables), NamedSharding(mesh, P()))
    batch_sharding = NamedSharding(mesh, P("batch"))
    scale = None
    if tokenizer.config.continuous:
        scale = jax.device_put(np.asarray(tokenizer.encode_scale), NamedSharding(mesh, P()))

    def encode(images: np.ndarray) -> np.ndarray:
        images = jax.device_put(images, batch_sharding)
        return np.asarray(encode_flat(tokenizer.module, variables, images, scale))

    return encode, len(devices)


def extract_codes(
    config: Any, tokenizer: LoadedTokenizer, codes_dir: PathLike, split: str = "train", *,
    rebuild: bool = False, source: Any = None,
) -> dict[str, Any]:  # fmt: skip
    """Extracts ``split`` of ``config.data`` into ``codes_dir/split`` (every process takes its
    part; see ``jaxar.data.extract``); returns the index. Finished shards are kept; shards of
    other settings are redone with ``rebuild``, else StaleCodesError."""
    exp = generator_experiment(config)
    source = image_source(exp.data, split) if source is None else source
    plan = codes_plan(exp, tokenizer, len(source), split)
    encode, num_devices = local_encoder(tokenizer)
    views = plan["views"]
    per_call = max(1, plan["batch_size"] // views) * views
    if per_call % num_devices:
        raise ValueError(
            f"codes.batch_size={plan['batch_size']} gives {per_call} views per tokenizer call, "
            f"not divisible by the {num_devices} local devices; use a multiple of "
            f"{np.lcm(num_devices, views)}"
        )
    return extract_split(
        source, encode, join(codes_dir, split), plan=plan, rebuild=rebuild,
        read_threads=int(exp.codes.read_threads),
    )  # fmt: skip


def ensure_codes(
    config: Any, tokenizer: LoadedTokenizer, workdir: PathLike | None, split: str = "train"
) -> epath.Path:
    """The folder of ``split``'s codes, extracted first when missing, unfinished or stale."""
    exp = generator_experiment(config)
    codes_dir, owned = codes_dir_for(exp, workdir)
    split_dir = codes_dir / split
    source = image_source(exp.data, split)
    index = read_json(split_dir / INDEX_FILE)
    if index is not None:
        plan = codes_plan(exp, tokenizer, len(source), split)
        if {k: index.get(k) for k in plan} == plan:
            return split_dir
    extract_codes(exp, tokenizer, codes_dir, split, rebuild=owned, source=source)
    return split_dir


def codes_dataset(config: Any, split_dir: PathLike, *, train: bool = True, num_epochs=None):
    """The grain dataset of code batches a generator trains on (``make_codes_dataset``)."""
    exp = generator_experiment(config)
    return make_codes_dataset(
        split_dir,
        global_batch_size=exp.data["batch_size"],
        seed=exp.data.get("seed", 0),
        train=train,
        num_epochs=num_epochs,
        worker_count=exp.data.get("worker_count", 0),
        cache_dir=exp.codes.cache_dir,
    )
