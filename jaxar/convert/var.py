"""Load released VAR checkpoints (``var_d16.pth`` ...) and the quantizer of VAR's VQVAE
(``vae_ch160v4096z32.pth``) into jaxar params.

Files are read by ``jaxar.convert.torch_io`` (no pickled code runs; released ``.pth`` files and
VAR's ``ar-ckpt-*.pth`` trainer checkpoints: ``trainer.var_wo_ddp`` / ``trainer.vae_local``).
Name mapping (torch -> jaxar):

- ``class_emb.weight`` -> ``class_emb/embedding``; ``lvl_embed.weight`` -> ``lvl_embed/embedding``
- ``pos_start`` [1, first_l, C] / ``pos_1LC`` [1, L, C] -> ``pos_start`` / ``pos_1LC`` (squeezed)
- ``word_embed``, ``shared_ada_lin.1``, ``head``, ``head_nm.ada_lin.1`` and per block
  ``blocks.N.ada_lin.1``, ``ffn.fc1``, ``ffn.fc2``: Linear ``weight`` [out, in] -> ``kernel``
  [in, out]; ``blocks.N.attn.mat_qkv.weight`` [3C, C] -> ``attn/{query,key,value}/kernel``
  [C, H, Dh]; ``attn.q_bias`` / ``v_bias`` [C] -> [H, Dh]; ``attn.proj`` -> ``attn/proj/kernel``
  [H, Dh, C]; ``attn.scale_mul_1H11`` -> ``attn/scale_mul`` [H]; ``ada_gss`` -> [6, C].
- Buffers (``lvl_1L``, ``attn_bias_for_masking``, ``attn.zero_k_bias``) are dropped.
- With ``scan_layers`` the ``blocks_N`` subtrees are stacked into one ``blocks`` subtree
  [depth, ...] (``jaxar.layers.scan.stack_layer_params``).
- VQVAE quantizer: ``quantize.embedding.weight`` -> ``codebook``;
  ``quantize.quant_resi.qresi_ls.N`` (3x3 conv, OIHW) -> ``phi_N`` (HWIO);
  ``quantize.ema_vocab_hit_SV`` is dropped. The result is a ``MultiScaleQuantizer``'s params.

The whole VQVAE (encoder, decoder, 3x3 quant convs) is converted by ``jaxar.convert.var_vae``.
The VAR config is read from the weights (``infer_var_config``: heads too when attention is
l2-normalised); the scale schedule comes from the image size, the ``VAR-d{depth}`` preset or
``--patch-nums`` and is checked against the stored position embeddings.

CLI (a complete workdir: ``W/tokenizer`` from the VQVAE, ``W`` the generator, with VAR's FID
sampling settings)::

    python -m jaxar.convert.var --var var_d16.pth --vae vae_ch160v4096z32.pth --depth 16 \
        --workdir W
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import re
from collections.abc import Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from etils import epath
from flax import traverse_util

from jaxar.convert.llamagen_vq import read_state_dict
from jaxar.convert.torch_io import read_weights
from jaxar.convert.workdir import generator_config, write_workdir
from jaxar.generators.var import VAR, VAR_CONFIGS, VARConfig, scale_schedule
from jaxar.layers.scan import stack_layer_params
from jaxar.quantizers.multiscale import MultiScaleQuantizer

_VAR_BUFFERS = ("lvl_1L", "attn_bias_for_masking")


def _linear(prefix: tuple[str, ...], state: dict, key: str) -> dict:
    out = {(*prefix, "kernel"): state[key + ".weight"].T}
    if key + ".bias" in state:
        out[(*prefix, "bias")] = state[key + ".bias"]
    return out


def _top_level(state: dict, cfg: VARConfig) -> dict:
    """Embeddings, head and shared adaLN -> flat jaxar entries."""
    flat = {
        ("class_emb", "embedding"): state["class_emb.weight"],
        ("lvl_embed", "embedding"): state["lvl_embed.weight"],
        ("pos_start",): state["pos_start"].reshape(-1, cfg.embed_dim),
        ("pos_1LC",): state["pos_1LC"].reshape(-1, cfg.embed_dim),
        **_linear(("word_embed",), state, "word_embed"),
        **_linear(("head",), state, "head"),
        **_linear(("head_nm", "ada_lin"), state, "head_nm.ada_lin.1"),
    }
    if cfg.shared_aln:
        flat.update(_linear(("shared_ada_lin",), state, "shared_ada_lin.1"))
    return flat


def _block(state: dict, i: int, cfg: VARConfig) -> dict:
    """One ``blocks.i`` -> flat jaxar entries under ``blocks_i``."""
    p, t, c, h = f"blocks.{i}.", (f"blocks_{i}",), cfg.embed_dim, cfg.num_heads
    qkv = state[p + "attn.mat_qkv.weight"].reshape(3, c, c)  # [3, out, in]
    out = {}
    for j, name in enumerate(("query", "key", "value")):
        out[(*t, "attn", name, "kernel")] = qkv[j].T.reshape(c, h, c // h)
    out[(*t, "attn", "q_bias")] = state[p + "attn.q_bias"].reshape(h, c // h)
    out[(*t, "attn", "v_bias")] = state[p + "attn.v_bias"].reshape(h, c // h)
    out[(*t, "attn", "proj", "kernel")] = state[p + "attn.proj.weight"].T.reshape(h, c // h, c)
    out[(*t, "attn", "proj", "bias")] = state[p + "attn.proj.bias"]
    if cfg.attn_l2_norm:
        out[(*t, "attn", "scale_mul")] = state[p + "attn.scale_mul_1H11"].reshape(h)
    for fc in ("fc1", "fc2"):
        out.update(_linear((*t, "ffn", fc), state, p + "ffn." + fc))
    if cfg.shared_aln:
        out[(*t, "ada_gss")] = state[p + "ada_gss"].reshape(6, c)
    else:
        out.update(_linear((*t, "ada_lin"), state, p + "ada_lin.1"))
    return out


class _Tracked(dict):
    """A dict remembering which keys were read (to report unconverted entries)."""

    def __init__(self, *args):
        super().__init__(*args)
        self.read: set[str] = set()

    def __getitem__(self, key):
        self.read.add(key)
        return super().__getitem__(key)


def convert_var_state_dict(state: dict[str, np.ndarray], cfg: VARConfig) -> dict:
    """VAR state dict -> nested ``VAR(cfg)`` params (float32). Raises ValueError on missing,
    unexpected or wrongly shaped entries."""
    state = _Tracked(
        {k.removeprefix("module."): np.asarray(v, np.float32) for k, v in state.items()}
    )
    needed = ["class_emb.weight", "pos_1LC", "blocks.0.attn.mat_qkv.weight", "head.weight"]
    missing = [k for k in needed if k not in state]
    if missing:
        raise ValueError(f"not a VAR state dict: missing {missing}")
    depth = len({m.group(1) for k in state if (m := re.match(r"blocks\.(\d+)\.", k))})
    if depth != cfg.depth:
        raise ValueError(f"checkpoint has {depth} blocks, config depth is {cfg.depth}")
    try:
        flat = _top_level(state, cfg)
        for i in range(cfg.depth):
            flat.update(_block(state, i, cfg))
    except KeyError as err:
        raise ValueError(f"VAR state dict lacks {err} (check shared_aln / attn_l2_norm)") from err
    _check_unused(state)
    if cfg.scan_layers:  # blocks_i -> one stacked blocks subtree
        nested = stack_layer_params(traverse_util.unflatten_dict(flat), "blocks", cfg.depth)
        flat = traverse_util.flatten_dict(nested)
    return _checked(flat, _expected_var(cfg), "VAR")


def _check_unused(state: _Tracked) -> None:
    skip = _VAR_BUFFERS + ("zero_k_bias",)
    extra = sorted(k for k in set(state) - state.read if not k.endswith(skip))
    if extra:
        raise ValueError(f"VAR conversion: unconverted entries {extra[:5]} (check the config)")


def _expected_var(cfg: VARConfig) -> dict:
    labels = jax.ShapeDtypeStruct((1,), jnp.int32)
    inputs = jax.ShapeDtypeStruct((1, cfg.seq_len - cfg.first_l, cfg.code_dim), jnp.float32)
    tree = jax.eval_shape(lambda a, b: VAR(cfg).init(jax.random.key(0), a, b), labels, inputs)
    return traverse_util.flatten_dict(nn.unbox(tree["params"]))


def _checked(flat: dict, expected: dict, who: str) -> dict:
    missing, extra = sorted(set(expected) - set(flat)), sorted(set(flat) - set(expected))
    if missing or extra:
        raise ValueError(f"{who} conversion: missing {missing[:5]}, unexpected {extra[:5]}")
    for path, value in flat.items():
        if tuple(value.shape) != tuple(expected[path].shape):
            raise ValueError(
                f"{who} conversion: {'/'.join(path)} has shape {value.shape}, "
                f"expected {expected[path].shape}"
            )
    return traverse_util.unflatten_dict({k: jnp.asarray(v) for k, v in flat.items()})


def convert_vae_quantizer(
    state: dict[str, np.ndarray], quantizer: MultiScaleQuantizer
) -> dict[str, Any]:
    """VQVAE state dict (``quantize.*`` entries) -> ``MultiScaleQuantizer`` params."""
    state = {k.removeprefix("module."): np.asarray(v, np.float32) for k, v in state.items()}
    if "quantize.embedding.weight" not in state:
        raise ValueError("not a VAR VQVAE state dict: missing quantize.embedding.weight")
    flat = {("codebook",): state["quantize.embedding.weight"]}
    phis = sorted(k for k in state if k.startswith("quantize.quant_resi."))
    for key in phis:
        m = re.fullmatch(r"quantize\.quant_resi\.(?:qresi_ls\.)?(\d+)\.(weight|bias)", key)
        if m is None:
            raise ValueError(f"unsupported Phi layout {key!r} (expected partially shared qresi_ls)")
        value = state[key]
        leaf = "kernel" if m.group(2) == "weight" else "bias"
        flat[(f"phi_{m.group(1)}", leaf)] = (
            value.transpose(2, 3, 1, 0) if leaf == "kernel" else value
        )
    size = quantizer.scales[-1]
    z = jax.ShapeDtypeStruct((1, size, size, quantizer.code_dim), jnp.float32)
    tree = jax.eval_shape(lambda x: quantizer.init(jax.random.key(0), x), z)
    return _checked(flat, traverse_util.flatten_dict(nn.unbox(tree["params"])), "quantizer")


def load_var(path: str, cfg: VARConfig) -> dict:
    """Reads a VAR checkpoint file and converts it for ``VAR(cfg)``."""
    return convert_var_state_dict(read_state_dict(path), cfg)


def load_vae_quantizer(path: str, quantizer: MultiScaleQuantizer) -> dict:
    """Reads a VAR VQVAE checkpoint file and converts its quantizer for ``quantizer``."""
    return convert_vae_quantizer(read_state_dict(path), quantizer)


def infer_var_config(
    state: dict[str, np.ndarray],
    depth: int | None = None,
    patch_nums: Sequence[int] | None = None,
    **overrides: Any,
) -> VARConfig:
    """A ``VARConfig`` read from a VAR state dict: vocabulary, code dim, width, depth,
    classes, MLP ratio, shared adaLN, l2-normalised attention (and then the heads, from
    ``scale_mul_1H11``), checked against the ``VAR-d{depth}`` preset when there is one and
    against ``patch_nums`` (default: the preset's schedule). Heads of a model without
    l2-normalised attention come from the preset or ``num_heads``."""
    for key in ("class_emb.weight", "pos_1LC", "blocks.0.attn.mat_qkv.weight", "head.weight"):
        if key not in state:
            raise ValueError(f"not a VAR state dict: missing {key!r}")
    found_depth = len({m.group(1) for k in state if (m := re.match(r"blocks\.(\d+)\.", k))})
    if depth is not None and depth != found_depth:
        raise ValueError(f"--depth {depth}, but the checkpoint has {found_depth} blocks")
    preset = VAR_CONFIGS.get(f"VAR-d{found_depth}")
    width = int(state["class_emb.weight"].shape[1])
    found: dict[str, Any] = dict(
        vocab_size=int(state["head.weight"].shape[0]),
        code_dim=int(state["word_embed.weight"].shape[1]),
        depth=found_depth, embed_dim=width, num_classes=int(state["class_emb.weight"].shape[0] - 1),
        mlp_ratio=state["blocks.0.ffn.fc1.weight"].shape[0] / width,
        shared_aln="shared_ada_lin.1.weight" in state,
        attn_l2_norm="blocks.0.attn.scale_mul_1H11" in state,
    )  # fmt: skip
    if found["attn_l2_norm"]:
        found["num_heads"] = int(state["blocks.0.attn.scale_mul_1H11"].shape[1])
    elif preset is None and "num_heads" not in overrides:
        raise ValueError("the number of heads is not in these weights: pass --num-heads")
    base = preset or VARConfig(num_heads=overrides.get("num_heads", 1))
    if preset is not None and preset.embed_dim != width:
        raise ValueError(f"VAR-d{found_depth} has width {preset.embed_dim}, the weights {width}")
    found["patch_nums"] = tuple(patch_nums) if patch_nums else base.patch_nums
    cfg = dataclasses.replace(base, **{**found, **overrides})
    stored = (
        state["pos_1LC"].shape[1],
        state["pos_start"].shape[1],
        state["lvl_embed.weight"].shape[0],
    )
    if stored != (cfg.seq_len, cfg.first_l, cfg.num_scales):
        raise ValueError(
            f"the weights hold {stored[0]} positions over {stored[2]} scales, patch_nums "
            f"{cfg.patch_nums} give {cfg.seq_len} over {cfg.num_scales}: pass the matching "
            "--image-size (256 / 512) or --patch-nums"
        )
    return cfg


# VAR's FID settings (README: autoregressive_infer_cfg(cfg=1.5, top_p=0.96, top_k=900)).
# cfg_scale 2.5 is VAR's cfg=1.5 under jaxar's meaning (1 + cfg; see jaxar.sampling.scalewise).
SAMPLING_DEFAULTS = {
    "cfg_scale": 2.5, "cfg_schedule": "linear", "temperature": 1.0, "top_k": 900, "top_p": 0.96,
}  # fmt: skip


def write_var_workdir(
    var_path: str,
    workdir,
    tokenizer_workdir,
    depth: int | None = None,
    sampling: dict[str, Any] | None = None,
    **overrides: Any,
) -> VARConfig:
    """Converts a VAR checkpoint into a ``train_generator``-style workdir whose tokenizer is
    the converted VQVAE in ``tokenizer_workdir`` (scales and codebook cross-checked)."""
    from jaxar.recipes.tokenizer import load_tokenizer  # the reader of what we just wrote

    tokenizer = load_tokenizer(tokenizer_workdir)
    tok = tokenizer.config
    state, source = read_weights(var_path)
    cfg = infer_var_config(state, depth, tok.scales, **overrides)
    if (cfg.vocab_size, cfg.code_dim) != (tok.codebook_size, tok.code_dim):
        raise ValueError(
            f"{var_path}: codebook {cfg.vocab_size} x {cfg.code_dim}, the VQVAE in "
            f"{tokenizer_workdir} {tok.codebook_size} x {tok.code_dim}: pass the matching --vae"
        )
    params = convert_var_state_dict(state, cfg)
    origin = {"file": str(var_path), "weights": source, "original": "VAR"}
    settings = {**SAMPLING_DEFAULTS, **(sampling or {})}
    config = generator_config(tokenizer_workdir, "var", cfg, settings, tokenizer.image_size, origin)
    write_workdir(workdir, params, config)
    return cfg


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="VAR + VQVAE checkpoints -> a jaxar workdir")
    parser.add_argument("--var", required=True, help="var_d16.pth, ... or ar-ckpt-*.pth")
    parser.add_argument("--vae", help="vae_ch160v4096z32.pth (converted to WORKDIR/tokenizer)")
    parser.add_argument("--tokenizer-workdir", help="or: an already converted VQVAE workdir")
    parser.add_argument("--workdir", required=True, help="the generator workdir to write")
    parser.add_argument("--depth", type=int, help="16/20/24/30/36 (a cross-check)")
    parser.add_argument("--image-size", type=int, help="256 or 512 (default: the preset's)")
    parser.add_argument("--patch-nums", help="explicit scales, e.g. 1,2,3,4,5,6,8,10,13,16")
    parser.add_argument("--num-heads", type=int, help="only for models without l2-norm attn")
    for name, value in SAMPLING_DEFAULTS.items():
        kind = type(value)  # int, float or str
        parser.add_argument("--" + name.replace("_", "-"), type=kind, default=value,
                            help=f"stored sampling default (VAR: {value})")  # fmt: skip
    args = parser.parse_args(argv)
    from jaxar.convert.var_vae import write_vqvae_workdir  # it imports this module

    if bool(args.vae) == bool(args.tokenizer_workdir):
        raise SystemExit("pass exactly one of --vae or --tokenizer-workdir")
    tokenizer_workdir = args.tokenizer_workdir
    if args.vae:
        scales = _scales(args)
        tokenizer_workdir = str(epath.Path(args.workdir) / "tokenizer")
        write_vqvae_workdir(args.vae, tokenizer_workdir, args.image_size, scales)
    overrides = {"num_heads": args.num_heads} if args.num_heads else {}
    sampling = {k: getattr(args, k) for k in SAMPLING_DEFAULTS}
    cfg = write_var_workdir(
        args.var, args.workdir, tokenizer_workdir, args.depth, sampling, **overrides
    )
    print(json.dumps({"workdir": str(args.workdir), "tokenizer_workdir": tokenizer_workdir,
                      "config": dataclasses.asdict(cfg)}))  # fmt: skip


def _scales(args) -> tuple[int, ...]:
    """Scales from --patch-nums, --image-size or the VAR-d{depth} preset."""
    if args.patch_nums:
        return tuple(int(s) for s in args.patch_nums.split(","))
    if args.image_size:
        return scale_schedule(args.image_size)
    preset = VAR_CONFIGS.get(f"VAR-d{args.depth}")
    if preset is None:
        raise SystemExit("pass --depth of a released model (16/20/24/30/36), --image-size or "
                         "--patch-nums")  # fmt: skip
    return preset.patch_nums


if __name__ == "__main__":
    main()
