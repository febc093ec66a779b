"""Sample a trained generator: PNG grid + an ``.npz`` in the ADM evaluation suite's layout.

    python experiments/sample.py --workdir runs/demo/generator --num_samples 1000 \
        --cfg_scale 2.0 --out runs/demo/samples [--accelerator sjd --set window=8]

The sampler is built and compiled once (every batch is padded to ``--batch_size``); the log
gives the compile seconds apart from the sampling seconds, and the forward passes per image.
``--set KEY=VALUE`` sets any sampling setting of the family or the accelerator (MaskGIT's
``num_steps``, RandAR's ``order``, SJD's ``window``, ...; values parsed as Python literals);
``--accelerator`` picks a training-free accelerator (``jaxar.sampling.accelerators``: sjd,
lantern, gsd, zipar), ``none`` the plain sampler (default: the config's).

Labels are balanced over the classes (``i % num_classes``) unless ``--labels 3,3,7`` is given.
Grey images are repeated to 3 channels in the ``.npz`` (``arr_0`` uint8 [N,H,W,3], ``arr_1``
labels), so the file feeds the ADM evaluator or ``experiments/evaluate.py`` directly.
"""

import argparse
import ast
import time

import jax
import numpy as np

from jaxar.eval.reference_npz import save_samples_npz
from jaxar.paths import check_writable_dir
from jaxar.recipes.generator import load_generator
from jaxar.sampling.logits import check_sampling_settings
from jaxar.train.images import save_image_grid

OUTPUTS = ("samples.npz", "grid.png")


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workdir", required=True, help="a train_generator workdir")
    parser.add_argument("--out", required=True, help="output folder")
    parser.add_argument("--num_samples", type=int, default=100)
    parser.add_argument("--batch_size", type=int, default=100)
    parser.add_argument("--labels", default=None, help="comma-separated class ids")
    parser.add_argument("--cfg_scale", type=float, default=None)
    parser.add_argument("--temperature", type=float, default=None)
    parser.add_argument("--top_k", type=int, default=None)
    parser.add_argument("--top_p", type=float, default=None)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--accelerator", default=None, help="sjd, lantern, gsd, zipar or none")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="a sampling setting of the family or accelerator")  # fmt: skip
    parser.add_argument("--no_ema", action="store_true", help="use the raw (not EMA) weights")
    parser.add_argument("--overwrite", action="store_true", help="replace existing outputs")
    return parser.parse_args(argv)


def _literal(text: str):
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError):
        return text


def sampling_settings(args) -> dict:
    """The sampling settings the flags give (``--cfg_scale`` ... and every ``--set``)."""
    names = ("cfg_scale", "temperature", "top_k", "top_p")
    settings = {k: getattr(args, k) for k in names if getattr(args, k) is not None}
    for item in args.set:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise SystemExit(f"--set {item!r} is not of the form KEY=VALUE")
        settings[key] = _literal(value)
    return settings


def check_args(args) -> None:
    """Fails before any work (SystemExit naming the flag and its accepted values)."""
    for name in ("num_samples", "batch_size"):
        if getattr(args, name) < 1:
            raise SystemExit(f"--{name} must be an integer >= 1, got {getattr(args, name)}")
    try:
        check_sampling_settings(
            "constant",
            1.0 if args.temperature is None else args.temperature,
            0 if args.top_k is None else args.top_k,
            1.0 if args.top_p is None else args.top_p,
            1.0 if args.cfg_scale is None else args.cfg_scale,
        )
    except ValueError as err:
        raise SystemExit(f"--{err}") from None
    try:
        out = check_writable_dir(args.out, "--out folder")
    except OSError as err:
        raise SystemExit(f"--out must be a folder (existing or new): {err}") from None
    existing = [name for name in OUTPUTS if (out / name).exists()]
    if existing and not args.overwrite:
        raise SystemExit(f"--out {out} already holds {existing}; pass --overwrite or a new --out")


def main(argv=None):
    args = parse_args(argv)
    check_args(args)
    out = check_writable_dir(args.out, "--out folder")
    generator = load_generator(args.workdir, use_ema=not args.no_ema)
    num_classes = generator.model_config.num_classes
    if args.labels:
        labels = np.asarray([int(x) for x in args.labels.split(",")], np.int32)
    else:
        labels = np.arange(args.num_samples, dtype=np.int32) % num_classes
    if labels.min() < 0 or labels.max() >= num_classes:
        raise SystemExit(f"labels must lie in [0, {num_classes}), got {sorted(set(labels))}")
    try:
        sampler = generator.sampler(args.accelerator, **sampling_settings(args))
    except ValueError as err:
        raise SystemExit(f"sampling settings: {err}") from None
    rng, images, passes, heads, compile_s = jax.random.key(args.seed), [], [], [], 0.0
    start = time.perf_counter()
    for begin in range(0, len(labels), args.batch_size):
        rng, key = jax.random.split(rng)
        batch = labels[begin : begin + args.batch_size]
        padded = np.resize(batch, min(args.batch_size, len(labels)))  # one shape: one compile
        result, seconds = sampler.timed(generator.params, padded, key)
        compile_s += seconds["compile_s"]
        images.append(result.images[: len(batch)])
        passes.append(result.forward_passes[: len(batch)])
        if result.head_calls is not None:
            heads.append(result.head_calls[: len(batch)])
    sample_s = time.perf_counter() - start - compile_s
    print(f"{sampler.name} sampler: compiled in {compile_s:.1f} s ({sampler.traces} trace(s)); "
          f"sampled {len(labels)} images in {sample_s:.1f} s "
          f"({len(labels) / max(sample_s, 1e-9):.2f} images/s), "
          f"{np.concatenate(passes).mean():.1f} forward passes per image"
          + (f", {np.concatenate(heads).mean():.0f} diffusion-head calls per image"
             if heads else ""))  # fmt: skip
    images = np.concatenate(images)
    rgb = np.repeat(images, 3, axis=-1) if images.shape[-1] == 1 else images
    with (out / "samples.npz").open("wb") as f:
        save_samples_npz(f, rgb, labels)
    shown = min(len(images), 100)
    save_image_grid(images[:shown], out / "grid.png", nrow=10,
                    labels=[str(int(c)) for c in labels[:shown]])  # fmt: skip
    print(f"wrote {len(images)} samples to {out}/samples.npz and grid.png")


if __name__ == "__main__":
    main()
