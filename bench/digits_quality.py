"""Quality of every digits generator and accelerator, diversity included. Prints JSON.

For each trained generator (``NAME=WORKDIR``, a ``train_generator`` workdir) it samples
``--per-class`` images of every class with the config's sampling settings and scores them with
``jaxar.eval.digit_metrics`` against the held-out real digits: class accuracy (independent SVM
judge), Fréchet distance, improved precision / recall and within-class diversity in the hidden
features of an MLP fitted on the real training digits, plus forward passes per image. With
``--accelerators WORKDIR`` (a GPT workdir, e.g. the demo's) SJD, LANTERN, GSD and ZipAR are
scored the same way on that GPT (``bench/accelerators.py``, the GPT config's temperature and
CFG scale). The ``reference`` row scores real training digits (the same count per class).

    python bench/digits_quality.py --per-class 50 --generator gpt=runs/demo/generator \
        --generator maskgit=runs/maskgit_digits --accelerators runs/demo/generator
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from etils import epath

sys.path.insert(0, os.path.dirname(__file__))
import accelerators  # noqa: E402  (bench/ is a folder of scripts, not a package)

from jaxar.eval.digit_metrics import digits_yardstick, summary  # noqa: E402
from jaxar.recipes.cli import apply_overrides  # noqa: E402
from jaxar.recipes.generator import load_generator  # noqa: E402


def parse_pairs(pairs: list[str], what: str) -> dict[str, str]:
    """["a=b", ...] -> {"a": "b"}; ValueError naming ``what`` on a malformed entry."""
    out = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key or not value:
            raise ValueError(f"{what} must look like NAME=VALUE, got {pair!r}")
        out[key] = value
    return out


def latest_step(workdir: str) -> int | None:
    """The newest checkpoint step in ``workdir/checkpoints`` (the one ``load_generator`` uses)."""
    folder = epath.Path(workdir) / "checkpoints"
    steps = [int(p.name) for p in folder.iterdir() if p.name.isdigit()]
    return max(steps, default=None)


def score_generator(workdir: str, labels: np.ndarray, seed: int, yardstick, **sampling: Any):
    """Samples labels [N] from a trained generator; its figures, passes and settings."""
    gen = load_generator(workdir)
    start = time.perf_counter()
    _, images = gen.sample(labels, jax.random.key(seed), **sampling)
    report = yardstick.score(images, labels)
    return {
        "workdir": workdir,
        "family": gen.family.name,
        "config_train_steps": gen.config["train"]["num_steps"],
        "checkpoint_step": latest_step(workdir),
        "sampling": {**gen.config.get("sampling", {}), **sampling},
        "forward_passes_per_image": gen.sampler(**sampling).forward_passes_per_image,
        "sampling_seconds_with_compile": time.perf_counter() - start,
        **summary(report),
        "per_class_diversity": report["per_class_diversity"],
    }


def score_accelerators(workdir: str, labels: np.ndarray, window: int, yardstick):
    """SJD / LANTERN / GSD / ZipAR (and the plain sampler) on the GPT in ``workdir``."""
    model = accelerators.demo_model(workdir)
    sampling = load_generator(workdir).config.get("sampling", {})
    sampling = {k: sampling[k] for k in ("temperature", "cfg_scale") if k in sampling}
    rows = {}
    for name, sampler in accelerators.samplers(model, window, sampling).items():
        rows[name] = accelerators.measure(name, sampler, model, jnp.asarray(labels), yardstick, 1)
    return {"workdir": workdir, "sampling": sampling, "results": rows}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--generator", action="append", default=[], metavar="NAME=WORKDIR")
    parser.add_argument(
        "--sampling", action="append", default=[], metavar="NAME.KEY=VALUE",
        help="override a generator's sampling setting, e.g. maskgit.temperature=1",
    )  # fmt: skip
    parser.add_argument("--accelerators", default=None, metavar="GPT_WORKDIR")
    parser.add_argument("--per-class", type=int, default=50)
    parser.add_argument("--window", type=int, default=8)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default=None, help="also write the JSON here")
    args = parser.parse_args(argv)
    generators = parse_pairs(args.generator, "--generator")
    overrides = ml_collections.ConfigDict({name: {} for name in generators})
    for item in args.sampling:
        if item.partition(".")[0] not in generators:
            raise ValueError(f"--sampling {item}: NAME must be one of {list(generators)}")
    overrides = apply_overrides(overrides, [f"+{item}" for item in args.sampling]).to_dict()
    yardstick = digits_yardstick(16)
    labels = np.repeat(np.arange(10, dtype=np.int32), args.per_class)
    doc = {"samples_per_class": args.per_class, "seed": args.seed,
           "backend": jax.default_backend(),
           "reference": summary(yardstick.reference(labels)), "generators": {}}  # fmt: skip
    for name, workdir in generators.items():
        doc["generators"][name] = score_generator(
            workdir, labels, args.seed, yardstick, **overrides[name]
        )
    if args.accelerators:
        doc["accelerators"] = score_accelerators(args.accelerators, labels, args.window, yardstick)
    text = json.dumps(doc, indent=1)
    print(text)
    if args.out:
        epath.Path(args.out).write_text(text)


if __name__ == "__main__":
    main()
