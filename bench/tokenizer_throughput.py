"""Benchmark: conv tokenizer encode / decode throughput (images/s) against its compute floor.

Random weights of a ``jaxar.tokenizers.autoencoder`` preset (default LlamaGen VQ-16: ch 128,
ch_mult (1, 1, 2, 2, 4), 16384 x 8 codebook) at 256x256, one device, float32. Each direction is
one jitted call (``encode_to_codes`` / ``decode_codes``); its FLOPs come from XLA's
``cost_analysis`` and the floor is those FLOPs at the measured f32 matmul rate
(``bench/common.py``). Prints one JSON document.

  .venv/bin/python bench/tokenizer_throughput.py                       # vq16, 256x256, batch 1
  .venv/bin/python bench/tokenizer_throughput.py --image_size 64       # quick
  .venv/bin/python bench/tokenizer_throughput.py --preset digits_vq --image_size 16 --batch 8
"""

from __future__ import annotations

import argparse
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import flax.linen as nn  # noqa: E402
import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

from bench.common import machine_info, matmul_ceiling, print_json, time_fn  # noqa: E402
from jaxar.tokenizers.autoencoder import PRESETS, Tokenizer, get_preset  # noqa: E402


def compiled_flops(compiled) -> float:
    """FLOPs of one call of a compiled XLA executable (0.0 when XLA does not say)."""
    cost = compiled.cost_analysis()
    cost = cost[0] if isinstance(cost, list) else cost
    return float(cost.get("flops", 0.0)) if cost else 0.0


def init_variables(model: Tokenizer, image_size: int):
    """Random variables; initialised on the smallest image the config accepts (conv weights do
    not depend on the image size), except msvq, whose scales fix the size."""
    cfg = model.config
    size = image_size if cfg.quantizer == "msvq" else cfg.downsample_factor
    images = jnp.zeros((1, size, size, cfg.image_channels), jnp.float32)
    return jax.jit(lambda key: nn.unbox(model.init(key, images)))(jax.random.key(0))


def measure(fn, args: tuple, iters: int, batch: int, matmul_rate: float) -> tuple[object, dict]:
    """Compiles ``fn`` for ``args`` and times it; returns (the output of one call, images/s
    paired with the compute floor)."""
    start = time.perf_counter()
    compiled = jax.jit(fn).lower(*args).compile()
    compile_s = time.perf_counter() - start
    flops = compiled_flops(compiled)
    out = compiled(*args)
    timing = time_fn(compiled, *args, warmup=0, iters=iters)
    floor_s = flops / matmul_rate
    return out, {
        "compile_s": round(compile_s, 2),
        "s_per_batch_median": timing["median_s"],
        "s_per_batch_best": timing["best_s"],
        "images_per_s": batch / timing["median_s"],
        "xla_flops_per_batch": flops,
        "xla_gflops_per_image": flops / batch / 1e9,
        "floor_s_per_batch": floor_s,
        "floor_images_per_s": batch / floor_s if floor_s else None,
        "floor_fraction": floor_s / timing["median_s"],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="vq16", choices=sorted(PRESETS))
    parser.add_argument("--image_size", type=int, default=256)
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--iters", type=int, default=3)
    parser.add_argument("--matmul_n", type=int, default=2048, help="size of the ceiling probe")
    args = parser.parse_args()
    if args.batch < 1 or args.iters < 1:
        raise ValueError(f"--batch and --iters must be >= 1, got {args.batch}, {args.iters}")
    cfg = get_preset(args.preset)
    f = cfg.downsample_factor
    if args.image_size % f:
        raise ValueError(f"--image_size {args.image_size} is not a multiple of {f} ({args.preset})")

    model = Tokenizer(cfg)
    variables = init_variables(model, args.image_size)
    rng = np.random.default_rng(0)
    shape = (args.batch, args.image_size, args.image_size, cfg.image_channels)
    images = jnp.asarray(rng.uniform(-1.0, 1.0, shape), jnp.float32)

    def encode(v, x):  # [B, S, S, C] -> codes
        return model.apply(v, x, method=Tokenizer.encode_to_codes)

    def decode(v, codes):  # codes -> [B, S, S, C]
        return model.apply(v, codes, method=Tokenizer.decode_codes)

    ceiling = matmul_ceiling(n=args.matmul_n)
    rate = ceiling["matmul_flops_per_s"]
    codes, encoded = measure(encode, (variables, images), args.iters, args.batch, rate)
    _, decoded = measure(decode, (variables, codes), args.iters, args.batch, rate)
    params = sum(int(np.prod(x.shape)) for x in jax.tree.leaves(variables))
    print_json({
        "bench": "tokenizer_throughput", "preset": args.preset, "image_size": args.image_size,
        "batch": args.batch, "downsample_factor": f, "params": params,
        "code_shape": list(jax.tree.leaves(codes)[0].shape),
        "encode": encoded, "decode": decoded,
        "ceiling": ceiling, "machine": machine_info(), "date": time.strftime("%Y-%m-%d"),
    })  # fmt: skip


if __name__ == "__main__":
    main()
