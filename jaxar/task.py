"""``Task``: what the generic training loop needs from a model family.

It sits at the bottom of the package (beside ``jaxar.checks``) so that models can say how they
are trained without importing the training loop: ``jaxar.train`` consumes Tasks, the
generators and tokenizers produce them."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import jax

# Module names of the generators' transformer stacks (GPT, RandAR, MaskGIT: layers; VAR:
# blocks; RQ: spatial_layers, depth_layers; MAR: encoder_blocks, decoder_blocks). Part of the
# contract between models and training: scanned stacks (``jaxar.layers.scan``) stack their
# params on a leading [num_layers] axis under these names, which the optimizer's ">= 2-D gets
# weight decay" rule must not count (``jaxar.train.optimizer``).
STACK_NAMES = (
    "layers",
    "blocks",
    "spatial_layers",
    "depth_layers",
    "encoder_blocks",
    "decoder_blocks",
)

Batch = dict[str, Any]
Params = Any
ModelState = Any
Metrics = dict[str, jax.Array]

# init(rng, batch) -> (params, model_state); params may be nn.Partitioned-boxed.
InitFn = Callable[[jax.Array, Batch], tuple[Params, ModelState]]
# loss_fn(params, model_state, batch, rng, step) -> (loss, (metrics, new_model_state))
LossFn = Callable[
    [Params, ModelState, Batch, jax.Array, jax.Array],
    tuple[jax.Array, tuple[Metrics, ModelState]],
]
# sample_images(params, rng) -> uint8 [N, H, W, C]
SampleFn = Callable[[Params, jax.Array], Any]


@dataclasses.dataclass(frozen=True)
class Task:
    """A model family as seen by ``jaxar.train.loop.fit``.

    Attributes:
      name: short name used in logs.
      init: ``init(rng, batch) -> (params, model_state)``. Params may carry
        ``nn.Partitioned`` boxes (logical annotations); ``model_state`` holds non-trainable
        collections (``{}`` when none).
      loss_fn: ``loss_fn(params, model_state, batch, rng, step) -> (loss, (metrics,
        new_model_state))`` with scalar metrics; must be jittable.
      sample_images: optional ``sample_images(params, rng) -> uint8 [N, H, W, C]`` used for
        periodic PNG grids.
    """

    name: str
    init: InitFn
    loss_fn: LossFn
    sample_images: SampleFn | None = None
