"""VAR's VQVAE (``vae_ch160v4096z32.pth``: encoder, 3x3 quant convs, multi-scale quantizer,
decoder) -> jaxar ``Tokenizer`` params with ``quantizer="msvq"``, ``quant_conv_kernel=3``.

VAR's ``models/basic_vae.py`` is the taming / LlamaGen conv autoencoder under other names;
each is renamed to LlamaGen's and then converted as ``jaxar.convert.llamagen_vq`` does:

- ``encoder.down.i.block.j`` / ``.attn.j`` / ``.downsample`` -> ``encoder.conv_blocks.i.res.j``
  / ``.attn.j`` / ``.downsample``; ``decoder.up.i.*`` -> ``decoder.conv_blocks.{n-1-i}.*``
  (VAR indexes decoder levels by resolution, jaxar from the lowest one up);
- ``{en,de}coder.mid.block_1`` / ``attn_1`` / ``block_2`` -> ``mid.0`` / ``mid.1`` / ``mid.2``;
- the fused attention ``qkv`` 1x1 conv [3C, C] is split into ``q``, ``k``, ``v``;
- ``quantize.*`` -> ``quantizer`` (``jaxar.convert.var.convert_vae_quantizer``).

Read from the weights: codebook size and dim, ``ch``, ``ch_mult``, ``num_res_blocks``,
``z_channels``, quant conv size, number of Phi convs. Not in them: the scale schedule (from the
image size: ``jaxar.generators.var.scale_schedule``, or explicit), GroupNorm groups (32),
``using_znorm`` (False) and ``quant_resi`` (0.5), VAR's fixed values.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

import numpy as np
from flax import traverse_util

from jaxar.convert.ldm import count_indices, llamagen_key
from jaxar.convert.llamagen_vq import checked_tokenizer_params, flat_conv_params
from jaxar.convert.torch_io import read_weights
from jaxar.convert.var import convert_vae_quantizer
from jaxar.convert.workdir import tokenizer_config, write_workdir
from jaxar.generators.var import scale_schedule
from jaxar.tokenizers.autoencoder import TokenizerConfig, make_quantizer


def infer_vqvae_config(
    state: dict[str, np.ndarray], image_size: int | None, scales: Sequence[int] | None = None
) -> TokenizerConfig:
    """The ``TokenizerConfig`` of a VAR VQVAE state dict for images of ``image_size`` (or of
    ``scales[-1]`` times the downsampling when None) with VAR's schedule for that size (or
    ``scales``)."""
    for key in ("quantize.embedding.weight", "encoder.conv_in.weight", "quant_conv.weight"):
        if key not in state:
            raise ValueError(f"not a VAR VQVAE state dict: missing {key!r}")
    codebook_size, code_dim = state["quantize.embedding.weight"].shape
    ch, image_channels = state["encoder.conv_in.weight"].shape[:2]
    levels = count_indices(state, r"encoder\.down\.(\d+)\.")
    ch_mult = tuple(
        int(state[f"encoder.down.{i}.block.0.conv1.weight"].shape[0] // ch) for i in range(levels)
    )
    downsample = 2 ** (levels - 1)
    if image_size is None:
        if scales is None:
            raise ValueError("pass the image size (256 / 512) or the scales (--patch-nums)")
        image_size = scales[-1] * downsample
    if image_size % downsample:
        raise ValueError(f"image size {image_size} is not a multiple of the VQVAE's {downsample}x")
    if scales is None:
        scales = scale_schedule(image_size * 16 // downsample)  # VAR's schedules assume 16x
    if scales[-1] != image_size // downsample:
        raise ValueError(f"last scale {scales[-1]} != latent size {image_size // downsample}")
    return TokenizerConfig(
        image_channels=int(image_channels), ch=int(ch), ch_mult=ch_mult,
        num_res_blocks=count_indices(state, r"encoder\.down\.0\.block\.(\d+)\."),
        z_channels=int(state["encoder.conv_out.weight"].shape[0]), norm_groups=32,
        quantizer="msvq", codebook_size=int(codebook_size), code_dim=int(code_dim),
        l2_norm=False, scales=tuple(int(s) for s in scales), quant_resi=0.5,
        num_phi=max(count_indices(state, r"quantize\.quant_resi\.qresi_ls\.(\d+)\."), 1),
        quant_conv_kernel=int(state["quant_conv.weight"].shape[-1]),
    )  # fmt: skip


def llamagen_names(state: dict[str, np.ndarray], levels: int) -> dict[str, np.ndarray]:
    """VAR VQVAE encoder / decoder / quant-conv entries under LlamaGen's names (``quantize.*``
    left out); fused ``qkv`` convs split into ``q``, ``k``, ``v``."""
    out = {}
    for key, value in state.items():
        if key.startswith("quantize."):
            continue
        key = llamagen_key(key, levels)
        if re.search(r"\.qkv\.(weight|bias)$", key):
            for name, part in zip("qkv", np.split(value, 3, axis=0)):
                out[key.replace(".qkv.", f".{name}.")] = part
        else:
            out[key] = value
    return out


def convert_vqvae_state_dict(state: dict[str, np.ndarray], cfg: TokenizerConfig) -> dict:
    """VAR VQVAE state dict -> nested ``Tokenizer(cfg)`` params (names and shapes checked)."""
    flat = flat_conv_params(llamagen_names(state, len(cfg.ch_mult)))
    quantizer = convert_vae_quantizer(state, make_quantizer(cfg))
    for path, value in traverse_util.flatten_dict(quantizer).items():
        flat[("quantizer", *path)] = value
    return checked_tokenizer_params(flat, cfg)


def write_vqvae_workdir(
    path: str, workdir, image_size: int | None, scales: Sequence[int] | None = None
) -> TokenizerConfig:
    """Converts a VAR VQVAE file (or the ``vae_local`` of a VAR trainer checkpoint) into a
    ``train_tokenizer``-style workdir encoding ``image_size`` images."""
    state, source = read_weights(path, kind="vae")
    cfg = infer_vqvae_config(state, image_size, scales)
    params = convert_vqvae_state_dict(state, cfg)
    origin = {"file": str(path), "weights": source, "original": "VAR VQVAE"}
    image_size = cfg.scales[-1] * cfg.downsample_factor
    write_workdir(workdir, {"model": params}, tokenizer_config(cfg, image_size, origin))
    return cfg
