"""Load MAR checkpoints (Li et al. 2024, LTH14/mar: ``checkpoint-last.pth``) into ``MAR`` params.

MAR's ``misc.save_model`` writes ``{"model", "model_ema", "optimizer", "epoch", "scaler",
"args"}``; ``model`` and ``model_ema`` are state dicts of ``models/mar.py``'s ``MAR`` with the
same keys. The EMA weights are preferred (``use_ema=False`` / ``--no-ema`` takes ``model``).
Files are read by ``jaxar.convert.torch_io`` (``weights_only``, no pickled code runs).

Mapping (torch Linear weights are [out, in], flax kernels [in, out]; LayerNorm ``weight`` ->
``scale``; the timm ``Block`` layout of ``jaxar.layers.vit.ViTBlock``):
  class_emb.weight                          -> class_emb/embedding
  fake_latent, mask_token, *_pos_embed_learned  -> the same names (unchanged)
  z_proj, decoder_embed                     -> z_proj, decoder_embed ({kernel, bias})
  z_proj_ln, encoder_norm, decoder_norm     -> the same names ({scale, bias})
  {encoder,decoder}_blocks.N.{norm1, attn.qkv, attn.proj, norm2, mlp.fc1, mlp.fc2}
                                            -> {encoder,decoder}_blocks_N/{norm1, attn/qkv, ...}
  diffloss.net.*                            -> diffloss/* (see jaxar.layers.diffusion_head)
With ``scan_layers`` the ``*_blocks_N`` subtrees are stacked into ``encoder_blocks`` /
``decoder_blocks`` [depth, ...].

Read from the weights: widths, depths, classes, buffer size, tokens per image, token size
(``vae_embed_dim * patch_size**2``), MLP ratio, diffusion head width / depth. Not in them:
attention heads (from the released preset with the same widths and depths, ``--model``, or
``encoder_heads`` / ``decoder_heads``) and how the token size splits into latent channels and
patch size (the tokenizer's latent channels; patch size 1 when nothing says otherwise, as in
every released model).

CLI (the tokenizer workdir holds MAR's KL-16 VAE, converted or trained; MAR's evaluation
sampling settings are stored as defaults)::

    python -m jaxar.convert.mar --mar checkpoint-last.pth --workdir W --tokenizer-workdir TOK \
        [--model mar_base|mar_large|mar_huge] [--no-ema]
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import re
from pathlib import Path
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from flax import traverse_util

from jaxar.convert.torch_io import load_file, select_weights
from jaxar.convert.workdir import generator_config, write_workdir
from jaxar.generators.mar import MAR, MAR_CONFIGS, MARConfig

# MAR's model names (main_mar.py --model) -> jaxar presets.
MODELS = {"mar_base": "MAR-B", "mar_large": "MAR-L", "mar_huge": "MAR-H"}
RELEASED = ("MAR-B", "MAR-L", "MAR-H")
_REQUIRED = ("class_emb.weight", "z_proj.weight", "encoder_pos_embed_learned",
             "diffusion_pos_embed_learned", "decoder_embed.weight",
             "diffloss.net.input_proj.weight")  # fmt: skip
_HEAD = "diffloss.net."


def _check_mar(state: dict[str, np.ndarray], where: str = "state dict") -> None:
    missing = [k for k in _REQUIRED if k not in state]
    if missing:
        raise ValueError(
            f"not a MAR {where}: it lacks {missing[:3]} (keys {sorted(state)[:8]}); expected "
            "the 'model' / 'model_ema' state dict of LTH14/mar's MAR"
        )


def _count(state: dict, prefix: str) -> int:
    found = {int(m.group(1)) for k in state if (m := re.match(re.escape(prefix) + r"(\d+)\.", k))}
    if found != set(range(len(found))):
        raise ValueError(f"{prefix}N: layer indices {sorted(found)} are not 0..{len(found) - 1}")
    return len(found)


def weight_shapes(state: dict[str, np.ndarray]) -> dict[str, Any]:
    """Every MARConfig field the weights fix (plus ``token_dim`` and ``seq_len``)."""
    _check_mar(state)
    num_classes, encoder_dim = state["class_emb.weight"].shape
    token_dim = state["z_proj.weight"].shape[1]
    seq_len = state["diffusion_pos_embed_learned"].shape[1]
    found = {
        "num_classes": num_classes,
        "encoder_dim": encoder_dim,
        "decoder_dim": state["decoder_embed.weight"].shape[0],
        "encoder_depth": _count(state, "encoder_blocks."),
        "decoder_depth": _count(state, "decoder_blocks."),
        "buffer_size": state["encoder_pos_embed_learned"].shape[1] - seq_len,
        "head_width": state[_HEAD + "input_proj.weight"].shape[0],
        "head_depth": _count(state, _HEAD + "res_blocks."),
        "token_dim": token_dim,
        "seq_len": seq_len,
    }
    if found["encoder_depth"] == 0 or found["decoder_depth"] == 0:
        raise ValueError(f"not a MAR state dict: no encoder_blocks.N / decoder_blocks.N ({found})")
    fc1 = state.get("encoder_blocks.0.mlp.fc1.weight")
    if fc1 is not None:
        found["mlp_ratio"] = fc1.shape[0] / encoder_dim
    head_in = state[_HEAD + "input_proj.weight"].shape[1]
    if head_in != token_dim:
        raise ValueError(f"diffusion head takes {head_in} channels, z_proj {token_dim}")
    return {k: (int(v) if isinstance(v, (int, np.integer)) else v) for k, v in found.items()}


def _matching_presets(found: dict) -> list[str]:
    keys = ("encoder_dim", "encoder_depth", "decoder_dim", "decoder_depth")
    return [n for n in RELEASED if all(getattr(MAR_CONFIGS[n], k) == found[k] for k in keys)]


def infer_mar_config(
    state: dict[str, np.ndarray],
    preset: str | None = None,
    latent_dim: int | None = None,
    **overrides: Any,
) -> MARConfig:
    """Config from the weight shapes (see the module doc). ``preset``: a jaxar preset
    (``MAR-B``) or MAR's model name (``mar_base``), else the released preset with the same
    widths and depths; it gives the heads unless ``encoder_heads`` / ``decoder_heads`` are
    overridden, and the other fields the weights do not fix. ``latent_dim``: the tokenizer's
    latent channels (fixes ``patch_size``); else ``patch_size`` (default 1) fixes it.
    Disagreeing values raise a ValueError saying what to pass."""
    found = weight_shapes(state)
    preset = MODELS.get(preset, preset)
    if preset is not None and preset not in MAR_CONFIGS:
        raise ValueError(f"unknown MAR model {preset!r}; known: {sorted(MODELS)} / {RELEASED}")
    if preset is None:
        matches = _matching_presets(found)
        heads_given = "encoder_heads" in overrides and "decoder_heads" in overrides
        if matches:
            preset = matches[0]
        elif not heads_given:
            raise ValueError(
                f"the number of heads is not in the weights (encoder {found['encoder_dim']} "
                f"x {found['encoder_depth']}, decoder {found['decoder_dim']} x "
                f"{found['decoder_depth']} match no released model): pass --model or "
                "encoder_heads and decoder_heads"
            )
    base = MAR_CONFIGS[preset] if preset else MARConfig()
    if preset:
        for name in ("encoder_dim", "encoder_depth", "decoder_dim", "decoder_depth"):
            if getattr(base, name) != found[name]:
                raise ValueError(
                    f"model {preset} has {name}={getattr(base, name)} but the weights have "
                    f"{found[name]}; pick the matching --model"
                )
    token_dim, seq_len = found.pop("token_dim"), found.pop("seq_len")
    if latent_dim is not None:
        p = math.isqrt(token_dim // latent_dim) if token_dim % latent_dim == 0 else 0
        if p * p * latent_dim != token_dim:
            raise ValueError(
                f"tokens of {token_dim} values are not patches of {latent_dim}-channel latents"
            )
        if overrides.get("patch_size", p) != p:
            raise ValueError(f"patch_size {overrides['patch_size']} != {p} from the latents")
    else:
        p = int(overrides.get("patch_size", 1))
        if token_dim % (p * p):
            raise ValueError(f"token size {token_dim} is not a multiple of patch_size^2 {p * p}")
        latent_dim = token_dim // (p * p)
    side = math.isqrt(seq_len)
    if side * side != seq_len:
        raise ValueError(f"{seq_len} tokens per image is not a square grid")
    found.update(latent_dim=latent_dim, patch_size=p, latent_grid=side * p)
    for name, value in overrides.items():
        if name in found and found[name] != value:
            raise ValueError(f"{name}={value!r} disagrees with the weights: {found[name]}")
    return dataclasses.replace(base, **{**found, **overrides})


def _linear(w: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(w.T)


class _Tracker(dict):
    """A dict view that records which keys were read (to report unused weights)."""

    def __init__(self, state: dict):
        super().__init__(state)
        self.used: set[str] = set()

    def __getitem__(self, key):
        if key not in self:
            raise ValueError(f"checkpoint lacks {key!r}")
        self.used.add(key)
        return super().__getitem__(key)

    def dense(self, prefix: str) -> dict:
        return {"kernel": _linear(self[prefix + ".weight"]), "bias": self[prefix + ".bias"]}

    def norm(self, prefix: str) -> dict:
        return {"scale": self[prefix + ".weight"], "bias": self[prefix + ".bias"]}


def _block(t: _Tracker, p: str) -> dict:
    return {
        "norm1": t.norm(p + "norm1"),
        "attn": {"qkv": t.dense(p + "attn.qkv"), "proj": t.dense(p + "attn.proj")},
        "norm2": t.norm(p + "norm2"),
        "mlp": {"fc1": t.dense(p + "mlp.fc1"), "fc2": t.dense(p + "mlp.fc2")},
    }


def _head(t: _Tracker, depth: int) -> dict:
    h = _HEAD
    out = {
        "time_embed_mlp_0": t.dense(h + "time_embed.mlp.0"),
        "time_embed_mlp_2": t.dense(h + "time_embed.mlp.2"),
        "cond_embed": t.dense(h + "cond_embed"),
        "input_proj": t.dense(h + "input_proj"),
        "final_layer": {
            "adaLN_modulation_1": t.dense(h + "final_layer.adaLN_modulation.1"),
            "linear": t.dense(h + "final_layer.linear"),
        },
    }
    for i in range(depth):
        p = f"{h}res_blocks.{i}."
        out[f"res_blocks_{i}"] = {
            "in_ln": t.norm(p + "in_ln"),
            "mlp_0": t.dense(p + "mlp.0"),
            "mlp_2": t.dense(p + "mlp.2"),
            "adaLN_modulation_1": t.dense(p + "adaLN_modulation.1"),
        }
    return out


def convert_mar_state_dict(
    state: dict[str, np.ndarray], cfg: MARConfig, scanned: bool | None = None
) -> dict:
    """MAR state dict -> ``MAR(cfg)`` params (float32 numpy), per-layer or (``scanned``,
    default ``cfg.scan_layers``) stacked. Every torch key must be used and every param filled
    with its shape; a ValueError names the first key that is not."""
    _check_mar(state)
    scanned = cfg.scan_layers if scanned is None else bool(scanned)
    t = _Tracker(state)
    params: dict[str, Any] = {
        "class_emb": {"embedding": t["class_emb.weight"]},
        "z_proj": t.dense("z_proj"),
        "z_proj_ln": t.norm("z_proj_ln"),
        "encoder_norm": t.norm("encoder_norm"),
        "decoder_embed": t.dense("decoder_embed"),
        "decoder_norm": t.norm("decoder_norm"),
        "diffloss": _head(t, cfg.head_depth),
    }
    for name in ("fake_latent", "mask_token", "encoder_pos_embed_learned",
                 "decoder_pos_embed_learned", "diffusion_pos_embed_learned"):  # fmt: skip
        params[name] = t[name]
    for stack, depth in (("encoder_blocks", cfg.encoder_depth),
                         ("decoder_blocks", cfg.decoder_depth)):  # fmt: skip
        for i in range(depth):
            params[f"{stack}_{i}"] = _block(t, f"{stack}.{i}.")
    unused = sorted(set(state) - t.used)
    if unused:
        raise ValueError(f"checkpoint has weights the MAR config does not use: {unused[:8]}")
    _check_shapes(params, dataclasses.replace(cfg, scan_layers=False))
    if scanned:
        from jaxar.layers.scan import stack_layer_params

        params = stack_layer_params(params, "encoder_blocks", cfg.encoder_depth)
        params = stack_layer_params(params, "decoder_blocks", cfg.decoder_depth)
    return params


def abstract_params(cfg: MARConfig) -> dict:
    """The shapes of ``MAR(cfg)``'s params (encoder, decoder and diffusion head)."""
    model = MAR(cfg)

    def init():
        tokens = jnp.zeros((1, cfg.seq_len, cfg.token_dim))
        mask = jnp.zeros((1, cfg.seq_len), bool)

        def both(module, tokens, labels, mask):
            z = module(tokens, labels, mask)[0]
            return module.head(tokens[0], jnp.zeros((cfg.seq_len,), jnp.int32), z)

        return model.init(jax.random.key(0), tokens, jnp.zeros((1,), jnp.int32), mask,
                          method=both)["params"]  # fmt: skip

    return nn.unbox(jax.eval_shape(init))


def _check_shapes(params: dict, cfg: MARConfig) -> None:
    want = traverse_util.flatten_dict(abstract_params(cfg), sep="/")
    got = traverse_util.flatten_dict(params, sep="/")
    if set(want) != set(got):
        raise ValueError(f"param names differ: missing {sorted(set(want) - set(got))[:5]}, "
                         f"extra {sorted(set(got) - set(want))[:5]}")  # fmt: skip
    for name, spec in want.items():
        if tuple(spec.shape) != got[name].shape:
            raise ValueError(f"{name}: checkpoint shape {got[name].shape} != model {spec.shape}")


def read_mar_weights(path: str | Path, use_ema: bool = True) -> tuple[dict[str, np.ndarray], str]:
    """(state dict, which entry) of a MAR file: ``model_ema`` (unless ``use_ema`` is False),
    else ``model``; a bare state dict (e.g. ``.safetensors``) is taken as it is."""
    raw = load_file(path)
    if isinstance(raw, dict) and ("model" in raw or "model_ema" in raw):
        keys = ("model_ema", "model") if use_ema else ("model",)
        for key in keys:
            if isinstance(raw.get(key), dict) and raw[key]:
                state, _ = select_weights(raw[key], f"{path}[{key!r}]")
                _check_mar(state, f"state dict in {path}[{key!r}]")
                return state, f"the {key!r} entry"
        raise ValueError(f"{path}: none of {list(keys)} holds a state dict (keys {sorted(raw)})")
    state, source = select_weights(raw, str(path))
    _check_mar(state, f"state dict ({path})")
    return state, source


def load_mar(
    path: str | Path, preset: str | None = None, use_ema: bool = True, **overrides: Any
) -> tuple[MARConfig, dict]:
    """Reads a MAR checkpoint -> (config, params); see ``infer_mar_config``."""
    state, _ = read_mar_weights(path, use_ema)
    cfg = infer_mar_config(state, preset, **overrides)
    return cfg, convert_mar_state_dict(state, cfg)


# MAR's README evaluation settings (FID 2.31 / 1.78 / 1.55 for MAR-B / L / H at 256 px).
SAMPLING_DEFAULTS = {"num_iter": 256, "num_sampling_steps": 100, "cfg_scale": 2.9,
                     "cfg_schedule": "linear", "temperature": 1.0}  # fmt: skip
CFG_SCALES = {"MAR-B": 2.9, "MAR-L": 3.0, "MAR-H": 3.2}


def write_mar_workdir(
    path: str | Path,
    workdir: str | Path,
    tokenizer_workdir: str | Path,
    preset: str | None = None,
    use_ema: bool = True,
    sampling: dict[str, Any] | None = None,
    **overrides: Any,
) -> MARConfig:
    """Converts a MAR checkpoint into a generator workdir (family ``mar``) whose tokenizer is
    the continuous ``tokenizer_workdir``; latent channels and grid are checked against it."""
    from jaxar.recipes.tokenizer import load_tokenizer

    tokenizer = load_tokenizer(tokenizer_workdir)
    tok = tokenizer.config
    if not tok.continuous:
        raise ValueError(
            f"MAR needs a continuous (kl) tokenizer, {tokenizer_workdir} has quantizer "
            f"{tok.quantizer!r}"
        )
    state, source = read_mar_weights(path, use_ema)
    cfg = infer_mar_config(state, preset, latent_dim=tok.code_dim, **overrides)
    grid = tok.code_shape(tokenizer.image_size)[0]
    if cfg.latent_grid != grid:
        raise ValueError(
            f"{path} generates a {cfg.latent_grid}x{cfg.latent_grid} latent grid, the tokenizer "
            f"in {tokenizer_workdir} makes {grid}x{grid} at {tokenizer.image_size} px"
        )
    params = convert_mar_state_dict(state, cfg)
    name = MODELS.get(preset, preset) or (_matching_presets(weight_shapes(state)) or [None])[0]
    origin = {"file": str(path), "weights": source, "original": "MAR", "preset": name}
    settings = {**SAMPLING_DEFAULTS, "cfg_scale": CFG_SCALES.get(name, 2.9), **(sampling or {})}
    config = generator_config(tokenizer_workdir, "mar", cfg, settings, tokenizer.image_size, origin)
    write_workdir(workdir, params, config)
    return cfg


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--mar", required=True, help="MAR checkpoint-last.pth (or .safetensors)")
    parser.add_argument("--workdir", required=True, help="the generator workdir to write")
    parser.add_argument("--tokenizer-workdir", required=True, help="a continuous (kl) tokenizer")
    parser.add_argument("--model", choices=sorted(MODELS), help="MAR's --model (gives heads)")
    parser.add_argument("--encoder-heads", type=int, help="instead of --model")
    parser.add_argument("--decoder-heads", type=int, help="instead of --model")
    parser.add_argument("--no-ema", action="store_true", help="take 'model', not 'model_ema'")
    for name, value in SAMPLING_DEFAULTS.items():
        kind = type(value)
        parser.add_argument("--" + name.replace("_", "-"), type=kind, default=None,
                            help=f"stored sampling default (MAR: {value})")  # fmt: skip
    return parser


def main(argv: list[str] | None = None) -> None:
    args = _parser().parse_args(argv)
    overrides = {k: getattr(args, k) for k in ("encoder_heads", "decoder_heads")
                 if getattr(args, k)}  # fmt: skip
    sampling = {k: getattr(args, k) for k in SAMPLING_DEFAULTS if getattr(args, k) is not None}
    cfg = write_mar_workdir(args.mar, args.workdir, args.tokenizer_workdir, args.model,
                            not args.no_ema, sampling, **overrides)  # fmt: skip
    print(json.dumps({"workdir": str(args.workdir), "config": dataclasses.asdict(cfg)}))


if __name__ == "__main__":
    main()
