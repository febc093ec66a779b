"""Benchmark VAR scale-wise sampling (random weights): images/s, compile time, forward passes.

    .venv/bin/python bench/sample_var.py --preset VAR-d16 --batch 1 8

Prints one JSON line per batch size. ``forward_passes_per_image`` is the number of scales
(one cached transformer pass per scale; with CFG each pass runs 2B rows).
"""

from __future__ import annotations

import argparse
import json
import platform
import time

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxar.generators.var import VAR, var_config
from jaxar.quantizers.multiscale import MultiScaleQuantizer
from jaxar.sampling.scalewise import make_scalewise_sampler


def build(preset: str, **overrides):
    """``(config, quantizer, random params {"var", "quantizer"})`` of a VAR preset."""
    cfg = var_config(preset, **overrides)
    quantizer = MultiScaleQuantizer(
        codebook_size=cfg.vocab_size, code_dim=cfg.code_dim, scales=cfg.patch_nums
    )
    size = cfg.patch_nums[-1]

    @jax.jit
    def init(rng):
        z = jnp.zeros((1, size, size, cfg.code_dim))
        inputs = jnp.zeros((1, cfg.seq_len - cfg.first_l, cfg.code_dim))
        q = quantizer.init(rng, z)["params"]
        v = VAR(cfg).init(rng, jnp.zeros((1,), jnp.int32), inputs)["params"]
        return {"var": v, "quantizer": q}

    params = nn.unbox(init(jax.random.key(0)))
    return cfg, quantizer, params


def scale_costs(cfg, rows: int, param_count: int, param_bytes: int = 4) -> list[tuple]:
    """(bytes, FLOPs) of each scale's cached forward pass for ``rows`` sequences: every pass
    reads all weights and the KV cache of the scales so far (``cfg.dtype``); the adaLN
    linears act once per row, the other matmuls once per token; the quantizer's small
    convolutions and resizes are left out."""
    width, depth = cfg.embed_dim, cfg.depth
    hidden = round(width * cfg.mlp_ratio)
    per_token = depth * (4 * width * width + 2 * width * hidden) + width * cfg.vocab_size
    per_row = (1 if cfg.shared_aln else depth) * 6 * width * width + 2 * width * width
    cache_value_bytes = jnp.dtype(cfg.dtype).itemsize
    costs, seen = [], 0
    for k, s in enumerate(cfg.patch_nums):
        new = s * s
        seen += new
        token_params = per_token + (cfg.code_dim * width if k else 0)  # word_embed from scale 1
        attn = 2 * 2 * rows * depth * new * seen * width  # scores + mix over the cache so far
        cache = cache_value_bytes * rows * depth * 2 * width * seen
        flops = 2 * rows * (new * token_params + per_row) + attn
        costs.append((param_bytes * param_count + cache, flops))
    return costs


def bench(preset, cfg, quantizer, params, batch: int, cfg_scale: float, repeats: int) -> dict:
    sampler = make_scalewise_sampler(cfg, quantizer, cfg_scale=cfg_scale, top_k=900, top_p=0.96)
    labels = jnp.arange(batch, dtype=jnp.int32) % cfg.num_classes
    rng = jax.random.key(1)
    start = time.perf_counter()
    compiled = sampler.jitted.lower(params, labels, rng).compile()
    compile_s = time.perf_counter() - start
    jax.block_until_ready(compiled(params, labels, rng))  # warm-up
    start = time.perf_counter()
    for i in range(repeats):
        jax.block_until_ready(compiled(params, labels, jax.random.fold_in(rng, i)))
    seconds = (time.perf_counter() - start) / repeats
    num_params = sum(x.size for x in jax.tree.leaves(params["var"]))
    return {
        "bench": "sample_var",
        "preset": preset,
        "params_M": round(num_params / 1e6, 1),
        "batch": batch,
        "cfg_scale": cfg_scale,
        "tokens_per_image": cfg.seq_len,
        "forward_passes_per_image": cfg.num_scales,
        "compile_s": round(compile_s, 2),
        "seconds_per_batch": round(seconds, 3),
        "images_per_s": round(batch / seconds, 3),
        "device": jax.devices()[0].device_kind,
        "num_devices": jax.device_count(),
        "machine": platform.machine(),
        "date": time.strftime("%Y-%m-%d"),
    }


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--preset", default="VAR-d16")
    parser.add_argument("--batch", type=int, nargs="+", default=[1, 8])
    parser.add_argument("--cfg", type=float, default=1.5, help="VAR's cfg (cfg_scale = 1 + cfg)")
    parser.add_argument("--repeats", type=int, default=1)
    args = parser.parse_args()
    cfg, quantizer, params = build(args.preset)
    for b in args.batch:
        result = bench(args.preset, cfg, quantizer, params, b, 1.0 + args.cfg, args.repeats)
        print(json.dumps(result), flush=True)
