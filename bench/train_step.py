"""Benchmark: one jitted train step of a LlamaGen-style transformer on this machine.

Width 512, 8 layers, sequence 256 (class token + 255 codes), vocab 4096, small batch, float32,
on one device. Prints JSON: steps/s, model FLOP/s (6 * params * tokens + attention) and XLA's
own FLOP count, against this machine's measured f32 matmul ceiling.

Run: ``python bench/train_step.py [--batch 4] [--iters 3] [--layers 8] [--dim 512]``.
"""

from __future__ import annotations

import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax  # noqa: E402
import numpy as np  # noqa: E402

from bench.common import machine_info, matmul_ceiling, memory_bandwidth, print_json, time_fn  # noqa: E402
from jaxar.data.global_batch import host_to_global  # noqa: E402
from jaxar.generators.gpt import GPTConfig, make_gpt_task  # noqa: E402
from jaxar.sharding import (
    batch_sharding,  # noqa: E402
    make_mesh,  # noqa: E402
)
from jaxar.train.optimizer import OptimizerConfig, make_optimizer  # noqa: E402
from jaxar.train.state import create_train_state  # noqa: E402
from jaxar.train.step import jit_train_step, make_train_step  # noqa: E402


def model_config(layers: int = 8, dim: int = 512) -> GPTConfig:
    return GPTConfig(
        vocab_size=4096, num_layers=layers, dim=dim, num_heads=8, num_classes=10, block_size=256,
        token_dropout=0.0, resid_dropout=0.0, ffn_dropout=0.0, class_dropout_prob=0.0,
    )  # fmt: skip


def model_flops_per_step(params, cfg: GPTConfig, batch: int) -> float:
    """6 * (matmul params) * tokens + attention scores/values (fwd + bwd)."""
    leaves = jax.tree_util.tree_flatten_with_path(params)[0]
    embedding = sum(x.size for path, x in leaves if "embed" in jax.tree_util.keystr(path).lower())
    matmul_params = sum(x.size for _, x in leaves) - embedding
    tokens = batch * cfg.block_size
    attention = 12.0 * cfg.num_layers * batch * cfg.block_size**2 * cfg.dim
    return 6.0 * matmul_params * tokens + attention


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--iters", type=int, default=3)
    parser.add_argument("--layers", type=int, default=8, help="depth (smaller: a quick run)")
    parser.add_argument("--dim", type=int, default=512, help="width, a multiple of 32")
    args = parser.parse_args()

    cfg = model_config(args.layers, args.dim)
    task = make_gpt_task(cfg)
    rng = np.random.default_rng(0)
    batch = {
        "codes": rng.integers(0, cfg.vocab_size, (args.batch, cfg.block_size), dtype=np.int32),
        "label": rng.integers(0, cfg.num_classes, (args.batch,), dtype=np.int32),
    }
    mesh = make_mesh(devices=jax.devices()[:1])
    optimizer = make_optimizer(OptimizerConfig(learning_rate=1e-4, warmup_steps=0, total_steps=100))
    state, shardings = create_train_state(task, optimizer, jax.random.key(0), batch, mesh)
    step = jit_train_step(
        make_train_step(task.loss_fn, optimizer, ema_decay=0.999),
        mesh,
        shardings,
        batch_sharding(mesh),
    )
    global_batch = host_to_global(batch, mesh)
    key = jax.random.key(1)
    compiled = step.jitted.lower(state, global_batch, key).compile()
    cost = compiled.cost_analysis()
    cost = cost[0] if isinstance(cost, list) else cost
    xla_flops = float(cost.get("flops", 0.0)) if cost else 0.0

    holder = {"state": state}

    def run_step():
        holder["state"], metrics = step(holder["state"], global_batch, key)
        return metrics["loss"]

    timing = time_fn(run_step, warmup=1, iters=args.iters)
    flops = model_flops_per_step(state.params, cfg, args.batch)
    ceiling = matmul_ceiling()
    bandwidth = memory_bandwidth()
    record = {
        "bench": "train_step",
        "model": {"dim": cfg.dim, "layers": cfg.num_layers, "seq": cfg.block_size,
                  "vocab": cfg.vocab_size, "batch": args.batch,
                  "params": int(sum(x.size for x in jax.tree.leaves(state.params)))},
        "step_s_median": timing["median_s"],
        "step_s_best": timing["best_s"],
        "steps_per_s": 1.0 / timing["median_s"],
        "tokens_per_s": args.batch * cfg.block_size / timing["median_s"],
        "model_flops_per_step": flops,
        "xla_flops_per_step": xla_flops,
        "achieved_model_flops_per_s": flops / timing["median_s"],
        **ceiling,
        **bandwidth,
        "fraction_of_matmul_ceiling": flops / timing["median_s"] / ceiling["matmul_flops_per_s"],
        "machine": machine_info(),
    }  # fmt: skip
    print_json(record)


if __name__ == "__main__":
    main()
