"""Converted weights as ordinary jaxar workdirs (what ``train_tokenizer`` / ``train_generator``
write), so ``load_tokenizer``, ``load_generator``, ``experiments/sample.py`` and
``experiments/evaluate.py`` use them unchanged.

A workdir holds one orbax checkpoint (step 0) through ``jaxar.train.checkpoint.Checkpointer``:
a ``TrainState`` with the converted params (no optimizer state, no EMA copy: the converter
already picked the EMA weights when the file had them) and the resolved config:

- tokenizer: ``{"tokenizer": TokenizerConfig fields, "data": {image_size, channels},
  "converted_from": {...}}``;
- generator: ``generator_config(...)``: ``{"tokenizer_workdir": absolute path,
  "model": {"family", **model config fields}, "sampling": {...}, "data": {...},
  "converted_from": {...}}``.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
from etils import epath

from jaxar.train.checkpoint import Checkpointer
from jaxar.train.state import TrainState


def write_workdir(workdir: str | epath.PathLike, params: Any, config: dict, model_state=None):
    """Saves ``params`` and ``config`` as step 0 of ``workdir``'s checkpoints. Refuses a
    workdir that already has checkpoints (nothing is overwritten)."""
    checkpointer = Checkpointer(workdir, keep=1, async_save=False)
    try:
        if checkpointer.latest_step() is not None:
            raise FileExistsError(
                f"{checkpointer.directory} already holds checkpoints; pick a new --workdir"
            )
        state = TrainState(
            step=jnp.zeros((), jnp.int32),
            params=jax.tree.map(jnp.asarray, params),
            opt_state=None,
            ema_params=None,
            model_state=model_state or {},
        )
        checkpointer.save(0, state, config=config, force=True)
        checkpointer.wait_until_finished()
    finally:
        checkpointer.close()


def absolute(path: str | epath.PathLike) -> str:
    """``path`` as an absolute path (cloud paths such as gs:// are already absolute)."""
    text = str(path)
    return text if "://" in text else str(epath.Path(text).resolve())


def generator_config(
    tokenizer_workdir: str | epath.PathLike,
    family: str,
    model_config: Any,
    sampling: dict[str, Any],
    image_size: int,
    converted_from: dict[str, Any],
) -> dict[str, Any]:
    """The config stored with a converted generator: the one place that says how a generator
    workdir refers to its tokenizer (today ``tokenizer_workdir``, an absolute path)."""
    return {
        "tokenizer_workdir": absolute(tokenizer_workdir),
        "model": {"family": family, **dataclasses.asdict(model_config)},
        "sampling": dict(sampling),
        "data": {"image_size": int(image_size), "channels": 3},
        "converted_from": converted_from,
    }


def tokenizer_config(tokenizer_cfg: Any, image_size: int, converted_from: dict) -> dict:
    """The config stored with a converted tokenizer (as ``train_tokenizer`` stores it)."""
    return {
        "tokenizer": dataclasses.asdict(tokenizer_cfg),
        "data": {"image_size": int(image_size), "channels": tokenizer_cfg.image_channels},
        "converted_from": converted_from,
    }
