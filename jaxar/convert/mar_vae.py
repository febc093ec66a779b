"""MAR's KL-16 VAE (``kl16.ckpt``: LDM's ``AutoencoderKL(embed_dim=16, ch_mult=(1, 1, 2, 2, 4))``
in LTH14/mar ``models/vae.py``) -> jaxar ``Tokenizer`` params with ``quantizer="kl"``.

The file is ``{"model": state dict}`` (read by ``jaxar.convert.torch_io``, no pickled code
runs). Its LDM names are renamed to LlamaGen's (``jaxar.convert.ldm``: ``encoder.down.i.block.j``
-> ``encoder.conv_blocks.i.res.j``, ``decoder.up.i`` -> ``decoder.conv_blocks.{n-1-i}``,
``mid.block_1`` -> ``mid.0``) and converted as ``jaxar.convert.llamagen_vq`` does (OIHW ->
HWIO, GroupNorm ``weight`` -> ``scale``); ``quant_conv`` (encoder width -> mean and logvar),
``post_quant_conv`` and both ``conv_out`` / ``norm_out`` keep their names. The bottleneck
(``DiagonalGaussianBottleneck``) has no parameters. Every key must become a ``Tokenizer(cfg)``
param of the right shape (errors name the key); only ``loss.*`` (LDM's training loss module,
should a training checkpoint carry it) is dropped.

Read from the weights (``infer_kl_config``): ``ch``, ``ch_mult``, ``num_res_blocks``,
``z_channels``, ``code_dim`` (MAR's ``embed_dim``), ``double_z``, ``decoder_attn`` (kl16's
decoder has no attention outside its mid block) and the image channels. Not in them: GroupNorm
groups (32 in LDM's ``Normalize``).

MAR feeds its generator ``posterior.sample() * 0.2325`` (``vae_embed_dim=16``,
``vae_stride=16``); the workdir stores that scale (``latent_scale.json``), and
``load_tokenizer(W).encode`` returns ``mean * scale`` (eval: the posterior mean).

CLI: ``python -m jaxar.convert.mar_vae --vae kl16.ckpt --workdir W [--image-size 256]
[--latent-scale 0.2325] [--norm-groups 32]`` writes a tokenizer workdir; ``--out
kl16.safetensors`` writes the params as flat ``a/b/c`` keys instead (read back with
``llamagen_vq.load_flat_params``).
"""

from __future__ import annotations

import argparse
import re
from typing import Any

import numpy as np
from flax import traverse_util

from jaxar.convert.ldm import count_indices, llamagen_key
from jaxar.convert.llamagen_vq import checked_tokenizer_params, convert_entry
from jaxar.convert.torch_io import read_weights
from jaxar.convert.workdir import tokenizer_config, write_workdir
from jaxar.tokenizers.autoencoder import TokenizerConfig

MAR_LATENT_SCALE = 0.2325  # MAR's vae scale for kl16 (engine_mar.py)
_SKIP_PREFIXES = ("loss.",)
_REQUIRED = (
    "encoder.conv_in.weight",
    "encoder.conv_out.weight",
    "quant_conv.weight",
    "post_quant_conv.weight",
    "decoder.conv_in.weight",
)


def read_state_dict(path: str) -> dict[str, np.ndarray]:
    """A flat name -> float32 numpy dict (the ``model`` entry of ``kl16.ckpt``)."""
    return read_weights(path)[0]


def _attn_levels(state: dict, part: str) -> set[int]:
    return {int(m.group(1)) for k in state if (m := re.match(rf"{part}\.(\d+)\.attn\.", k))}


def infer_kl_config(state: dict[str, np.ndarray], **fields: Any) -> TokenizerConfig:
    """The ``TokenizerConfig`` (``quantizer="kl"``) of an LDM / MAR ``AutoencoderKL`` state
    dict; ``fields`` override what was read (``norm_groups``: 32 in LDM's code)."""
    for key in _REQUIRED:
        if key not in state:
            raise ValueError(f"not an LDM/MAR AutoencoderKL state dict: missing {key!r}")
    ch, image_channels = state["encoder.conv_in.weight"].shape[:2]
    levels = count_indices(state, r"encoder\.down\.(\d+)\.")
    if levels < 1:
        raise ValueError("not an LDM/MAR AutoencoderKL state dict: no 'encoder.down.N.' keys")
    ch_mult = []
    for i in range(levels):
        key = f"encoder.down.{i}.block.0.conv1.weight"
        if key not in state:
            raise ValueError(f"AutoencoderKL state dict: missing {key!r}")
        ch_mult.append(int(state[key].shape[0] // ch))
    code_dim, z_channels = (int(n) for n in state["post_quant_conv.weight"].shape[1::-1])
    moments, encoder_out = (int(n) for n in state["quant_conv.weight"].shape[:2])
    if moments != 2 * code_dim:
        raise ValueError(
            f"quant_conv.weight: {moments} output channels, expected 2 * {code_dim} (mean and "
            "logvar); MAR's use_variational=False VAE is not supported"
        )
    if encoder_out not in (z_channels, 2 * z_channels):
        raise ValueError(
            f"quant_conv.weight: {encoder_out} input channels, expected z_channels={z_channels} "
            f"or 2 * z_channels (double_z)"
        )
    for part, lowest in (("encoder.down", levels - 1), ("decoder.up", levels - 1)):
        found = _attn_levels(state, part)
        if found - {lowest}:
            raise ValueError(
                f"{part}.{sorted(found - {lowest})[0]}.attn: attention above the lowest "
                "resolution level is not supported (jaxar's Encoder / Decoder attend at the "
                "lowest level only)"
            )
    if _attn_levels(state, "encoder.down") != {levels - 1}:
        raise ValueError(f"AutoencoderKL state dict: no 'encoder.down.{levels - 1}.attn.' keys")
    found = dict(
        image_channels=int(image_channels), ch=int(ch), ch_mult=tuple(ch_mult),
        num_res_blocks=count_indices(state, r"encoder\.down\.0\.block\.(\d+)\."),
        z_channels=z_channels, norm_groups=32, quantizer="kl", code_dim=code_dim,
        double_z=encoder_out == 2 * z_channels,
        decoder_attn=bool(_attn_levels(state, "decoder.up")),
    )  # fmt: skip
    return TokenizerConfig(**{**found, **fields})


def convert_state_dict(state: dict[str, np.ndarray], cfg: TokenizerConfig) -> dict:
    """AutoencoderKL state dict -> nested ``Tokenizer(cfg)`` params (names and shapes
    checked; every key but ``loss.*`` must be used)."""
    levels = len(cfg.ch_mult)
    flat, sources = {}, {}
    for key, value in state.items():
        if key.startswith(_SKIP_PREFIXES):
            continue
        try:
            path, array = convert_entry(llamagen_key(key, levels), value)
        except ValueError:
            raise ValueError(f"unexpected parameter {key!r}") from None
        flat[path], sources[path] = array, key
    return checked_tokenizer_params(flat, cfg, sources)


def load_mar_vae(path: str, cfg: TokenizerConfig | None = None) -> dict:
    """Reads and converts a MAR KL-VAE file; ``cfg`` defaults to ``infer_kl_config``'s."""
    state = read_state_dict(path)
    return convert_state_dict(state, cfg or infer_kl_config(state))


def write_kl_workdir(
    path: str,
    workdir,
    image_size: int = 256,
    latent_scale: float | Any = MAR_LATENT_SCALE,
    **fields: Any,
) -> TokenizerConfig:
    """Converts a MAR KL-VAE file into a ``train_tokenizer``-style workdir encoding
    ``image_size`` images, with ``latent_scale.json`` (a float or a [code_dim] array) beside
    it. Refuses a workdir that already holds checkpoints."""
    from jaxar.recipes.tokenizer import write_latent_scale

    state, source = read_weights(path)
    cfg = infer_kl_config(state, **fields)
    cfg.code_shape(image_size)  # checks divisibility
    params = convert_state_dict(state, cfg)
    origin = {"file": str(path), "weights": source, "original": "MAR AutoencoderKL"}
    write_workdir(workdir, {"model": params}, tokenizer_config(cfg, image_size, origin))
    write_latent_scale(workdir, latent_scale)
    return cfg


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--vae", required=True, help="MAR kl16.ckpt (or .pth/.safetensors)")
    parser.add_argument("--workdir", help="write a tokenizer workdir here")
    parser.add_argument("--image-size", type=int, default=256, help="images the workdir encodes")
    parser.add_argument("--latent-scale", type=float, default=MAR_LATENT_SCALE)
    parser.add_argument("--out", help="or: write the params as one .safetensors file")
    parser.add_argument("--norm-groups", type=int, help="GroupNorm groups (LDM, MAR: 32)")
    args = parser.parse_args(argv)
    fields = {} if args.norm_groups is None else {"norm_groups": args.norm_groups}
    if bool(args.workdir) == bool(args.out):
        parser.error("pass exactly one of --workdir or --out")
    if args.workdir:
        cfg = write_kl_workdir(args.vae, args.workdir, args.image_size, args.latent_scale, **fields)
        print(f"wrote tokenizer workdir {args.workdir} (latent scale {args.latent_scale}): {cfg}")
        return
    from safetensors.numpy import save_file

    state = read_state_dict(args.vae)
    params = convert_state_dict(state, infer_kl_config(state, **fields))
    flat = traverse_util.flatten_dict(params, sep="/")
    save_file({k: np.asarray(v) for k, v in flat.items()}, args.out)
    print(f"wrote {len(flat)} arrays to {args.out}")


if __name__ == "__main__":
    main()
