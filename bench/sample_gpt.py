"""Benchmark: LlamaGen GPT sampling (prefill + one lax.scan with an on-device KV cache).

Random weights, CFG (batch doubled), at batch 1 and 8 by default. Prints JSON: compile time,
tokens/s and images/s after compile, and per-token floors from measured ceilings:
  memory floor  = (weight bytes + KV cache bytes) / measured bandwidth  (every step reads all)
  compute floor = FLOPs per step / measured matmul rate

  .venv/bin/python bench/sample_gpt.py                      # GPT-B, 256 tokens
  .venv/bin/python bench/sample_gpt.py --layers 2 --tokens 64 --batch 1
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import (  # noqa: E402
    machine_info,
    matmul_ceiling,
    memory_bandwidth,
    print_json,
    read_bandwidth,
)

from jaxar.generators.gpt import GPT, gpt_config  # noqa: E402
from jaxar.sampling.autoregressive import make_sampler  # noqa: E402


def step_costs(
    cfg, rows: int, tokens: int, param_count: int, param_bytes: int = 4
) -> dict[str, float]:
    """Average bytes and FLOPs of one decode step for ``rows`` sequences (the KV cache is
    ``cfg.dtype``, the weights ``param_bytes`` per value)."""
    cache_len = cfg.cls_token_num + tokens
    kv_width = 2 * cfg.kv_heads * cfg.head_dim  # k and v per token per layer
    cache_value_bytes = jnp.dtype(cfg.dtype).itemsize
    cache_bytes = cache_value_bytes * rows * cfg.num_layers * cache_len * kv_width  # all read
    embed = cfg.vocab_size * cfg.dim + (cfg.num_classes + 1) * cfg.dim  # gathers, not matmuls
    attn_flops = 2 * 2 * rows * cfg.num_layers * cache_len * cfg.dim  # scores + mix (full cache)
    return {
        "bytes_per_step": param_bytes * param_count + cache_bytes,
        "flops_per_step": 2 * rows * (param_count - embed) + attn_flops,
    }


def build(preset: str, **overrides):
    """``(config, random params, parameter count)`` of a GPT preset with fields replaced."""
    cfg = gpt_config(preset, **overrides)
    codes, labels = jnp.zeros((1, cfg.block_size), jnp.int32), jnp.zeros((1,), jnp.int32)
    params = jax.jit(lambda: GPT(cfg).init(jax.random.key(0), codes, labels)["params"])()
    params = jax.tree.map(lambda b: b.value, params, is_leaf=lambda b: hasattr(b, "names"))
    count = sum(int(np.prod(x.shape)) for x in jax.tree.leaves(params))
    return cfg, params, count


def bench_batch(cfg, params, batch: int, tokens: int, cfg_scale: float, top_k: int) -> dict:
    sampler = make_sampler(cfg, cfg_scale=cfg_scale, top_k=top_k, num_tokens=tokens)
    labels = jnp.arange(batch, dtype=jnp.int32) % cfg.num_classes
    rng = jax.random.key(0)
    start = time.perf_counter()
    compiled = sampler.jitted.lower(params, labels, rng).compile()
    compile_s = time.perf_counter() - start
    jax.block_until_ready(compiled(params, labels, rng))  # warm
    start = time.perf_counter()
    codes = jax.block_until_ready(compiled(params, labels, jax.random.key(1)))
    run_s = time.perf_counter() - start
    assert codes.shape == (batch, tokens)
    return {
        "batch": batch,
        "rows_with_cfg": 2 * batch if cfg_scale != 1.0 else batch,
        "compile_s": round(compile_s, 2),
        "run_s": round(run_s, 3),
        "s_per_step": run_s / tokens,
        "tokens_per_s": batch * tokens / run_s,
        "images_per_s": batch / run_s * (tokens / cfg.block_size),
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--preset", default="GPT-B")
    parser.add_argument("--layers", type=int, default=None, help="override depth")
    parser.add_argument("--tokens", type=int, default=256)
    parser.add_argument("--batch", type=int, nargs="+", default=[1, 8])
    parser.add_argument("--cfg-scale", type=float, default=4.0)
    parser.add_argument("--top-k", type=int, default=2000)  # LlamaGen's sample_c2i default
    args = parser.parse_args()
    grid = int(np.ceil(np.sqrt(args.tokens)))
    overrides = {"block_size": grid * grid}
    if args.layers:
        overrides["num_layers"] = args.layers
    cfg, params, count = build(args.preset, **overrides)
    ceilings = {**matmul_ceiling(), **memory_bandwidth(), **read_bandwidth()}
    bandwidth = max(ceilings["bandwidth_bytes_per_s"], ceilings["read_bandwidth_bytes_per_s"])
    results = []
    for batch in args.batch:
        row = bench_batch(cfg, params, batch, args.tokens, args.cfg_scale, args.top_k)
        costs = step_costs(cfg, row["rows_with_cfg"], args.tokens, count)
        row["floor_memory_s_per_step"] = costs["bytes_per_step"] / bandwidth
        row["floor_compute_s_per_step"] = costs["flops_per_step"] / ceilings["matmul_flops_per_s"]
        floor = max(row["floor_memory_s_per_step"], row["floor_compute_s_per_step"])
        row["floor_fraction"] = floor / row["s_per_step"]
        results.append({**row, **costs})
    print_json({
        "bench": "sample_gpt", "preset": args.preset, "layers": cfg.num_layers,
        "params": count, "tokens": args.tokens, "cfg_scale": args.cfg_scale, "top_k": args.top_k,
        "ceilings": ceilings, "results": results, "machine": machine_info(),
        "date": time.strftime("%Y-%m-%d"),
    })  # fmt: skip


if __name__ == "__main__":
    main()
