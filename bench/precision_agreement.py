"""bfloat16 sampling against float32 on trained generators. Prints JSON.

For each ``NAME=WORKDIR`` (a ``train_generator`` workdir) it samples ``--per-class`` greedy
images of every class in float32 and in ``precision="bfloat16"`` (same labels, same seed, the
config's other settings) and reports the share of identical tokens, and the wall time of each
after compile. Free-running greedy codes diverge for good after the first flipped token, so for
the raster GPT it also reports the per-step agreement: the argmax of bfloat16 and float32
teacher-forced logits on the float32 greedy codes (the issue's guard: >= 99 % of tokens).
Judged accuracy at the config's
settings is compared by ``bench/digits_quality.py --generator fp32=W --generator bf16=W
--sampling bf16.precision=bfloat16``.

    python bench/precision_agreement.py --generator gpt=runs/demo/generator
"""

from __future__ import annotations

import argparse
import json

import jax
import numpy as np

from jaxar.recipes.generator import load_generator


def agreement(workdir: str, per_class: int, seed: int) -> dict:
    gen = load_generator(workdir)
    classes = gen.family.num_classes(gen.model_config)
    labels = np.repeat(np.arange(classes, dtype=np.int32), per_class)
    row = {"workdir": workdir, "family": gen.family.name, "samples": int(labels.size)}
    codes = {}
    for precision in ("float32", "bfloat16"):
        sampler = gen.sampler(temperature=0.0, precision=precision)
        sampler(gen.params, labels[:1].repeat(labels.size), seed)  # compile
        out, seconds = sampler.timed(gen.params, labels, jax.random.key(seed))
        codes[precision] = out.codes
        row[f"{precision}_sample_s"] = round(seconds["sample_s"], 3)
    same = codes["float32"] == codes["bfloat16"]
    if gen.family.name == "gpt":
        row["teacher_forced_agreement"] = teacher_forced(gen, codes["float32"], labels)
    row["token_agreement"] = float(same.mean())
    row["identical_images"] = float(same.reshape(len(labels), -1).all(axis=1).mean())
    return row


def teacher_forced(gen, codes: np.ndarray, labels: np.ndarray) -> float:
    """Share of positions where bf16 and fp32 teacher-forced logits pick the same token."""
    from jaxar.generators.gpt import GPT
    from jaxar.sampling.base import at_precision, cast_params

    picks = []
    for precision in ("float32", "bfloat16"):
        model = GPT(at_precision(gen.model_config, precision))
        params = cast_params(gen.params, precision)
        picks.append(np.asarray(model.apply({"params": params}, codes, labels).argmax(-1)))
    return float((picks[0] == picks[1]).mean())


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--generator", action="append", required=True, metavar="NAME=WORKDIR")
    parser.add_argument("--per-class", type=int, default=20)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    doc = {"backend": jax.default_backend(), "results": {}}
    for pair in args.generator:
        name, sep, workdir = pair.partition("=")
        if not sep:
            raise ValueError(f"--generator must look like NAME=WORKDIR, got {pair!r}")
        doc["results"][name] = agreement(workdir, args.per_class, args.seed)
    print(json.dumps(doc, indent=1))
    return doc


if __name__ == "__main__":
    main()
