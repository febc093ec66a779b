"""Load LlamaGen GPT checkpoints (c2i and t2i ``Transformer`` state dicts) into ``GPT`` params.

Accepts ``.pt``/``.pth``/``.bin`` (``torch.load(..., weights_only=True)``; torch is the
optional ``convert`` extra and is imported only here; weights under ``"model"`` (DDP),
``"module"`` (DeepSpeed), ``"state_dict"`` or at the top level (FSDP)) or ``.safetensors``.

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
Buffers (``freqs_cis``, ``causal_mask``, KV caches) are skipped.

CLI: ``python -m jaxar.convert.llamagen --checkpoint c2i_B_256.pt --preset GPT-B --out DIR``
writes an orbax checkpoint of the params to ``DIR/params`` and the config to
``DIR/config.json`` (read back with ``load_converted``).
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

from jaxar.generators.gpt import GPT, GPT_CONFIGS, GPTConfig

_BUFFERS = ("freqs_cis", "causal_mask", "kv_cache")
_PREFIXES = ("module.", "_orig_mod.", "_fsdp_wrapped_module.")


def read_state_dict(path: str | Path) -> dict[str, np.ndarray]:
    """A flat name -> float32 numpy dict from a .pt/.pth/.bin or .safetensors file."""
    path = str(path)
    if path.endswith(".safetensors"):
        from safetensors.numpy import load_file

        state = dict(load_file(path))
    elif path.endswith((".pt", ".pth", ".bin", ".ckpt")):
        import torch  # optional dependency ('convert' extra)

        raw = torch.load(path, map_location="cpu", weights_only=True)
        for key in ("model", "module", "state_dict"):
            if isinstance(raw, dict) and isinstance(raw.get(key), dict):
                raw = raw[key]
                break
        state = {k: v.float().numpy() for k, v in raw.items() if isinstance(v, torch.Tensor)}
    else:
        raise ValueError(f"unsupported checkpoint {path!r} (expected .pt/.pth/.bin/.safetensors)")
    out = {}
    for key, value in state.items():
        for prefix in _PREFIXES:
            key = key.removeprefix(prefix)
        out[key] = np.asarray(value, np.float32)
    return out


def infer_gpt_config(
    state: dict[str, np.ndarray], preset: str | None = None, **overrides: Any
) -> GPTConfig:
    """Config from weight shapes (vocab, width, depth, classes, GQA, SwiGLU width, caption
    size; block size from ``freqs_cis`` when stored), completed by ``preset`` / overrides.
    Without a preset or ``num_heads`` override, heads default to ``dim // 64`` (LlamaGen)."""
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
    if "freqs_cis" in state:
        found["block_size"] = state["freqs_cis"].shape[0] - found.get("cls_token_num", 1)
    base = GPT_CONFIGS[preset] if preset else GPTConfig(num_heads=max(dim // 64, 1))
    heads = overrides.get("num_heads", base.num_heads)
    head_dim = dim // heads
    kv_rows = (state["layers.0.attention.wqkv.weight"].shape[0] - dim) // 2
    found["num_kv_heads"] = None if kv_rows == dim else kv_rows // head_dim
    found.update(overrides)
    return dataclasses.replace(base, **found)


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
    """Reads a LlamaGen GPT checkpoint -> (config, params)."""
    state = read_state_dict(path)
    cfg = infer_gpt_config(state, preset, **overrides)
    return cfg, convert_gpt_state_dict(state, cfg)


def save_converted(out_dir: str | Path, cfg: GPTConfig, params: dict) -> None:
    """Orbax checkpoint of params at ``out_dir/params`` plus ``out_dir/config.json``."""
    import orbax.checkpoint as ocp

    out = Path(out_dir).resolve()
    out.mkdir(parents=True, exist_ok=True)
    (out / "config.json").write_text(json.dumps(dataclasses.asdict(cfg), indent=1))
    checkpointer = ocp.StandardCheckpointer()
    checkpointer.save(out / "params", jax.tree.map(jnp.asarray, params), force=True)
    checkpointer.wait_until_finished()


def load_converted(out_dir: str | Path) -> tuple[GPTConfig, dict]:
    """Reads what ``save_converted`` wrote -> (config, params)."""
    import orbax.checkpoint as ocp

    out = Path(out_dir).resolve()
    cfg = GPTConfig(**json.loads((out / "config.json").read_text()))
    return cfg, ocp.StandardCheckpointer().restore(out / "params")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--checkpoint", required=True, help=".pt/.pth/.bin/.safetensors file")
    parser.add_argument("--preset", default=None, choices=sorted(GPT_CONFIGS))
    parser.add_argument("--out", required=True, help="output directory")
    parser.add_argument(
        "--block-size", type=int, default=None, help="tokens per image (576 at 384px)"
    )
    parser.add_argument("--num-heads", type=int, default=None)
    args = parser.parse_args(argv)
    overrides = {
        k: v for k, v in (("block_size", args.block_size), ("num_heads", args.num_heads)) if v
    }
    cfg, params = load_llamagen_gpt(args.checkpoint, args.preset, **overrides)
    save_converted(args.out, cfg, params)
    count = sum(int(np.prod(v.shape)) for v in jax.tree.leaves(params))
    print(json.dumps({"out": str(args.out), "params": count, "config": dataclasses.asdict(cfg)}))


if __name__ == "__main__":
    main()
