"""MaskGIT / RandAR / RQ-Transformer on the bundled digits, judged by the independent classifier.

    python experiments/train_more_digits.py --family maskgit --workdir runs/more_digits

Trains (or reuses) a digits tokenizer (VQ for maskgit/randar, RQ for rq) with
``experiments/configs/tokenizer_digits.py``, encodes the train split, trains the generator of
``experiments/configs/<family>_digits.py`` through ``jaxar.train.fit``, samples
``--per_class`` images per class and prints one JSON line: judge accuracy, steps, minutes,
forward passes per image.
"""

import argparse
import json
import os
import time

import jax
import numpy as np

from jaxar.data import load_digits, make_array_dataset
from jaxar.data.transforms import to_uint8
from jaxar.eval.digit_judge import DigitJudge
from jaxar.recipes.cli import load_config
from jaxar.recipes.config import as_dict, dataclass_from, train_config_from
from jaxar.recipes.images import image_arrays
from jaxar.recipes.tokenizer import encode_arrays, load_tokenizer, train_tokenizer
from jaxar.sharding import make_mesh
from jaxar.train.loop import fit

HERE = os.path.dirname(os.path.abspath(__file__))


def _family(name: str):
    """-> (config class, preset fn, task fn, sampler fn, tokenizer quantizer)."""
    if name == "maskgit":
        from jaxar.generators import maskgit as g
        from jaxar.sampling.masked import make_maskgit_sampler

        return g.MaskGITConfig, g.maskgit_config, g.make_maskgit_task, make_maskgit_sampler, "vq"
    if name == "randar":
        from jaxar.generators import randar as g
        from jaxar.sampling.random_order import make_randar_sampler

        return g.RandARConfig, g.randar_config, g.make_randar_task, make_randar_sampler, "vq"
    if name == "rq":
        from jaxar.generators import rq_transformer as g
        from jaxar.sampling.rq import make_rq_sampler

        return g.RQTransformerConfig, g.rq_config, g.make_rq_task, make_rq_sampler, "rq"
    raise ValueError(f"unknown family {name!r}: maskgit, randar or rq")


def _tokenizer(quantizer: str, workdir: str, steps: int):
    config = load_config(os.path.join(HERE, "configs", f"tokenizer_digits.py:{quantizer}"))
    config.train.num_steps = config.train.optimizer.total_steps = steps
    config.train.checkpoint_every = steps
    config.train.sample_every = 0
    config.train.progress_bar = False
    path = os.path.join(workdir, f"tokenizer_{quantizer}")
    train_tokenizer(config, path)  # resumes / returns at once when already trained
    return load_tokenizer(path), config


def _model_config(cls, preset_fn, model: dict, tokenizer):
    values = dict(model)
    values.pop("family", None)
    base = preset_fn(values.pop("preset")).__dict__
    derived = {"vocab_size": tokenizer.vocab_size, "block_size": tokenizer.num_tokens}
    if "code_depth" in base:
        derived["code_depth"] = tokenizer.config.rq_depth
    return dataclass_from(cls, {**base, **derived, **values})


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--family", required=True, choices=["maskgit", "randar", "rq"])
    parser.add_argument("--workdir", required=True)
    parser.add_argument("--tokenizer_steps", type=int, default=600)
    parser.add_argument("--steps", type=int, default=None, help="override train.num_steps")
    parser.add_argument("--per_class", type=int, default=20)
    args = parser.parse_args(argv)
    start = time.time()
    cls, preset_fn, make_task, make_sampler, quantizer = _family(args.family)
    tokenizer, tok_config = _tokenizer(quantizer, args.workdir, args.tokenizer_steps)
    tok_minutes = (time.time() - start) / 60
    config = load_config(os.path.join(HERE, "configs", f"{args.family}_digits.py"))
    if args.steps:
        config.train.num_steps = config.train.optimizer.total_steps = args.steps
    model_cfg = _model_config(cls, preset_fn, as_dict(config.model), tokenizer)
    images, labels = image_arrays(config.data, split="train")
    arrays = {"codes": encode_arrays(tokenizer, images), "label": labels}
    dataset = make_array_dataset(arrays, global_batch_size=config.data.batch_size, seed=0)
    gen_start = time.time()
    state = fit(
        make_task(model_cfg), iter(dataset), config=train_config_from(config),
        workdir=os.path.join(args.workdir, args.family), mesh=make_mesh(),
        rng_seed=config.seed, checkpoint_config=as_dict(config),
    )  # fmt: skip
    train_minutes = (time.time() - gen_start) / 60
    params = state.ema_params if state.ema_params is not None else state.params
    sampler = make_sampler(model_cfg, **as_dict(config.sampling))
    want = np.repeat(np.arange(model_cfg.num_classes, dtype=np.int32), args.per_class)
    codes = np.asarray(sampler(params, want, jax.random.key(1234)))
    if codes.ndim == 4:  # RQ: [B, h, w, D] -> the flat layout [B, L, D]
        codes = codes.reshape(len(want), tokenizer.num_tokens, codes.shape[-1])
    samples = to_uint8(np.asarray(tokenizer.decode(codes)))
    real, real_labels = load_digits(image_size=16, channels=1, split="train")
    accuracy = DigitJudge().fit(real, real_labels).accuracy(samples, want)
    passes = getattr(sampler, "forward_passes_per_image", None)
    print(json.dumps({
        "family": args.family, "judge_accuracy": accuracy, "num_samples": len(want),
        "generator_steps": int(state.step), "tokenizer_steps": tok_config.train.num_steps,
        "tokenizer_minutes": round(tok_minutes, 1), "generator_minutes": round(train_minutes, 1),
        "forward_passes_per_image": passes, "sampling": as_dict(config.sampling),
    }))  # fmt: skip


if __name__ == "__main__":
    main()
