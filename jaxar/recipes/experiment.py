"""The experiment config, resolved once into typed values at the recipe entry.

A script's ``ml_collections.ConfigDict`` (or a plain dict) is read here, checked, and turned
into a frozen ``GeneratorExperiment`` / ``TokenizerExperiment`` that the jobs pass down;
nothing below the entry re-reads the ConfigDict. Unknown top-level fields are errors naming the
accepted ones (as unknown fields of the nested configs are). Every resolver is idempotent (an
experiment passes through unchanged), so library functions accept either form.

``stored`` is the whole config as a plain dict: what checkpoints record (with the resolved
model / tokenizer replacing presets, see ``fit_from_config``).
"""

from __future__ import annotations

import dataclasses
from typing import Any

from jaxar.data.codes import LATENT_DTYPES
from jaxar.data.extract import AUGMENTATIONS
from jaxar.recipes.config import as_dict, dataclass_from, tokenizer_config_from, train_config_from
from jaxar.recipes.images import check_data_config
from jaxar.tokenizers.autoencoder import TokenizerConfig
from jaxar.tokenizers.losses import LossConfig
from jaxar.train.loop import TrainConfig

MESH_AXES = ("data", "fsdp", "tensor")


@dataclasses.dataclass(frozen=True)
class CodesOptions:
    """How a split's codes are extracted and read (``jaxar.recipes.extraction``)."""

    augment: str = "none"
    crop_range: float = 1.1
    shard_size: int = 1024
    batch_size: int = 64
    read_threads: int = 8
    cache_dir: str | None = None
    latent_dtype: str = "bfloat16"  # continuous tokenizers: float16 | bfloat16 | float32 on disk

    def __post_init__(self):
        if self.augment not in AUGMENTATIONS:
            raise ValueError(f"codes.augment={self.augment!r}; accepted: {list(AUGMENTATIONS)}")
        if self.latent_dtype not in LATENT_DTYPES:
            raise ValueError(
                f"codes.latent_dtype={self.latent_dtype!r}; accepted: {list(LATENT_DTYPES)}"
            )
        for key in ("shard_size", "batch_size"):
            if int(getattr(self, key)) < 1:
                raise ValueError(f"codes.{key} must be >= 1, got {getattr(self, key)}")


@dataclasses.dataclass(frozen=True)
class RunSettings:
    """What every training run shares: seed, mesh sizes, train settings, the stored config."""

    seed: int
    mesh: dict[str, int]
    train: TrainConfig
    stored: dict[str, Any]


@dataclasses.dataclass(frozen=True)
class GeneratorExperiment:
    run: RunSettings
    data: dict[str, Any]  # a checked data config (jaxar.recipes.images)
    tokenizer_workdir: str | None
    model: dict[str, Any]  # {family, preset, **overrides}: resolved by the family's build
    loss: dict[str, Any]
    sampling: dict[str, Any]
    codes: CodesOptions
    codes_dir: str | None


@dataclasses.dataclass(frozen=True)
class TokenizerExperiment:
    run: RunSettings
    data: dict[str, Any]
    tokenizer: TokenizerConfig
    loss: LossConfig
    preview_count: int
    latent_scale_images: int = 4096  # continuous tokenizers: images the latent scale is measured on


GENERATOR_FIELDS = ("seed", "mesh", "data", "tokenizer_workdir", "model", "loss", "train",
                    "sampling", "codes", "codes_dir", "tokens")  # fmt: skip
TOKENIZER_FIELDS = ("seed", "mesh", "data", "tokenizer", "loss", "train", "preview_count",
                    "latent_scale_images")  # fmt: skip


def _checked(config: Any, fields: tuple[str, ...], what: str) -> dict[str, Any]:
    values = as_dict(config)
    unknown = sorted(set(values) - set(fields))
    if unknown:
        raise ValueError(f"the {what} config has no fields {unknown}; known: {list(fields)}")
    return values


def _run_settings(values: dict[str, Any]) -> RunSettings:
    mesh = as_dict(values.get("mesh"))
    unknown = sorted(set(mesh) - set(MESH_AXES))
    if unknown:
        raise ValueError(f"mesh has no axes {unknown}; known: {list(MESH_AXES)}")
    if "train" not in values:
        raise ValueError("the config has no train section (num_steps, optimizer, ...)")
    return RunSettings(
        seed=int(values.get("seed", 0)),
        mesh={k: int(v) for k, v in mesh.items()},
        train=train_config_from(values),
        stored=values,
    )


def generator_experiment(config: Any) -> GeneratorExperiment:
    """A generator experiment config -> ``GeneratorExperiment`` (checked once)."""
    if isinstance(config, GeneratorExperiment):
        return config
    values = _checked(config, GENERATOR_FIELDS, "generator")
    if "data" not in values:
        raise ValueError("the config has no data section (name, image_size, channels, ...)")
    return GeneratorExperiment(
        run=_run_settings(values),
        data=check_data_config(values["data"]),
        tokenizer_workdir=values.get("tokenizer_workdir") or None,
        model=as_dict(values.get("model")),
        loss=as_dict(values.get("loss")),
        sampling=as_dict(values.get("sampling")),
        codes=dataclass_from(CodesOptions, values.get("codes") or {}),
        codes_dir=values.get("codes_dir") or None,
    )


def tokenizer_experiment(config: Any) -> TokenizerExperiment:
    """A tokenizer experiment config -> ``TokenizerExperiment`` (checked once)."""
    if isinstance(config, TokenizerExperiment):
        return config
    values = _checked(config, TOKENIZER_FIELDS, "tokenizer")
    for section in ("data", "tokenizer"):
        if section not in values:
            raise ValueError(f"the config has no {section} section")
    return TokenizerExperiment(
        run=_run_settings(values),
        data=check_data_config(values["data"]),
        tokenizer=tokenizer_config_from(values["tokenizer"]),
        loss=dataclass_from(LossConfig, values.get("loss") or {}),
        preview_count=int(values.get("preview_count", 8)),
        latent_scale_images=int(values.get("latent_scale_images", 4096)),
    )


__all__ = [
    "CodesOptions",
    "GeneratorExperiment",
    "RunSettings",
    "TokenizerExperiment",
    "generator_experiment",
    "tokenizer_experiment",
]
