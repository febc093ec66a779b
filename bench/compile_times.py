"""Benchmark: compile time of unscanned vs scanned transformer stacks (``scan_layers``).

Cases (abstract params: shapes only, nothing is initialised or run):

- ``var_d16_sampler``: VAR-d16's scale-wise sampler (batch 1, CFG, top-k 900, top-p 0.96),
  as ``bench/sample_var.py`` builds it;
- ``gpt_b_train_step``: one GPT-B train step (batch 2, 256 tokens, AdamW + EMA, one device), as
  ``bench/train_step.py`` builds it.

Each (case, layout) is timed in a fresh process (no warm jax caches) and prints one JSON record
with trace/lower and XLA compile seconds and the load average before and after.

Run: ``python bench/compile_times.py [var_d16_sampler|gpt_b_train_step|all] [--remat full]
[--layers N]``.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import flax.linen as nn  # noqa: E402
import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402

from bench.common import machine_info  # noqa: E402

CASES = ("var_d16_sampler", "gpt_b_train_step")


def _shapes(tree):
    return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), tree)


def var_d16_sampler(scan: bool, remat: str, layers: int | None = None) -> tuple:
    """-> (jitted sampler, abstract arguments)."""
    from jaxar.generators.var import VAR, var_config
    from jaxar.quantizers.multiscale import MultiScaleQuantizer
    from jaxar.sampling.scalewise import make_scalewise_sampler

    depth = {"depth": layers} if layers else {}
    cfg = var_config("VAR-d16", scan_layers=scan, remat_policy=remat, **depth)
    quantizer = MultiScaleQuantizer(cfg.vocab_size, cfg.code_dim, scales=cfg.patch_nums)
    size = cfg.patch_nums[-1]

    def init(rng):
        z = jnp.zeros((1, size, size, cfg.code_dim))
        inputs = jnp.zeros((1, cfg.seq_len - cfg.first_l, cfg.code_dim))
        q = quantizer.init(rng, z)["params"]
        v = VAR(cfg).init(rng, jnp.zeros((1,), jnp.int32), inputs)["params"]
        return nn.unbox({"var": v, "quantizer": q})

    params = jax.eval_shape(init, jax.random.key(0))
    sampler = make_scalewise_sampler(cfg, quantizer, cfg_scale=2.5, top_k=900, top_p=0.96)
    labels = jax.ShapeDtypeStruct((1,), jnp.int32)
    return sampler.jitted, (params, labels, jax.random.key(1)), None


def gpt_b_train_step(scan: bool, remat: str, layers: int | None = None) -> tuple:
    """-> (jitted train step, abstract arguments, mesh)."""
    from jaxar.generators.gpt import gpt_config, make_gpt_task
    from jaxar.sharding import (
        abstract_with_sharding,
        batch_sharding,
        logical_to_sharding,
        make_mesh,
        use_mesh,
    )
    from jaxar.train.optimizer import OptimizerConfig, make_optimizer
    from jaxar.train.state import _init_state
    from jaxar.train.step import jit_train_step, make_train_step

    depth = {"num_layers": layers} if layers else {}
    cfg = gpt_config("GPT-B", scan_layers=scan, remat_policy=remat, **depth)
    task = make_gpt_task(cfg)
    optimizer = make_optimizer(OptimizerConfig(learning_rate=1e-4, warmup_steps=0, total_steps=100))
    batch = {
        "codes": jax.ShapeDtypeStruct((2, cfg.block_size), jnp.int32),
        "label": jax.ShapeDtypeStruct((2,), jnp.int32),
    }
    mesh = make_mesh(devices=jax.devices()[:1])
    key = jax.random.key(0)
    with use_mesh(mesh):
        boxed = jax.eval_shape(lambda k, b: _init_state(task, optimizer, True, k, b), key, batch)
        shardings = logical_to_sharding(boxed, mesh)
    state = abstract_with_sharding(_shapes(nn.unbox(boxed)), shardings)
    step = jit_train_step(
        make_train_step(task.loss_fn, optimizer), mesh, shardings, batch_sharding(mesh)
    )
    return step.jitted, (state, batch, key), mesh


def measure(case: str, scan: bool, remat: str, layers: int | None = None) -> dict:
    load_before = os.getloadavg()
    start = time.perf_counter()
    jitted, args, mesh = globals()[case](scan, remat, layers)
    build_s = time.perf_counter() - start
    if mesh is not None:
        from jaxar.sharding import use_mesh

        with use_mesh(mesh):
            start = time.perf_counter()
            lowered = jitted.lower(*args)
    else:
        start = time.perf_counter()
        lowered = jitted.lower(*args)
    lower_s = time.perf_counter() - start
    start = time.perf_counter()
    lowered.compile()
    compile_s = time.perf_counter() - start
    return {
        "bench": "compile_times",
        "case": case,
        "scan_layers": scan,
        "remat_policy": remat,
        "layers": layers or "preset",
        "build_s": round(build_s, 2),
        "lower_s": round(lower_s, 2),  # tracing + lowering to StableHLO
        "compile_s": round(compile_s, 2),  # XLA
        "total_s": round(build_s + lower_s + compile_s, 2),
        "loadavg_before": [round(x, 2) for x in load_before],
        "loadavg_after": [round(x, 2) for x in os.getloadavg()],
        "backend": jax.default_backend(),
        "device": jax.devices()[0].device_kind,
        "jax": machine_info()["jax"],
        "date": time.strftime("%Y-%m-%d %H:%M:%S"),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("case", nargs="?", default="all", choices=(*CASES, "all"))
    parser.add_argument("--scan", type=int, choices=(0, 1), help="one layout (default: both)")
    parser.add_argument("--remat", default="none", help="remat_policy of the model")
    parser.add_argument("--layers", type=int, help="override the preset's depth")
    args = parser.parse_args()
    if args.case != "all" and args.scan is not None:
        record = measure(args.case, bool(args.scan), args.remat, args.layers)
        print(json.dumps(record), flush=True)
        return
    for case in CASES if args.case == "all" else (args.case,):
        for scan in (0, 1):  # a fresh process each: no shared compilation caches
            cmd = [sys.executable, __file__, case, "--scan", str(scan), "--remat", args.remat]
            cmd += ["--layers", str(args.layers)] if args.layers else []
            subprocess.run(cmd, check=True)


if __name__ == "__main__":
    main()
