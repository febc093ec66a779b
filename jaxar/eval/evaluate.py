"""Scoring images against a reference batch (FID / sFID / IS / precision-recall), the FID
Inception as a feature function, feature moments, and reference batches. The jobs that sample a
trained generator or stream a tokenizer's dataset split live in ``jaxar.recipes.evaluation``.

Conventions (ADM evaluation suite, see ``jaxar.eval.metrics``):
- images reach the Inception as uint8 RGB; grey images [N,H,W,1] have their channel repeated
  three times, float images in [-1,1] are rounded to uint8 first (as a saved sample would be);
- generator samples use balanced labels ``arange(N) % num_classes`` and the key
  ``fold_in(key(seed), batch_index)`` per sampling batch;
- FID reference: with ``reference_statistics="auto"`` the stored ``mu`` / ``sigma`` of the
  reference .npz are used when present *and* the Inception holds loaded (real) weights;
  otherwise (no stored statistics, or random smoke-test weights, whose features those
  statistics do not describe) the statistics of the ``arr_0`` images' features are used.
  ``"stored"`` / ``"images"`` force one source. The report names the source used;
- precision / recall (k=3) compare the samples with the features of all ``arr_0`` images.

Written for one process: every process would sample and score the whole set.
"""

from __future__ import annotations

import dataclasses
import functools
import os
from collections.abc import Iterable, Iterator
from typing import Any

import numpy as np
from jax.sharding import Mesh

from jaxar.data.transforms import to_uint8
from jaxar.eval.features import extract_features, inception_apply_fn
from jaxar.eval.inception import (
    FID_INCEPTION,
    InceptionConfig,
    InceptionV3,
    load_inception_params,
    random_inception_variables,
)
from jaxar.eval.metrics import (
    feature_statistics,
    frechet_distance,
    inception_score,
    precision_recall,
)
from jaxar.eval.reference_npz import (
    ReferenceBatch,
    iter_npz_images,
    load_reference,
    save_reference,
)

FEATURE_KEYS = ("pool", "logits_unbiased", "spatial")
REFERENCE_STATISTICS = ("auto", "stored", "images")


@functools.lru_cache(maxsize=8)
def _apply_fn(config: InceptionConfig):
    """One apply function per config, so its jitted extraction step is compiled once."""
    return inception_apply_fn(InceptionV3(config))


@dataclasses.dataclass(frozen=True, eq=False)
class InceptionFeatures:
    """The FID Inception with its variables, run over image batches on a mesh.

    ``source`` says where the variables came from (a path, or ``"random:SEED"``).
    ``batch_size`` must be a multiple of the mesh's batch shards (see ``extract_features``).
    """

    config: InceptionConfig
    variables: Any
    source: str
    batch_size: int = 64
    mesh: Mesh | None = None

    @property
    def random(self) -> bool:
        return self.source.startswith("random:")

    def __call__(self, batches: Iterable[Any]) -> dict[str, np.ndarray]:
        """Image batches (uint8 RGB [B,H,W,3]) -> {pool [N,D], logits_unbiased, spatial}."""
        return extract_features(
            _apply_fn(self.config),
            self.variables,
            batches,
            batch_size=self.batch_size,
            mesh=self.mesh,
            keys=FEATURE_KEYS,
        )

    def describe(self) -> dict[str, Any]:
        return {
            "weights": self.source,
            "resize_to": self.config.resize_to,
            "width_multiplier": self.config.width_multiplier,
            "feature_dim": self.config.feature_dim,
        }


def load_inception(
    weights: str | os.PathLike | None = None,
    *,
    random_seed: int | None = None,
    resize_to: int | None = 299,
    width_multiplier: float = 1.0,
    batch_size: int = 64,
    mesh: Mesh | None = None,
) -> InceptionFeatures:
    """The FID Inception from a converted weights file, or random (smoke tests only).

    Give exactly one of ``weights`` / ``random_seed``. ``width_multiplier`` != 1 exists only
    for random weights (fast tests); FID numbers are comparable only with the real weights.
    """
    if (weights is None) == (random_seed is None):
        raise ValueError("give exactly one of an Inception weights file or a random seed")
    config = dataclasses.replace(
        FID_INCEPTION, resize_to=resize_to, width_multiplier=width_multiplier
    )
    if weights is not None:
        if width_multiplier != 1.0:
            raise ValueError("width_multiplier != 1 is only for random Inception weights")
        variables, source = load_inception_params(weights, config), os.fspath(weights)
    else:
        variables, source = random_inception_variables(config, random_seed), f"random:{random_seed}"
    return InceptionFeatures(config, variables, source, batch_size, mesh)


def to_rgb_uint8(images: Any) -> np.ndarray:
    """uint8 or float [-1,1] images [N,H,W,1|3] -> uint8 [N,H,W,3] (grey channel repeated)."""
    images = np.asarray(images)
    if images.ndim != 4 or images.shape[-1] not in (1, 3):
        raise ValueError(f"expected images [N,H,W,1] or [N,H,W,3], got shape {images.shape}")
    if images.dtype != np.uint8:
        if not np.issubdtype(images.dtype, np.floating):
            raise ValueError(f"images must be uint8 or float in [-1,1], got {images.dtype}")
        images = to_uint8(images)
    return np.repeat(images, 3, axis=-1) if images.shape[-1] == 1 else images


def in_batches(images: np.ndarray, batch_size: int) -> Iterator[np.ndarray]:
    for start in range(0, len(images), batch_size):
        yield to_rgb_uint8(images[start : start + batch_size])


def _fid(features: np.ndarray, mu: np.ndarray, sigma: np.ndarray, what: str) -> float:
    if mu.shape[0] != features.shape[1]:
        raise ValueError(
            f"the reference {what} statistics are {mu.shape[0]}-d but the Inception features "
            f"are {features.shape[1]}-d: they come from a different network; recompute them "
            "from the reference images (reference_statistics='images')"
        )
    return frechet_distance(*feature_statistics(features), mu, sigma)


def _reference_stats(reference: ReferenceBatch, mode: str, inception, ref_features):
    """-> (source name, {"pool": (mu, sigma), "spatial": (mu, sigma) or None})."""
    if mode not in REFERENCE_STATISTICS:
        raise ValueError(f"reference_statistics must be one of {REFERENCE_STATISTICS}")
    if mode == "stored" and reference.mu is None:
        raise ValueError("reference_statistics='stored' but the reference stores no mu / sigma")
    use_stored = mode == "stored" or (
        mode == "auto" and reference.mu is not None and not inception.random
    )
    if use_stored:
        spatial = None if reference.mu_s is None else (reference.mu_s, reference.sigma_s)
        return "stored mu/sigma", {"pool": (reference.mu, reference.sigma), "spatial": spatial}
    stats = {k: feature_statistics(ref_features()[k]) for k in ("pool", "spatial")}
    return "arr_0 features", stats


def score_features(
    features: dict[str, np.ndarray],
    reference_npz: str | os.PathLike,
    inception: InceptionFeatures,
    *,
    reference_statistics: str = "auto",
    with_precision_recall: bool = True,
) -> dict[str, Any]:
    """FID / sFID / IS / precision-recall of sample ``features`` against a reference .npz."""
    reference = load_reference(reference_npz, require_statistics=False, load_images=False)
    ref_features = functools.cache(
        lambda: inception(iter_npz_images(reference_npz, inception.batch_size))
    )
    source, stats = _reference_stats(reference, reference_statistics, inception, ref_features)
    num_splits = min(10, features["logits_unbiased"].shape[0])
    is_mean, is_std = inception_score(features["logits_unbiased"], num_splits=num_splits)
    report = {
        "fid": _fid(features["pool"], *stats["pool"], "pool"),
        "sfid": None,
        "inception_score": is_mean,
        "inception_score_std": is_std,
        "fid_reference": source,
        "reference": os.fspath(reference_npz),
        "reference_images": reference.num_images,
    }
    if stats["spatial"] is not None:
        report["sfid"] = _fid(features["spatial"], *stats["spatial"], "spatial")
    if with_precision_recall:
        precision, recall = precision_recall(ref_features()["pool"], features["pool"])
        report.update(precision=precision, recall=recall)
    return report


class FeatureMoments:
    """Running mean and covariance of feature rows, so features need not be kept in memory.

    ``add(features [n, D])`` accumulates float64 sums; ``statistics()`` returns ``(mu [D],
    sigma [D, D])`` as ``jaxar.eval.metrics.feature_statistics`` of all rows (unbiased)."""

    def __init__(self):
        self.count, self.sum, self.outer = 0, None, None

    def add(self, features: np.ndarray) -> None:
        x = np.asarray(features, np.float64)
        if self.sum is None:
            self.sum, self.outer = np.zeros(x.shape[1]), np.zeros((x.shape[1], x.shape[1]))
        self.count += len(x)
        self.sum += x.sum(axis=0)
        self.outer += x.T @ x

    def statistics(self) -> tuple[np.ndarray, np.ndarray]:
        if self.count < 2:
            raise ValueError(f"need at least 2 feature vectors for a covariance, got {self.count}")
        mu = self.sum / self.count
        sigma = (self.outer - self.count * np.outer(mu, mu)) / (self.count - 1)
        return mu, sigma


def make_reference_npz(
    images: Any, path: str | os.PathLike, inception: InceptionFeatures
) -> dict[str, Any]:
    """Writes an ADM reference batch: ``arr_0`` (uint8 RGB), ``mu`` / ``sigma`` (pool) and
    ``mu_s`` / ``sigma_s`` (spatial) of ``inception``'s features of ``images`` [N,H,W,1|3]
    (uint8, or float in [-1,1]). Returns a short summary."""
    rgb = to_rgb_uint8(images)
    features = inception(in_batches(rgb, inception.batch_size))
    mu, sigma = feature_statistics(features["pool"])
    mu_s, sigma_s = feature_statistics(features["spatial"])
    save_reference(path, rgb, mu, sigma, mu_s, sigma_s)
    return {
        "reference": os.fspath(path),
        "num_images": int(rgb.shape[0]),
        "image_shape": list(rgb.shape[1:]),
        "inception": inception.describe(),
    }
