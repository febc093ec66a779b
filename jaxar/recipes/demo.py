"""The end-to-end demo on the bundled digits: tokenizer -> GPT -> CFG samples -> judged quality.

Steps (each resumes from its checkpoints when run again):
1. train a small VQ tokenizer on the 16x16 digits (``jaxar/configs/tokenizer_digits.py``);
2. measure its held-out PSNR / SSIM / codebook usage;
3. encode the training digits, train a small LlamaGen GPT (``configs/gpt_digits.py``);
4. sample every class with classifier-free guidance, write a labelled grid PNG;
5. judge the samples against held-out real digits: class accuracy by an independent
   scikit-learn classifier, Fréchet distance, precision / recall and within-class diversity in
   the hidden features of a scikit-learn MLP (``jaxar.eval.digit_metrics``).
"""

from __future__ import annotations

import json
import os
import time
from typing import Any

import jax
import numpy as np

from jaxar.eval.digit_metrics import digits_yardstick, summary
from jaxar.recipes.cli import PACKAGED_CONFIGS, load_config
from jaxar.recipes.generator import load_generator, train_generator
from jaxar.recipes.images import image_arrays
from jaxar.recipes.tokenizer import evaluate_tokenizer, load_tokenizer, train_tokenizer
from jaxar.train.images import save_image_grid


def _config(name: str, steps: int | None, **fields: Any):
    config = load_config(
        os.path.join(PACKAGED_CONFIGS, name)
    )  # the packaged config (works from a wheel)
    if steps is not None:
        config.train.num_steps = steps
        config.train.optimizer.total_steps = steps
        config.train.optimizer.warmup_steps = min(config.train.optimizer.warmup_steps, steps // 4)
        config.train.checkpoint_every = steps
        config.train.sample_every = steps
    for key, value in fields.items():
        config[key] = value
    return config


def judge_samples(images: np.ndarray, labels: np.ndarray) -> dict[str, Any]:
    """Every digits figure of uint8 samples [N,H,W,C] conditioned on labels [N].

    Class accuracy (an SVM judge), Fréchet distance, precision, recall and within-class
    diversity in a feature space fitted on the real training digits, against the held-out
    digits (``jaxar.eval.digit_metrics``); ``real_reference`` holds the same figures for real
    training digits with the samples' class counts (what a perfect generator would score).
    """
    yardstick = digits_yardstick(images.shape[1])
    reference = summary(yardstick.reference(labels))
    return {**yardstick.score(images, labels), "real_reference": reference}


def upscale(images: np.ndarray, factor: int) -> np.ndarray:
    """Nearest-neighbour upscaling of uint8 [N,H,W,C] so small digits are visible."""
    return images.repeat(factor, axis=1).repeat(factor, axis=2)


def judge_generator(
    workdir: str,
    samples_per_class: int = 10,
    seed: int = 0,
    grid_path: str | None = None,
    **sampling: Any,
) -> dict[str, Any]:
    """Samples every class of a digits generator and judges the samples' class accuracy.

    Optionally writes a labelled grid (one column per class, upscaled 4x) to ``grid_path``.
    """
    generator = load_generator(workdir)
    num_classes = generator.model_config.num_classes
    labels = np.repeat(np.arange(num_classes, dtype=np.int32), samples_per_class)
    sampler = generator.sampler(**sampling)
    out, seconds = sampler.timed(generator.params, labels, jax.random.key(seed))
    images = out.images
    report = {
        "family": generator.family.name,
        "sampling": sampler.settings,
        "samples": judge_samples(images, labels),
        "sampling_seconds": seconds["sample_s"],
        "compile_seconds": seconds["compile_s"],
        "forward_passes_per_image": float(out.forward_passes.mean()),
    }
    if grid_path is not None:
        order = np.argsort(np.tile(np.arange(samples_per_class), num_classes), kind="stable")
        save_image_grid(
            upscale(images[order], 4), grid_path, nrow=num_classes,
            labels=[str(int(c)) for c in labels[order]],
        )  # fmt: skip
    return report


def run_demo(
    workdir: str,
    tokenizer_steps: int | None = None,
    generator_steps: int | None = None,
    samples_per_class: int = 10,
    cfg_scale: float | None = None,
    seed: int = 0,
) -> dict[str, Any]:
    """Runs the whole demo into ``workdir``; returns (and writes) ``report.json``."""
    if samples_per_class < 2:
        raise ValueError(
            f"samples_per_class must be >= 2 (within-class diversity compares two samples of a "
            f"class), got {samples_per_class}"
        )
    start, report = time.time(), {}
    tok_dir = os.path.join(workdir, "tokenizer")
    gen_dir = os.path.join(workdir, "generator")
    tok_config = _config("tokenizer_digits.py", tokenizer_steps)
    train_tokenizer(tok_config, tok_dir)
    held_out, _ = image_arrays(tok_config.data, split="test")
    report["tokenizer"] = evaluate_tokenizer(load_tokenizer(tok_dir), held_out)
    report["tokenizer_minutes"] = (time.time() - start) / 60

    gen_config = _config("gpt_digits.py", generator_steps, tokenizer_workdir=tok_dir)
    train_generator(gen_config, gen_dir)
    report["generator_minutes"] = (time.time() - start) / 60 - report["tokenizer_minutes"]

    sampling = {} if cfg_scale is None else {"cfg_scale": cfg_scale}
    report.update(judge_generator(gen_dir, samples_per_class, seed, grid_path=os.path.join(
        workdir, "samples_grid.png"), **sampling))  # fmt: skip
    report["total_minutes"] = (time.time() - start) / 60
    with open(os.path.join(workdir, "report.json"), "w") as f:
        json.dump(report, f, indent=2)
    return report


def main(argv=None) -> dict[str, Any]:
    """``python -m jaxar.recipes.demo`` / ``jaxar-demo`` / ``experiments/demo.py``."""
    import argparse

    parser = argparse.ArgumentParser(description="The jaxar digits demo (CPU, minutes).")
    parser.add_argument("--workdir", default="runs/demo")
    parser.add_argument("--tokenizer_steps", type=int, default=None, help="default: config")
    parser.add_argument("--generator_steps", type=int, default=None, help="default: config")
    parser.add_argument("--samples_per_class", type=int, default=10)
    parser.add_argument("--cfg_scale", type=float, default=None, help="default: config")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    report = run_demo(
        args.workdir, args.tokenizer_steps, args.generator_steps, args.samples_per_class,
        args.cfg_scale, args.seed,
    )  # fmt: skip
    print(json.dumps(report, indent=2))
    print(f"grid: {args.workdir}/samples_grid.png")
    return report


if __name__ == "__main__":
    main()
