"""Load LlamaGen's VQ tokenizer checkpoints (``VQModel`` state dicts) into ``Tokenizer`` params.

Files are read by ``jaxar.convert.torch_io`` (no pickled code runs; released weights and
LlamaGen training checkpoints, EMA weights preferred). The config is read from the weights
(``infer_tokenizer_config``). Names map as
``encoder.conv_blocks.1.res.0.conv1.weight`` -> ``encoder/conv_blocks_1_res_0/conv1/kernel``;
conv weights OIHW -> HWIO, GroupNorm ``weight`` -> ``scale``, ``quantize.embedding.weight`` ->
``quantizer/codebook``. Buffers (``quantize.codebook_used``) and discriminator/loss weights are
dropped. The result is checked against the shapes of ``Tokenizer(cfg)``.

CLI: ``python -m jaxar.convert.llamagen_vq --checkpoint vq_ds16_c2i.pt --image-size 256
--workdir W`` writes a tokenizer workdir (``load_tokenizer(W)``, a valid ``tokenizer_workdir``
for training); ``--out vq16.safetensors`` writes the params as flat ``a/b/c`` keys instead
(read back with ``load_flat_params``).
"""

from __future__ import annotations

import argparse
import re
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from flax import traverse_util

from jaxar.convert.torch_io import read_weights
from jaxar.convert.workdir import tokenizer_config, write_workdir
from jaxar.tokenizers.autoencoder import Tokenizer, TokenizerConfig

_SKIP_PREFIXES = ("quantize.codebook_used", "discriminator.", "perceptual_loss.")


def read_state_dict(path: str) -> dict[str, np.ndarray]:
    """A flat name -> float32 numpy dict from any layout ``jaxar.convert.torch_io`` reads."""
    return read_weights(path)[0]


def _count(state: dict, pattern: str) -> int:
    return len({m.group(1) for k in state if (m := re.match(pattern, k))})


def infer_tokenizer_config(state: dict[str, np.ndarray], **fields: Any) -> TokenizerConfig:
    """A ``TokenizerConfig`` read from a LlamaGen ``VQModel`` state dict: codebook size and
    dim, ``ch``, ``ch_mult``, ``num_res_blocks``, ``z_channels``, image channels. Not in the
    weights: ``norm_groups`` (32 in LlamaGen's code) and ``l2_norm`` (``codebook_l2_norm``,
    True in every release); ``fields`` override them."""
    for key in ("quantize.embedding.weight", "encoder.conv_in.weight", "encoder.conv_out.weight"):
        if key not in state:
            raise ValueError(f"not a LlamaGen VQModel state dict: missing {key!r}")
    codebook_size, code_dim = state["quantize.embedding.weight"].shape
    ch, image_channels = state["encoder.conv_in.weight"].shape[:2]
    levels = _count(state, r"encoder\.conv_blocks\.(\d+)\.")
    ch_mult = tuple(
        int(state[f"encoder.conv_blocks.{i}.res.0.conv1.weight"].shape[0] // ch)
        for i in range(levels)
    )
    found = dict(
        image_channels=int(image_channels), ch=int(ch), ch_mult=ch_mult,
        num_res_blocks=_count(state, r"encoder\.conv_blocks\.0\.res\.(\d+)\."),
        z_channels=int(state["encoder.conv_out.weight"].shape[0]), norm_groups=32,
        quantizer="vq", codebook_size=int(codebook_size), code_dim=int(code_dim), l2_norm=True,
    )  # fmt: skip
    return TokenizerConfig(**{**found, **fields})


def _flax_path(key: str) -> tuple[str, ...]:
    key = re.sub(r"conv_blocks\.(\d+)\.(res|attn)\.(\d+)", r"conv_blocks_\1_\2_\3", key)
    key = re.sub(r"conv_blocks\.(\d+)\.(downsample|upsample)", r"conv_blocks_\1_\2", key)
    key = re.sub(r"mid\.(\d+)", r"mid_\1", key)
    if key == "quantize.embedding.weight":
        return ("quantizer", "codebook")
    *modules, leaf = key.split(".")
    is_norm = bool(modules) and "norm" in modules[-1]
    name = {"weight": "scale" if is_norm else "kernel", "bias": "bias"}.get(leaf)
    if name is None:
        raise ValueError(f"unexpected parameter {key!r}")
    return (*modules, name)


def _convert_value(path: tuple[str, ...], value: np.ndarray) -> np.ndarray:
    if path[-1] == "kernel" and value.ndim == 4:
        return np.transpose(value, (2, 3, 1, 0))  # OIHW -> HWIO
    return value


def convert_state_dict(state: dict[str, np.ndarray], cfg: TokenizerConfig) -> dict:
    """LlamaGen VQModel state dict -> nested ``Tokenizer(cfg)`` params (float32 jnp arrays)."""
    return checked_tokenizer_params(flat_conv_params(state), cfg)


def flat_conv_params(state: dict[str, np.ndarray]) -> dict[tuple[str, ...], jax.Array]:
    """LlamaGen-named conv autoencoder entries -> flat jaxar ``Tokenizer`` params."""
    return dict(convert_entry(k, v) for k, v in state.items() if not k.startswith(_SKIP_PREFIXES))


def convert_entry(key: str, value: np.ndarray) -> tuple[tuple[str, ...], jax.Array]:
    """One LlamaGen-named entry -> (flat jaxar param path, float32 value in jaxar's layout)."""
    path = _flax_path(key)
    return path, jnp.asarray(_convert_value(path, np.asarray(value, np.float32)))


def checked_tokenizer_params(
    flat: dict, cfg: TokenizerConfig, sources: dict[tuple[str, ...], str] | None = None
) -> dict:
    """Flat params checked (names and shapes) against ``Tokenizer(cfg)`` -> nested params.
    ``sources``: the checkpoint key each path came from, named in the errors."""
    size = (cfg.scales[-1] if cfg.quantizer == "msvq" else 2) * cfg.downsample_factor
    images = jax.ShapeDtypeStruct((1, size, size, cfg.image_channels), jnp.float32)
    expected = jax.eval_shape(lambda x: Tokenizer(cfg).init(jax.random.key(0), x), images)
    expected = traverse_util.flatten_dict(nn.unbox(expected["params"]))
    sources = sources or {}

    def name(path):
        return f"{sources[path]} (-> {'/'.join(path)})" if path in sources else "/".join(path)

    missing = ["/".join(p) for p in sorted(set(expected) - set(flat))]
    extra = [sources.get(p, "/".join(p)) for p in sorted(set(flat) - set(expected))]
    if missing or extra:
        raise ValueError(f"checkpoint does not match config: missing {missing}, unexpected {extra}")
    for path, value in flat.items():
        if tuple(expected[path].shape) != tuple(value.shape):
            raise ValueError(f"{name(path)}: shape {value.shape} != {expected[path].shape}")
    return traverse_util.unflatten_dict(flat)


def load_llamagen_vq(path: str, cfg: TokenizerConfig | None = None) -> dict:
    """Reads and converts a LlamaGen VQ checkpoint; ``cfg`` defaults to the one the weights
    describe (``infer_tokenizer_config``)."""
    state = read_state_dict(path)
    return convert_state_dict(state, cfg or infer_tokenizer_config(state))


def write_vq_workdir(path: str, workdir, image_size: int, **fields: Any) -> TokenizerConfig:
    """Converts a LlamaGen VQ checkpoint into a ``train_tokenizer``-style workdir (a valid
    ``tokenizer_workdir``). ``image_size``: the images it encodes (256 / 384 / 512)."""
    state, source = read_weights(path)
    cfg = infer_tokenizer_config(state, **fields)
    cfg.code_shape(image_size)  # checks divisibility
    params = convert_state_dict(state, cfg)
    origin = {"file": str(path), "weights": source, "original": "LlamaGen VQModel"}
    write_workdir(workdir, {"model": params}, tokenizer_config(cfg, image_size, origin))
    return cfg


def load_flat_params(path: str) -> dict:
    """Params written by this module's CLI (.safetensors with 'a/b/c' keys) -> nested dict."""
    from safetensors.numpy import load_file

    flat = {tuple(k.split("/")): jnp.asarray(v) for k, v in load_file(path).items()}
    return traverse_util.unflatten_dict(flat)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--checkpoint", required=True, help="LlamaGen VQ .pt/.pth/.safetensors")
    parser.add_argument("--workdir", help="write a tokenizer workdir here")
    parser.add_argument("--image-size", type=int, help="image size the workdir encodes")
    parser.add_argument("--out", help="or: write the params as one .safetensors file")
    args = parser.parse_args(argv)
    if bool(args.workdir) == bool(args.out):
        parser.error("pass exactly one of --workdir (with --image-size) or --out")
    if args.workdir:
        if args.image_size is None:
            parser.error("--workdir needs --image-size (256, 384 or 512 for the releases)")
        cfg = write_vq_workdir(args.checkpoint, args.workdir, args.image_size)
        print(f"wrote tokenizer workdir {args.workdir}: {cfg}")
        return
    from safetensors.numpy import save_file

    params = load_llamagen_vq(args.checkpoint)
    flat = traverse_util.flatten_dict(params, sep="/")
    save_file({k: np.asarray(v) for k, v in flat.items()}, args.out)
    print(f"wrote {len(flat)} arrays to {args.out}")


if __name__ == "__main__":
    main()
