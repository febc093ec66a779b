"""Load released VAR checkpoints (``var_d16.pth`` ...) and the quantizer of VAR's VQVAE
(``vae_ch160v4096z32.pth``) into jaxar params.

Files: ``.pth``/``.pt`` (``torch.load(weights_only=True)``; torch is the optional ``convert``
extra, imported only when needed) or ``.safetensors``. Name mapping (torch -> jaxar):

- ``class_emb.weight`` -> ``class_emb/embedding``; ``lvl_embed.weight`` -> ``lvl_embed/embedding``
- ``pos_start`` [1, first_l, C] / ``pos_1LC`` [1, L, C] -> ``pos_start`` / ``pos_1LC`` (squeezed)
- ``word_embed``, ``shared_ada_lin.1``, ``head``, ``head_nm.ada_lin.1`` and per block
  ``blocks.N.ada_lin.1``, ``ffn.fc1``, ``ffn.fc2``: Linear ``weight`` [out, in] -> ``kernel``
  [in, out]; ``blocks.N.attn.mat_qkv.weight`` [3C, C] -> ``attn/{query,key,value}/kernel``
  [C, H, Dh]; ``attn.q_bias`` / ``v_bias`` [C] -> [H, Dh]; ``attn.proj`` -> ``attn/proj/kernel``
  [H, Dh, C]; ``attn.scale_mul_1H11`` -> ``attn/scale_mul`` [H]; ``ada_gss`` -> [6, C].
- Buffers (``lvl_1L``, ``attn_bias_for_masking``, ``attn.zero_k_bias``) are dropped.
- VQVAE quantizer: ``quantize.embedding.weight`` -> ``codebook``;
  ``quantize.quant_resi.qresi_ls.N`` (3x3 conv, OIHW) -> ``phi_N`` (HWIO);
  ``quantize.ema_vocab_hit_SV`` is dropped. The result is a ``MultiScaleQuantizer``'s params.

The VQVAE's encoder/decoder are not converted here: VAR's ``basic_vae`` layout (3x3
``quant_conv``/``post_quant_conv``, ``down.N.block.M`` naming, fused ``qkv`` attention convs)
differs from ``jaxar.tokenizers.Tokenizer``.
"""

from __future__ import annotations

import re
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from flax import traverse_util

from jaxar.convert.llamagen_vq import read_state_dict
from jaxar.generators.var import VAR, VARConfig
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
