"""One flat layout for every tokenizer's codes, so generators train on plain arrays.

| quantizer | ``encode_to_codes`` | flat layout |
| --- | --- | --- |
| vq, fsq, lfq, ibq | int32 [B, h, w] | [B, h*w] (raster order) |
| rq | int32 [B, h, w, D] | [B, h*w, D] |
| msvq | tuple of [B, s_k, s_k] | [B, sum_k s_k^2] (scales concatenated, coarse first) |
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import jax.numpy as jnp

from jaxar.tokenizers.autoencoder import TokenizerConfig


def flatten_codes(codes: Any) -> Any:
    """Tokenizer codes -> the flat layout (see module doc)."""
    if isinstance(codes, Sequence):  # msvq: per-scale maps
        return jnp.concatenate([c.reshape(c.shape[0], -1) for c in codes], axis=1)
    if codes.ndim == 3:
        return codes.reshape(codes.shape[0], -1)
    if codes.ndim == 4:
        return codes.reshape(codes.shape[0], -1, codes.shape[-1])
    raise ValueError(f"codes of shape {codes.shape} have no flat layout")


def flat_length(tokenizer: TokenizerConfig, image_size: int) -> int:
    """Tokens per image in the flat layout."""
    shape = tokenizer.code_shape(image_size)
    if tokenizer.quantizer == "msvq":
        return sum(h * w for h, w in shape)
    return shape[0] * shape[1]


def unflatten_codes(flat: Any, tokenizer: TokenizerConfig, image_size: int) -> Any:
    """The flat layout -> what ``Tokenizer.decode_codes`` takes."""
    shape = tokenizer.code_shape(image_size)
    batch, length = flat.shape[0], flat_length(tokenizer, image_size)
    if flat.shape[1] != length:
        raise ValueError(f"expected {length} tokens per image, got codes of shape {flat.shape}")
    if tokenizer.quantizer == "msvq":
        maps, start = [], 0
        for h, w in shape:
            maps.append(flat[:, start : start + h * w].reshape(batch, h, w))
            start += h * w
        return tuple(maps)
    return flat.reshape(batch, *shape)
