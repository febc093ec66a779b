"""Load LlamaGen GPT checkpoints (c2i and t2i ``Transformer`` state dicts) into ``GPT`` params.

Files are read by ``jaxar.convert.torch_io`` (no pickled code runs; released weights, LlamaGen
training checkpoints ``{model, optimizer, steps, args[, ema]}`` with EMA weights preferred,
DeepSpeed / FSDP layouts, ``.safetensors``).

Mapping (torch Linear weights are [out, in], flax kernels [in, out]):
  tok_embeddings.weight                  -> tok_embeddings/embedding
  cls_embedding.embedding_table.weight   -> cls_embedding/embedding        (c2i)
  cls_embedding.cap_proj.fc{1,2}.weight  -> cls_embedding/fc{1,2}/kernel   (t2i)
  cls_embedding.uncond_embedding         -> cls_embedding/uncond_embedding (t2i)
  layers.N.attention.wqkv.weight         -> layers_N/attention/{query,key,value}/kernel
       (rows: H*Dh query | Hkv*Dh key | Hkv*Dh value; kernels [D, heads, Dh])
  layers.N.attention.wo.weight           -> layers_N/attention/out/kernel [H, Dh, D]
  layers.N.feed_forward.w{1,2,3}.weight  -> layers_N/feed_forward/w{1,2,3}/kernel
  layers.N.{attention,ffn}_norm.weight   -> layers_N/{attention,ffn}_norm/scale
  norm.weight, output.weight             -> norm/scale, output/kernel
With ``scan_layers`` the ``layers_N`` subtrees are stacked into one ``layers`` subtree
[num_layers, ...] (``jaxar.layers.scan.stack_layer_params``).
Buffers (``freqs_cis``, ``causal_mask``, KV caches) are skipped.

Read from the weights: vocabulary, width, depth, classes, GQA, SwiGLU width (and the caption
size of t2i models). Not in them: heads (``--preset`` or ``--num-heads``) and tokens per image
(``--image-size`` with the VQ's downsampling, ``--block-size``, or a stored ``freqs_cis``);
missing or disagreeing values are errors.

CLI (writes a complete workdir: ``W/tokenizer`` from the VQ, ``W`` the generator, with
LlamaGen's sampling defaults; then ``load_generator(W)`` / ``experiments/sample.py``)::

    python -m jaxar.convert.llamagen --gpt c2i_B_256.pt --vq vq_ds16_c2i.pt \
        --preset GPT-B --image-size 256 --workdir W
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import re
from pathlib import Path
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from flax import traverse_util

from jaxar.convert.llamagen_vq import write_vq_workdir
from jaxar.convert.torch_io import read_weights
from jaxar.convert.workdir import generator_config, write_workdir
from jaxar.generators.gpt import GPT, GPT_CONFIGS, GPTConfig
from jaxar.layers.scan import stack_layer_params

_BUFFERS = ("freqs_cis", "causal_mask", "kv_cache")


def read_state_dict(path: str | Path) -> dict[str, np.ndarray]:
    """A flat name -> float32 numpy dict from any layout ``jaxar.convert.torch_io`` reads."""
    return read_weights(path)[0]


def _weight_shapes(state: dict[str, np.ndarray]) -> dict[str, Any]:
    """Everything the weights say: vocab, width, depth, classes / caption size, SwiGLU width."""
    if "tok_embeddings.weight" not in state or "layers.0.attention.wqkv.weight" not in state:
        raise ValueError(f"not a LlamaGen GPT state dict: keys {sorted(state)[:8]}")
    vocab, dim = state["tok_embeddings.weight"].shape
    layers = {int(m.group(1)) for k in state if (m := re.match(r"layers\.(\d+)\.", k))}
    found: dict[str, Any] = {"vocab_size": vocab, "dim": dim, "num_layers": len(layers)}
    if "cls_embedding.cap_proj.fc1.weight" in state:
        found["model_type"] = "t2i"
        found["caption_dim"] = state["cls_embedding.cap_proj.fc1.weight"].shape[1]
        found["cls_token_num"] = state["cls_embedding.uncond_embedding"].shape[0]
    else:
        found["model_type"] = "c2i"
        found["num_classes"] = state["cls_embedding.embedding_table.weight"].shape[0] - 1
    found["ffn_dim"] = state["layers.0.feed_forward.w1.weight"].shape[0]
    return {k: (int(v) if isinstance(v, np.integer) else v) for k, v in found.items()}


def _block_size(state: dict, found: dict, overrides: dict, image_size, downsample) -> int:
    """Tokens per image from --block-size, --image-size / the tokenizer's downsampling and the
    stored ``freqs_cis``; every value given must agree, at least one is needed."""
    sources = {}
    if overrides.get("block_size"):
        sources["--block-size"] = int(overrides["block_size"])
    if image_size:
        if image_size % downsample:
            raise ValueError(f"--image-size {image_size} is not a multiple of {downsample}")
        sources[f"--image-size {image_size} / {downsample}"] = (image_size // downsample) ** 2
    if "freqs_cis" in state:
        sources["the stored freqs_cis"] = state["freqs_cis"].shape[0] - found.get(
            "cls_token_num", 1
        )
    if not sources:
        raise ValueError(
            "the image size is not in the weights: pass --image-size (256, 384, 512; with the "
            "VQ tokenizer's downsampling, 16 unless --vq says otherwise) or --block-size"
        )
    if len(set(sources.values())) > 1:
        raise ValueError(f"inconsistent tokens per image: {sources}")
    return next(iter(sources.values()))


def infer_gpt_config(
    state: dict[str, np.ndarray],
    preset: str | None = None,
    image_size: int | None = None,
    downsample: int = 16,
    **overrides: Any,
) -> GPTConfig:
    """Config from the weight shapes (vocab, width, depth, classes, GQA, SwiGLU width, caption
    size), checked against ``preset``; heads from ``preset`` or ``num_heads``; tokens per image
    from ``image_size`` / ``downsample``, ``block_size`` or a stored ``freqs_cis`` (they must
    agree). Missing or inconsistent values raise a ValueError saying what to pass."""
    found = _weight_shapes(state)
    base = GPT_CONFIGS[preset] if preset else GPTConfig()
    if preset:
        for name in ("dim", "num_layers"):
            if getattr(base, name) != found[name]:
                raise ValueError(
                    f"preset {preset} has {name}={getattr(base, name)} but the weights have "
                    f"{found[name]}; pick the matching --preset"
                )
    elif "num_heads" not in overrides:
        presets = [n for n, c in GPT_CONFIGS.items() if (c.dim, c.num_layers) ==
                   (found["dim"], found["num_layers"])]  # fmt: skip
        raise ValueError(
            f"the number of heads is not in the weights (dim {found['dim']}, "
            f"{found['num_layers']} layers): pass --preset {presets or GPT_CONFIGS.keys()} "
            "or --num-heads"
        )
    heads = overrides.get("num_heads", base.num_heads)
    if found["dim"] % heads:
        raise ValueError(f"--num-heads {heads} does not divide the width {found['dim']}")
    kv_rows = (state["layers.0.attention.wqkv.weight"].shape[0] - found["dim"]) // 2
    found["num_kv_heads"] = None if kv_rows == found["dim"] else kv_rows // (found["dim"] // heads)
    found["block_size"] = _block_size(state, found, overrides, image_size, downsample)
    values = {**found, **{k: v for k, v in overrides.items() if k != "block_size"}}
    return dataclasses.replace(base, **values)


def _linear(w: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(w.T)


def _layer_params(state: dict[str, np.ndarray], i: int, cfg: GPTConfig) -> dict:
    p = f"layers.{i}."
    dim, hd, kv = cfg.dim, cfg.head_dim, cfg.kv_heads
    wqkv = state[p + "attention.wqkv.weight"]
    q, k, v = np.split(wqkv, [dim, dim + kv * hd], axis=0)
    heads = lambda w, n: _linear(w).reshape(dim, n, hd)  # noqa: E731
    return {
        "attention": {
            "query": {"kernel": heads(q, cfg.num_heads)},
            "key": {"kernel": heads(k, kv)},
            "value": {"kernel": heads(v, kv)},
            "out": {
                "kernel": _linear(state[p + "attention.wo.weight"]).reshape(cfg.num_heads, hd, dim)
            },
        },
        "feed_forward": {
            n: {"kernel": _linear(state[p + f"feed_forward.{n}.weight"])}
            for n in ("w1", "w2", "w3")
        },
        "attention_norm": {"scale": state[p + "attention_norm.weight"]},
        "ffn_norm": {"scale": state[p + "ffn_norm.weight"]},
    }


def convert_gpt_state_dict(state: dict[str, np.ndarray], cfg: GPTConfig) -> dict:
    """LlamaGen state dict -> ``GPT(cfg)`` params (float32 numpy). Checks names and shapes."""
    state = {k: v for k, v in state.items() if not k.startswith(_BUFFERS) and ".kv_cache." not in k}
    used: set[str] = set()
    tracked = _Tracker(state, used)
    if cfg.model_type == "c2i":
        cls = {"embedding": tracked["cls_embedding.embedding_table.weight"]}
    else:
        cls = {
            "fc1": {"kernel": _linear(tracked["cls_embedding.cap_proj.fc1.weight"])},
            "fc2": {"kernel": _linear(tracked["cls_embedding.cap_proj.fc2.weight"])},
            "uncond_embedding": tracked["cls_embedding.uncond_embedding"],
        }
    params = {
        "tok_embeddings": {"embedding": tracked["tok_embeddings.weight"]},
        "cls_embedding": cls,
        "norm": {"scale": tracked["norm.weight"]},
        "output": {"kernel": _linear(tracked["output.weight"])},
    }
    for i in range(cfg.num_layers):
        params[f"layers_{i}"] = _layer_params(tracked, i, cfg)
    if cfg.scan_layers:
        params = stack_layer_params(params, "layers", cfg.num_layers)
    unused = sorted(set(state) - used)
    if unused:
        raise ValueError(f"checkpoint has weights the GPT config does not use: {unused[:8]}")
    _check_shapes(params, cfg)
    return params


class _Tracker(dict):
    """A dict view that records which keys were read (to report unused weights)."""

    def __init__(self, state: dict, used: set):
        super().__init__(state)
        self._used = used

    def __getitem__(self, key):
        if key not in self:
            raise ValueError(f"checkpoint lacks {key!r}")
        self._used.add(key)
        return super().__getitem__(key)


def _check_shapes(params: dict, cfg: GPTConfig) -> None:
    codes = jnp.zeros((1, cfg.block_size), jnp.int32)
    if cfg.model_type == "c2i":
        cond = jnp.zeros((1,), jnp.int32)
    else:
        cond = jnp.zeros((1, cfg.cls_token_num, cfg.caption_dim))
    abstract = jax.eval_shape(lambda: GPT(cfg).init(jax.random.key(0), codes, cond))["params"]
    want = traverse_util.flatten_dict(nn.unbox(abstract), sep="/")
    got = traverse_util.flatten_dict(params, sep="/")
    if set(want) != set(got):
        raise ValueError(f"param names differ: missing {sorted(set(want) - set(got))[:5]}, "
                         f"extra {sorted(set(got) - set(want))[:5]}")  # fmt: skip
    for name, spec in want.items():
        if tuple(spec.shape) != got[name].shape:
            raise ValueError(f"{name}: checkpoint shape {got[name].shape} != model {spec.shape}")


def load_llamagen_gpt(
    path: str | Path, preset: str | None = None, **overrides: Any
) -> tuple[GPTConfig, dict]:
    """Reads a LlamaGen GPT checkpoint -> (config, params); see ``infer_gpt_config``."""
    state = read_state_dict(path)
    cfg = infer_gpt_config(state, preset, **overrides)
    return cfg, convert_gpt_state_dict(state, cfg)


# LlamaGen's c2i evaluation settings (paper / README: GPT-B 256 px, FID 5.46 at cfg 2.0).
SAMPLING_DEFAULTS = {"cfg_scale": 2.0, "temperature": 1.0, "top_k": 0, "top_p": 1.0}


def write_gpt_workdir(
    gpt: str | Path,
    workdir: str | Path,
    tokenizer_workdir: str | Path,
    preset: str | None = None,
    sampling: dict[str, Any] | None = None,
    **overrides: Any,
) -> GPTConfig:
    """Converts a LlamaGen c2i GPT into a ``train_generator``-style workdir whose tokenizer is
    the (converted) ``tokenizer_workdir``; vocabulary and tokens per image are checked
    against it. ``overrides``: GPTConfig fields (``num_heads``, ``block_size``)."""
    from jaxar.recipes.tokenizer import load_tokenizer  # the reader of what we just wrote

    tokenizer = load_tokenizer(tokenizer_workdir)
    state, source = read_weights(gpt)
    cfg = infer_gpt_config(
        state, preset, tokenizer.image_size, tokenizer.config.downsample_factor, **overrides
    )
    if cfg.model_type != "c2i":
        raise ValueError(f"{gpt}: a t2i GPT; workdirs are written for c2i models only")
    if cfg.vocab_size != tokenizer.vocab_size:
        raise ValueError(
            f"{gpt} has a {cfg.vocab_size}-code vocabulary, the tokenizer in "
            f"{tokenizer_workdir} {tokenizer.vocab_size} codes: pass the matching --vq"
        )
    params = convert_gpt_state_dict(state, cfg)
    origin = {"file": str(gpt), "weights": source, "original": "LlamaGen GPT", "preset": preset}
    settings = {**SAMPLING_DEFAULTS, **(sampling or {})}
    config = generator_config(tokenizer_workdir, "gpt", cfg, settings, tokenizer.image_size, origin)
    write_workdir(workdir, params, config)
    return cfg


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--gpt", required=True, help="LlamaGen c2i GPT .pt/.pth/.safetensors")
    parser.add_argument("--vq", help="LlamaGen VQ checkpoint (converted into WORKDIR/tokenizer)")
    parser.add_argument("--tokenizer-workdir", help="or: an already converted tokenizer workdir")
    parser.add_argument("--workdir", required=True, help="the generator workdir to write")
    parser.add_argument("--preset", choices=sorted(GPT_CONFIGS), help="e.g. GPT-B (gives heads)")
    parser.add_argument("--image-size", type=int, help="256, 384 or 512 (needed with --vq)")
    parser.add_argument("--num-heads", type=int, help="instead of --preset")
    parser.add_argument("--block-size", type=int, help="tokens per image (a cross-check)")
    for name, value in SAMPLING_DEFAULTS.items():
        kind = int if isinstance(value, int) else float
        parser.add_argument("--" + name.replace("_", "-"), type=kind, default=value,
                            help=f"stored sampling default (LlamaGen: {value})")  # fmt: skip
    return parser


def main(argv: list[str] | None = None) -> None:
    args = _parser().parse_args(argv)
    if bool(args.vq) == bool(args.tokenizer_workdir):
        raise SystemExit("pass exactly one of --vq (with --image-size) or --tokenizer-workdir")
    tokenizer_workdir = args.tokenizer_workdir
    if args.vq:
        if args.image_size is None:
            raise SystemExit("--vq needs --image-size (256, 384 or 512 for the releases)")
        tokenizer_workdir = str(Path(args.workdir) / "tokenizer")
        write_vq_workdir(args.vq, tokenizer_workdir, args.image_size)
    overrides = {k: getattr(args, k) for k in ("num_heads", "block_size") if getattr(args, k)}
    sampling = {k: getattr(args, k) for k in SAMPLING_DEFAULTS}
    cfg = write_gpt_workdir(
        args.gpt, args.workdir, tokenizer_workdir, args.preset, sampling, **overrides
    )
    print(json.dumps({"workdir": str(args.workdir), "tokenizer_workdir": tokenizer_workdir,
                      "config": dataclasses.asdict(cfg)}))  # fmt: skip


if __name__ == "__main__":
    main()
