"""Load LlamaGen's VQ tokenizer checkpoints (``VQModel`` state dicts) into ``Tokenizer`` params.

Accepts a ``.pt``/``.pth`` file (``torch.load(..., weights_only=True)``; torch is the optional
``convert`` extra and is imported only here) or a ``.safetensors`` file. A LlamaGen training
checkpoint nests the weights under ``"model"``; both layouts work. Names map as
``encoder.conv_blocks.1.res.0.conv1.weight`` -> ``encoder/conv_blocks_1_res_0/conv1/kernel``;
conv weights OIHW -> HWIO, GroupNorm ``weight`` -> ``scale``, ``quantize.embedding.weight`` ->
``quantizer/codebook``. Buffers (``quantize.codebook_used``) and discriminator/loss weights are
dropped. The result is checked against the shapes of ``Tokenizer(cfg)``.

CLI: ``python -m jaxar.convert.llamagen_vq --checkpoint vq_ds16_c2i.pt --out vq16.safetensors``
writes the converted params as flat ``a/b/c`` keys (read back with ``load_flat_params``).
"""

from __future__ import annotations

import argparse
import re

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from flax import traverse_util

from jaxar.tokenizers.autoencoder import PRESETS, Tokenizer, TokenizerConfig

_SKIP_PREFIXES = ("quantize.codebook_used", "discriminator.", "perceptual_loss.")


def read_state_dict(path: str) -> dict[str, np.ndarray]:
    """A flat name -> float32 numpy dict from a .pt/.pth or .safetensors file."""
    if path.endswith(".safetensors"):
        from safetensors.numpy import load_file

        return {k: np.asarray(v, np.float32) for k, v in load_file(path).items()}
    if path.endswith((".pt", ".pth", ".bin", ".ckpt")):
        import torch  # optional dependency ('convert' extra)

        state = torch.load(path, map_location="cpu", weights_only=True)
        if "model" in state and isinstance(state["model"], dict):
            state = state["model"]
        return {k: v.float().numpy() for k, v in state.items() if hasattr(v, "numpy")}
    raise ValueError(f"unsupported checkpoint file {path!r} (expected .pt/.pth or .safetensors)")


def _flax_path(key: str) -> tuple[str, ...]:
    key = re.sub(r"conv_blocks\.(\d+)\.(res|attn)\.(\d+)", r"conv_blocks_\1_\2_\3", key)
    key = re.sub(r"conv_blocks\.(\d+)\.(downsample|upsample)", r"conv_blocks_\1_\2", key)
    key = re.sub(r"mid\.(\d+)", r"mid_\1", key)
    if key == "quantize.embedding.weight":
        return ("quantizer", "codebook")
    *modules, leaf = key.split(".")
    is_norm = "norm" in modules[-1]
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
    flat = {}
    for key, value in state.items():
        if key.startswith(_SKIP_PREFIXES):
            continue
        path = _flax_path(key)
        flat[path] = jnp.asarray(_convert_value(path, np.asarray(value, np.float32)))
    size = 2 * cfg.downsample_factor
    images = jax.ShapeDtypeStruct((1, size, size, cfg.image_channels), jnp.float32)
    expected = jax.eval_shape(lambda x: Tokenizer(cfg).init(jax.random.key(0), x), images)
    expected = traverse_util.flatten_dict(nn.unbox(expected["params"]))
    missing, extra = sorted(set(expected) - set(flat)), sorted(set(flat) - set(expected))
    if missing or extra:
        raise ValueError(f"checkpoint does not match config: missing {missing}, unexpected {extra}")
    for path, value in flat.items():
        if tuple(expected[path].shape) != tuple(value.shape):
            raise ValueError(f"{'/'.join(path)}: shape {value.shape} != {expected[path].shape}")
    return traverse_util.unflatten_dict(flat)


def load_llamagen_vq(path: str, cfg: TokenizerConfig | None = None) -> dict:
    """Reads and converts a LlamaGen VQ checkpoint; ``cfg`` defaults to the vq16 preset."""
    return convert_state_dict(read_state_dict(path), cfg or PRESETS["vq16"])


def load_flat_params(path: str) -> dict:
    """Params written by this module's CLI (.safetensors with 'a/b/c' keys) -> nested dict."""
    from safetensors.numpy import load_file

    flat = {tuple(k.split("/")): jnp.asarray(v) for k, v in load_file(path).items()}
    return traverse_util.unflatten_dict(flat)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--checkpoint", required=True, help="local LlamaGen .pt or .safetensors")
    parser.add_argument("--preset", default="vq16", choices=sorted(PRESETS))
    parser.add_argument("--out", required=True, help="output .safetensors")
    args = parser.parse_args(argv)
    from safetensors.numpy import save_file

    params = load_llamagen_vq(args.checkpoint, PRESETS[args.preset])
    flat = traverse_util.flatten_dict(params, sep="/")
    save_file({k: np.asarray(v) for k, v in flat.items()}, args.out)
    print(f"wrote {len(flat)} arrays to {args.out}")


if __name__ == "__main__":
    main()
