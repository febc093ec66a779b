"""Quality of every digits generator and accelerator, diversity included. Prints JSON.

For each trained generator (``NAME=WORKDIR``, a ``train_generator`` workdir) it samples
``--per-class`` images of every class with the config's sampling settings and scores them with
``jaxar.eval.digit_metrics`` against the held-out real digits: class accuracy (independent SVM
judge), Fréchet distance, improved precision / recall and within-class diversity in the hidden
features of an MLP fitted on the real training digits, plus forward passes per image. With
``--accelerators WORKDIR`` (a GPT workdir, e.g. the demo's) SJD, LANTERN, GSD and ZipAR are
scored the same way on that GPT, through the same interface
(``load_generator(W).sampler(accelerator=..., window=...)``, the GPT config's sampling).
The ``reference`` row scores real training digits (the same count per class).

    python bench/digits_quality.py --per-class 50 --generator gpt=runs/demo/generator \
        --generator maskgit=runs/maskgit_digits --accelerators runs/demo/generator
"""

from __future__ import annotations

import argparse
import json
from typing import Any

import jax
import ml_collections
import numpy as np
from etils import epath

from jaxar.eval.digit_metrics import digits_yardstick, summary
from jaxar.recipes.cli import apply_overrides
from jaxar.recipes.generator import load_generator


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


def score_generator(
    workdir: str, labels: np.ndarray, seed: int, yardstick, accelerator: str | None = None,
    **sampling: Any,
) -> dict[str, Any]:  # fmt: skip
    """Samples labels [N] from a trained generator (through ``LoadedGenerator.sampler``, with
    an optional accelerator); its figures, passes and settings."""
    gen = load_generator(workdir)
    sampler = gen.sampler(accelerator, **sampling)
    out, seconds = sampler.timed(gen.params, labels, jax.random.key(seed))
    report = yardstick.score(out.images, labels)
    return {
        "workdir": workdir,
        "family": gen.family.name,
        "sampler": sampler.name,
        "config_train_steps": gen.config["train"]["num_steps"],
        "checkpoint_step": latest_step(workdir),
        "sampling": sampler.settings,
        "forward_passes_per_image": float(out.forward_passes.mean()),
        **seconds,
        **summary(report),
        "per_class_diversity": report["per_class_diversity"],
    }


def accelerator_rows(window: int) -> dict[str, tuple[str | None, dict[str, Any]]]:
    """Row name -> (accelerator, its settings): the settings of the published comparisons."""
    return {
        "plain": (None, {}),
        f"sjd(window={window})": ("sjd", {"window": window}),
        f"lantern(k=8,delta=0.2,window={window})": (
            "lantern", {"k": 8, "delta": 0.2, "window": window}),
        f"gsd(radius=7,gap=0.15,d2<=q25,window={window})": ("gsd", {
            "rank_radius": 7, "prob_gap": 0.15, "distance_quantile": 0.25, "window": window}),
        "zipar(window=2)": ("zipar", {"window": 2}),
        "zipar(window=1)": ("zipar", {"window": 1}),
    }  # fmt: skip


def score_accelerators(workdir: str, labels: np.ndarray, window: int, yardstick, seed: int = 1):
    """SJD / LANTERN / GSD / ZipAR (and the plain sampler) on the GPT in ``workdir``, with its
    config's sampling settings."""
    rows = {}
    for name, (accelerator, settings) in accelerator_rows(window).items():
        rows[name] = score_generator(workdir, labels, seed, yardstick, accelerator, **settings)
    return {"workdir": workdir, "results": rows}


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
