"""Evaluation jobs on trained workdirs: sample a generator and score it against a reference
batch (FID / sFID / IS / precision-recall), and stream a tokenizer's dataset split for rFID,
PSNR, SSIM and codebook usage. The scoring itself is ``jaxar.eval.evaluate``'s.

Written for one process: every process would sample and score the whole set.
"""

from __future__ import annotations

import os
import time
from typing import Any

import jax
import numpy as np

from jaxar.eval.evaluate import (
    FeatureMoments,
    InceptionFeatures,
    in_batches,
    score_features,
    to_rgb_uint8,
)
from jaxar.eval.metrics import frechet_distance
from jaxar.eval.reference_npz import load_reference, save_samples_npz
from jaxar.recipes.generator import load_generator
from jaxar.recipes.images import image_batches
from jaxar.recipes.tokenizer import evaluate_tokenizer, load_tokenizer
from jaxar.train.checkpoint import restore_for_eval


def generate_samples(
    generator, num_samples: int, *, batch_size: int, seed: int = 0, **sampling: Any
) -> tuple[np.ndarray, np.ndarray]:
    """Samples ``num_samples`` images with balanced labels -> (uint8 [N,H,W,C], labels [N]).

    ``generator`` is a ``jaxar.recipes.generator.LoadedGenerator``. Every batch has
    ``batch_size`` rows (the last is padded) so the sampler compiles once.
    """
    if num_samples < 1 or batch_size < 1:
        raise ValueError(f"need num_samples, batch_size >= 1, got {num_samples}, {batch_size}")
    num_classes = generator.family.num_classes(generator.model_config)
    labels = (np.arange(num_samples) % num_classes).astype(np.int32)
    sampler = generator.sampler(**sampling)
    key, images = jax.random.key(seed), []
    for index, start in enumerate(range(0, num_samples, batch_size)):
        batch = labels[start : start + batch_size]
        padded = np.resize(batch, batch_size)  # repeats the batch's labels to fill it
        out = sampler(generator.params, padded, jax.random.fold_in(key, index))
        images.append(out.images[: len(batch)])
    return np.concatenate(images), labels


def evaluate_generator(
    generator_workdir: str | os.PathLike,
    *,
    reference_npz: str | os.PathLike,
    inception: InceptionFeatures,
    num_samples: int,
    batch_size: int = 64,
    seed: int = 0,
    cfg_scale: float | None = None,
    sampling: dict[str, Any] | None = None,
    samples_npz: str | os.PathLike | None = None,
    reference_statistics: str = "auto",
    with_precision_recall: bool = True,
    use_ema: bool = True,
) -> dict[str, Any]:
    """Samples a trained generator and scores it against a reference batch -> report dict.

    ``sampling`` overrides the checkpoint's sampling settings (``cfg_scale`` is a shortcut);
    ``samples_npz`` also writes the samples (RGB uint8 ``arr_0``, labels ``arr_1``).
    """
    # Fail on a bad reference before spending time on the generator.
    load_reference(reference_npz, require_statistics=False, load_images=False)
    settings = dict(sampling or {})
    if cfg_scale is not None:
        settings["cfg_scale"] = cfg_scale
    generator = load_generator(generator_workdir, use_ema=use_ema)
    start = time.perf_counter()
    images, labels = generate_samples(
        generator, num_samples, batch_size=batch_size, seed=seed, **settings
    )
    sampled = time.perf_counter()
    rgb = to_rgb_uint8(images)
    if samples_npz is not None:
        save_samples_npz(samples_npz, rgb, labels)
    features = inception(in_batches(rgb, inception.batch_size))
    report = score_features(
        features, reference_npz, inception,
        reference_statistics=reference_statistics, with_precision_recall=with_precision_recall,
    )  # fmt: skip
    report.update(
        generator=os.fspath(generator_workdir),
        num_samples=num_samples,
        seed=seed,
        sampling={**(generator.config.get("sampling") or {}), **settings},
        samples_npz=None if samples_npz is None else os.fspath(samples_npz),
        inception=inception.describe(),
        sampling_seconds=sampled - start,
        scoring_seconds=time.perf_counter() - sampled,
    )
    return report


def stored_config(workdir: str | os.PathLike) -> dict[str, Any]:
    """The experiment config a training workdir's checkpoint stores (a dict)."""
    _, config = restore_for_eval(workdir)
    if config is None:
        raise ValueError(f"checkpoint in {workdir} stores no config; pass the data config")
    return config


def evaluate_tokenizer_dataset(
    tokenizer_workdir: str | os.PathLike,
    *,
    inception: InceptionFeatures,
    data: Any = None,
    split: str = "test",
    limit: int | None = None,
    batch_size: int = 64,
    use_ema: bool = True,
) -> dict[str, Any]:
    """rFID (real images vs their reconstructions), PSNR, SSIM, codebook usage / perplexity.

    ``data`` is a data config (``jaxar.recipes.images``); default: the one the tokenizer was
    trained with. ``limit`` keeps the first images of the split. The split is streamed in
    batches of ``batch_size``: only running sums and Inception feature moments are kept.
    """
    tokenizer = load_tokenizer(tokenizer_workdir, use_ema=use_ema)
    data = stored_config(tokenizer_workdir)["data"] if data is None else data
    real, fake = FeatureMoments(), FeatureMoments()

    def batches_with_features():
        for batch in image_batches(data, split=split, limit=limit, batch_size=batch_size):
            images = batch["image"]  # float [b,H,W,C] in [-1,1]
            recon = np.asarray(tokenizer.reconstruct(images))
            real.add(inception(in_batches(images, inception.batch_size))["pool"])
            fake.add(inception(in_batches(recon, inception.batch_size))["pool"])
            yield images

    report = evaluate_tokenizer(tokenizer, batches_with_features(), batch_size=batch_size)
    report.update(
        rfid=frechet_distance(*real.statistics(), *fake.statistics()),
        tokenizer=os.fspath(tokenizer_workdir),
        split=split,
        inception=inception.describe(),
    )
    return report
