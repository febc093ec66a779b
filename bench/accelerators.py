"""Training-free sampling accelerators (SJD, LANTERN, GSD, ZipAR) against the plain sampler on a
digits GPT: forward passes per image, wall-clock speed-up (after compile) and sample quality
(``jaxar.eval.digit_metrics``: class accuracy by the independent ``DigitJudge``, Fréchet
distance, precision, recall and within-class diversity against the held-out digits). Prints JSON.

With ``--workdir`` pointing at a generator trained by ``jaxar.recipes.generator`` (e.g. the
demo's ``runs/demo/generator``) that model and its tokenizer's codebook are used. Otherwise a
stand-in is trained here in about a minute: a k-means tokenizer of 4x4 patches (16x16 digits ->
4x4 codes, the codebook = cluster centres) and ``GPT-tiny`` on its codes.

    python bench/accelerators.py [--workdir runs/demo/generator]
"""

from __future__ import annotations

import argparse
import json
import time
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

from jaxar.data import load_digits
from jaxar.eval.digit_metrics import digits_yardstick, summary
from jaxar.generators.gpt import GPT, gpt_config, gpt_loss
from jaxar.sampling.autoregressive import make_sampler
from jaxar.sampling.gsd import make_gsd_sampler, sq_distance_quantile
from jaxar.sampling.lantern import make_lantern_sampler
from jaxar.sampling.speculative import make_sjd_sampler
from jaxar.sampling.zipar import make_zipar_sampler

PATCH, SIZE = 4, 16
PAPER_TARGETS = {
    "sjd": "~2x fewer passes (SJD paper)",
    "lantern": "~1.7x speed-up over SJD-style baselines (LANTERN paper)",
    "gsd": "~3.7x speed-up (GSD paper)",
    "zipar": "up to 91% fewer passes (ZipAR paper)",
}


def _patches(images: np.ndarray) -> np.ndarray:
    """uint8 [N, 16, 16, 1] -> float [N, 16 codes, 16 pixels] in [-1, 1], raster order."""
    x = images[..., 0].astype(np.float32) / 127.5 - 1.0
    g = SIZE // PATCH
    return x.reshape(-1, g, PATCH, g, PATCH).transpose(0, 1, 3, 2, 4).reshape(-1, g * g, PATCH**2)


def _unpatch(patches: np.ndarray) -> np.ndarray:
    """[N, 16, 16] in [-1, 1] -> uint8 [N, 16, 16, 1]."""
    g = SIZE // PATCH
    x = patches.reshape(-1, g, g, PATCH, PATCH).transpose(0, 1, 3, 2, 4).reshape(-1, SIZE, SIZE)
    return np.clip(np.round((x + 1.0) * 127.5), 0, 255).astype(np.uint8)[..., None]


def quick_model(vocab: int, steps: int, seed: int = 0) -> dict[str, Any]:
    """k-means patch tokenizer + GPT-tiny trained on its codes (the stand-in for the demo)."""
    from sklearn.cluster import KMeans

    images, labels = load_digits(image_size=SIZE, channels=1, split="train")
    patches = _patches(images)
    kmeans = KMeans(vocab, n_init=1, random_state=seed).fit(patches.reshape(-1, PATCH**2))
    codebook = kmeans.cluster_centers_.astype(np.float32)  # [V, 16]
    codes = kmeans.predict(patches.reshape(-1, PATCH**2)).reshape(len(images), -1)
    cfg = gpt_config("GPT-tiny", vocab_size=vocab)
    model = GPT(cfg)
    variables = model.init(jax.random.key(seed), jnp.asarray(codes[:2]), jnp.asarray(labels[:2]))
    params = nn.unbox(variables["params"])
    schedule = optax.warmup_cosine_decay_schedule(0.0, 3e-3, min(50, steps // 4), steps, 3e-4)
    opt = optax.adamw(schedule, weight_decay=0.01)
    state = opt.init(params)

    @jax.jit
    def step(params, state, batch, rng):
        grads, metrics = jax.grad(lambda p: gpt_loss(model, p, batch, rng), has_aux=True)(params)
        updates, state = opt.update(grads, state, params)
        return optax.apply_updates(params, updates), state, metrics

    rng = np.random.default_rng(seed)
    for i in range(steps):
        idx = rng.choice(len(codes), 64, replace=False)
        batch = {"codes": jnp.asarray(codes[idx]), "label": jnp.asarray(labels[idx])}
        params, state, metrics = step(params, state, batch, jax.random.key(i))
    decode = lambda flat: _unpatch(codebook[np.asarray(flat)])  # noqa: E731
    return {"cfg": cfg, "params": params, "codebook": codebook, "decode": decode,
            "train_loss": float(metrics["loss"]), "source": f"quick k-means tokenizer "
            f"(V={vocab}, 4x4 patches) + GPT-tiny, {steps} AdamW steps, batch 64"}  # fmt: skip


def demo_model(workdir: str) -> dict[str, Any]:
    """The coordinator's trained generator (``jaxar.recipes.generator.load_generator``)."""
    from jaxar.recipes.generator import load_generator

    gen = load_generator(workdir)
    codebook = np.asarray(gen.tokenizer.code_embeddings())

    def decode(flat):
        images = np.asarray(jax.device_get(gen.tokenizer.decode(flat)))
        return np.clip(np.round((images + 1.0) * 127.5), 0, 255).astype(np.uint8)

    return {"cfg": gen.model_config, "params": gen.params, "codebook": codebook,
            "decode": decode, "source": f"demo generator {workdir}"}  # fmt: skip


def samplers(m: dict[str, Any], window: int, sampling: dict[str, Any]) -> dict[str, Any]:
    cfg, codebook = m["cfg"], m["codebook"]
    threshold = sq_distance_quantile(codebook, 0.25)
    return {
        "plain": make_sampler(cfg, **sampling),
        f"sjd(window={window})": make_sjd_sampler(cfg, window=window, **sampling),
        f"lantern(k=8,delta=0.2,window={window})": make_lantern_sampler(
            cfg, codebook, k=8, delta=0.2, window=window, **sampling
        ),
        f"gsd(radius=7,gap=0.15,d2<=q25,window={window})": make_gsd_sampler(
            cfg, codebook, max_sq_distance=threshold, window=window, **sampling
        ),
        **{f"zipar(window={w})": make_zipar_sampler(cfg, window=w, **sampling) for w in (2, 1)},
    }


def measure(name: str, sampler, m, labels, yardstick, iters: int) -> dict[str, Any]:
    """Passes, wall clock (best of ``iters`` after compile) and quality of one sampler."""
    rng = jax.random.key(1)
    start = time.perf_counter()
    out = jax.block_until_ready(sampler(m["params"], labels, rng))  # compile + first run
    compile_s = time.perf_counter() - start
    times = []
    for i in range(iters):
        start = time.perf_counter()
        out = jax.block_until_ready(sampler(m["params"], labels, jax.random.key(2 + i)))
        times.append(time.perf_counter() - start)
    codes, passes = (out, None) if name == "plain" else out
    num = m["cfg"].block_size
    passes = np.full(len(labels), num) if passes is None else np.asarray(passes)
    images = m["decode"](np.asarray(codes))
    return {"passes_per_image": float(passes.mean()), "best_s": min(times),
            "compile_plus_first_s": compile_s,
            **summary(yardstick.score(images, np.asarray(labels)))}  # fmt: skip


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", default=None)
    parser.add_argument("--per-class", type=int, default=20)
    parser.add_argument("--steps", type=int, default=600)
    parser.add_argument("--vocab", type=int, default=128)
    parser.add_argument("--window", type=int, default=8)
    parser.add_argument("--cfg-scale", type=float, default=2.0)
    parser.add_argument("--temperature", type=float, default=1.0)
    parser.add_argument("--iters", type=int, default=3)
    args = parser.parse_args()
    start = time.perf_counter()
    m = demo_model(args.workdir) if args.workdir else quick_model(args.vocab, args.steps)
    train_s = time.perf_counter() - start
    yardstick = digits_yardstick(SIZE)
    labels = jnp.asarray(np.repeat(np.arange(10), args.per_class), jnp.int32)
    sampling = dict(temperature=args.temperature, cfg_scale=args.cfg_scale)
    rows = {}
    for name, sampler in samplers(m, args.window, sampling).items():
        rows[name] = measure(name, sampler, m, labels, yardstick, args.iters)
    plain = rows["plain"]
    for row in rows.values():
        row["pass_reduction"] = 1.0 - row["passes_per_image"] / plain["passes_per_image"]
        row["speedup_wall"] = plain["best_s"] / row["best_s"]
    print(json.dumps({
        "model": m["source"], "setup_s": train_s, "train_loss": m.get("train_loss"),
        "real_reference": summary(yardstick.reference(np.asarray(labels))),
        "batch": int(labels.shape[0]), "sampling": sampling, "backend": jax.default_backend(),
        "results": rows, "paper_targets": PAPER_TARGETS,
    }, indent=1))  # fmt: skip


if __name__ == "__main__":
    main()
