"""Benchmark MAR sampling (random weights): images/s, the floor, and how the figure was made.

    .venv/bin/python bench/sample_mar.py --preset MAR-B --batch 1 64

MAR's sampler is ``num_iter`` masked-AR steps; each step is one transformer pass over the
whole sequence (with CFG: 2B rows) and one diffusion-head denoising loop of
``num_sampling_steps`` steps over the tokens revealed in that step (``max_count`` rows per
image, see ``jaxar.sampling.mar``). Both parts have the same shapes at every step, so

    seconds per image = num_iter * (t_pass + t_loop) / B

with ``t_pass`` one transformer pass and ``t_loop`` one full guided diffusion loop, each timed
at the sampler's exact shapes. On a CPU a whole 64-step MAR-B image takes minutes, so the
parts are timed separately: ``t_loop`` from ``--loop-steps`` denoising steps (the loop is the
same step repeated, so it scales by ``num_sampling_steps / loop_steps``), and at large batches
``t_pass`` from encoder+decoder depths 1 and 2 extrapolated linearly to the preset's depth
(``--depth-fit``). The composition is checked against the real jitted sampler at a small
setting (``--check-iter`` steps of ``--check-steps`` denoising steps, batch 1, full depth):
``check.measured_over_predicted`` is that ratio. The floor is FLOPs over the measured f32
matmul rate or the weights read (once per pass and per denoising step, shared by the batch)
over the read bandwidth, whichever is larger, so ``fraction_of_floor`` says
how far off we are.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import flax.linen as nn  # noqa: E402
import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402

from bench.common import machine_info, matmul_ceiling, print_json, read_bandwidth, time_fn  # noqa: E402
from jaxar.generators.mar import MAR, make_mar_task, mar_config  # noqa: E402
from jaxar.layers.diffusion import guided_model_fn, make_diffusion, sample_loop  # noqa: E402
from jaxar.sampling.mar import make_mar_sampler, reveal_schedule  # noqa: E402


def init_params(cfg):
    """Random params of ``MAR(cfg)`` (the task's init: transformer and diffusion head)."""
    task = make_mar_task(cfg)
    latents = jnp.zeros((1, cfg.latent_grid**2, cfg.latent_dim))
    batch = {"codes": latents, "label": jnp.zeros((1,), jnp.int32)}
    init = jax.jit(lambda rng: task.init(rng, batch)[0])
    return nn.unbox(init(jax.random.key(0)))


def split_count(params) -> tuple[int, int]:
    """(transformer params, diffusion-head params)."""
    head = sum(x.size for x in jax.tree.leaves(params["diffloss"]))
    return sum(x.size for x in jax.tree.leaves(params)) - head, head


def pass_seconds(cfg, params, rows: int, iters: int) -> float:
    """One sampler transformer pass over ``rows`` sequences (all tokens, half unknown)."""
    model = MAR(cfg)
    tokens = jax.random.normal(jax.random.key(1), (rows, cfg.seq_len, cfg.token_dim))
    labels = jnp.arange(rows, dtype=jnp.int32) % cfg.num_classes
    mask = jnp.arange(cfg.seq_len)[None, :] < cfg.seq_len // 2
    mask = jnp.broadcast_to(mask, (rows, cfg.seq_len))
    drop = jnp.arange(rows) >= rows // 2
    fn = jax.jit(lambda p, t: model.apply({"params": p}, t, labels, mask, force_drop=drop))
    return time_fn(fn, params, tokens, warmup=1, iters=iters)["median_s"]


def loop_seconds(cfg, params, batch: int, width: int, steps: int, cfg_scale: float, iters: int):
    """One guided diffusion loop of ``steps`` steps over ``batch * width`` tokens."""
    model = MAR(cfg)
    n = batch * width
    diffusion = make_diffusion(cfg.diffusion_steps, cfg.noise_schedule, respacing=str(steps))
    keys = jax.random.split(jax.random.key(2), 3)
    c = jax.random.normal(keys[0], (n, cfg.decoder_dim))
    c_null = jax.random.normal(keys[1], (n, cfg.decoder_dim))
    noise = jax.random.normal(keys[2], (n, cfg.token_dim))

    def run(p, noise):
        head = lambda x, t, c: model.apply({"params": p}, x, t, c, method=MAR.head)  # noqa: E731
        return sample_loop(diffusion, guided_model_fn(head, c, c_null, cfg_scale), noise,
                           jax.random.key(3))  # fmt: skip

    return time_fn(jax.jit(run), params, noise, warmup=1, iters=iters)["median_s"]


def flops_per_image(cfg, transformer: int, head: int, num_iter: int, steps: int, width: int):
    """Matmul FLOPs of one guided image: passes over 2 rows of (buffer + L) tokens (+ the
    attention scores and mixes) and head evaluations on 2 * width rows per denoising step."""
    tokens = cfg.buffer_size + cfg.seq_len
    attention = 4 * tokens * tokens * (cfg.encoder_dim * cfg.encoder_depth
                                       + cfg.decoder_dim * cfg.decoder_depth)  # fmt: skip
    per_pass = 2 * (2 * transformer * tokens + attention)
    per_loop = 2 * (2 * head * width) * steps
    return num_iter * (per_pass + per_loop), per_pass, per_loop


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--preset", default="MAR-B")
    parser.add_argument("--batch", type=int, nargs="+", default=[1, 64])
    parser.add_argument("--num-iter", type=int, default=64)
    parser.add_argument("--steps", type=int, default=100, help="diffusion sampling steps")
    parser.add_argument("--cfg", type=float, default=2.9)
    parser.add_argument("--loop-steps", type=int, default=10, help="denoising steps timed")
    parser.add_argument("--depth-fit", type=int, default=8, help="batches >= this: depth fit")
    parser.add_argument("--check-iter", type=int, default=4)
    parser.add_argument("--check-steps", type=int, default=4)
    parser.add_argument("--iters", type=int, default=3)
    args = parser.parse_args()

    cfg = mar_config(args.preset, scan_layers=False)
    if cfg.encoder_depth != cfg.decoder_depth:
        raise SystemExit("the depth fit assumes equal encoder and decoder depths")
    params = init_params(cfg)
    transformer, head = split_count(params)
    ceiling = matmul_ceiling()["matmul_flops_per_s"]
    read = read_bandwidth()["read_bandwidth_bytes_per_s"]
    width = reveal_schedule(cfg.seq_len, args.num_iter).max_count
    common = {"bench": "sample_mar", "preset": args.preset, "num_iter": args.num_iter,
              "num_sampling_steps": args.steps, "cfg_scale": args.cfg, "dtype": "float32",
              "params_transformer": transformer, "params_head": head,
              "head_rows_per_image_and_step": width, "matmul_flops_per_s": ceiling,
              "read_bandwidth_bytes_per_s": read, "machine": machine_info(),
              "date": time.strftime("%Y-%m-%d")}  # fmt: skip

    # The composition check: the real sampler against its predicted time, batch 1.
    check_width = reveal_schedule(cfg.seq_len, args.check_iter).max_count
    sampler = make_mar_sampler(cfg, num_iter=args.check_iter, num_sampling_steps=args.check_steps,
                               cfg_scale=args.cfg)  # fmt: skip
    labels = jnp.zeros((1,), jnp.int32)
    measured = time_fn(lambda: sampler.jitted(params, labels, jax.random.key(4)),
                       warmup=1, iters=args.iters)["median_s"]  # fmt: skip
    t_pass_1 = pass_seconds(cfg, params, 2, args.iters)
    t_check_loop = loop_seconds(cfg, params, 1, check_width, args.check_steps, args.cfg, args.iters)
    predicted = args.check_iter * (t_pass_1 + t_check_loop)
    check = {"num_iter": args.check_iter, "num_sampling_steps": args.check_steps,
             "measured_s": measured, "predicted_s": predicted,
             "measured_over_predicted": measured / predicted}  # fmt: skip

    for batch in args.batch:
        if batch == 1:
            t_pass, how = t_pass_1, "timed at full depth"
        elif batch < args.depth_fit:
            t_pass, how = pass_seconds(cfg, params, 2 * batch, args.iters), "timed at full depth"
        else:
            times = []
            for depth in (1, 2):
                small = dataclasses.replace(cfg, encoder_depth=depth, decoder_depth=depth)
                times.append(pass_seconds(small, init_params(small), 2 * batch, args.iters))
            t_pass = times[0] + (times[1] - times[0]) * (cfg.encoder_depth - 1)
            how = (f"depth 1 / 2 timed ({times[0]:.3f} s / {times[1]:.3f} s), linear to "
                   f"depth {cfg.encoder_depth}")  # fmt: skip
        t_loop = loop_seconds(cfg, params, batch, width, args.loop_steps, args.cfg, args.iters)
        t_loop *= args.steps / args.loop_steps
        per_image = args.num_iter * (t_pass + t_loop) / batch
        flops, per_pass, per_loop = flops_per_image(cfg, transformer, head, args.num_iter,
                                                    args.steps, width)  # fmt: skip
        weight_bytes = args.num_iter * 4 * (transformer + head * args.steps) / batch
        floor = max(flops / ceiling, weight_bytes / read)
        print_json({
            **common, "batch": batch, "seconds_per_image": per_image,
            "images_per_s": 1.0 / per_image, "pass_s": t_pass, "pass_timing": how,
            "head_loop_s": t_loop, "transformer_share": t_pass / (t_pass + t_loop),
            "gflop_per_image": flops / 1e9, "floor_seconds_per_image": floor,
            "fraction_of_floor": floor / per_image, "achieved_flops_per_s": flops / per_image,
            "check": check,
        })  # fmt: skip


if __name__ == "__main__":
    main()
