"""A digits yardstick that sees diversity: class accuracy, Fréchet distance, precision / recall
and within-class diversity of generated digits.

Class accuracy alone (``digit_judge.DigitJudge``) cannot see mode collapse: one good image per
class scores 100 %. This module adds a feature space that no generator trains on, the hidden
layer of a small scikit-learn MLP classifier fitted on the real training digits (8x8
area-averaged pixels in 0..1, as the judge sees them; fixed seed, so deterministic), and in it
compares samples with the held-out real digits:

- ``frechet_distance``: FID's formula (``metrics.fid_from_features``) in this feature space;
- ``precision`` / ``recall``: improved precision and recall with k-NN manifolds
  (``metrics.precision_recall``, k = 3): real = held-out digits, fake = samples;
- ``diversity``: per class, the mean pairwise feature distance of the samples of that class over
  the same figure for the held-out real digits of that class, averaged over classes (1 = as
  varied as real digits, 0 = one image per class).

``real_reference`` scores real *training* digits (the same number per class as the samples)
in the same way, so every report carries the figures a perfect generator would get.
"""

from __future__ import annotations

import functools
import warnings
from dataclasses import dataclass
from typing import Any

import numpy as np
from scipy.spatial.distance import pdist
from sklearn.exceptions import ConvergenceWarning
from sklearn.neural_network import MLPClassifier

from jaxar.eval.digit_judge import DigitJudge, digit_features
from jaxar.eval.metrics import fid_from_features, precision_recall

Split = tuple[np.ndarray, np.ndarray]  # (uint8 images [N,H,W,1], int labels [N])
PR_NEIGHBOURS = 3  # k of the k-NN manifolds, as in Kynkaanniemi et al. and metrics.py


@dataclass
class DigitFeatureSpace:
    """Hidden-layer activations of an MLP digit classifier: uint8 [N,H,W,C] -> float [N, D]."""

    hidden: int = 64
    seed: int = 0
    max_iter: int = 200  # a fixed budget (deterministic); 96 % held-out accuracy

    def fit(self, images: np.ndarray, labels: np.ndarray) -> DigitFeatureSpace:
        self._mlp = MLPClassifier(
            hidden_layer_sizes=(self.hidden,), alpha=1e-3, max_iter=self.max_iter,
            random_state=self.seed,
        )  # fmt: skip
        with warnings.catch_warnings():  # the fixed iteration budget ends before "convergence"
            warnings.simplefilter("ignore", ConvergenceWarning)
            self._mlp.fit(digit_features(images) / 16.0, np.asarray(labels))
        return self

    def __call__(self, images: np.ndarray) -> np.ndarray:
        """uint8 [N,H,W,C] -> float64 [N, hidden] (ReLU activations)."""
        if not hasattr(self, "_mlp"):
            raise ValueError("DigitFeatureSpace is not fitted: call fit(images, labels) first")
        x = digit_features(images) / 16.0
        return np.maximum(x @ self._mlp.coefs_[0] + self._mlp.intercepts_[0], 0.0)


def _grey(images: np.ndarray) -> np.ndarray:
    """uint8 [N,H,W,C] -> uint8 [N,H,W,1] (RGB averaged)."""
    images = np.asarray(images)
    if images.ndim == 4 and images.shape[-1] > 1:
        return images.mean(axis=-1, keepdims=True).astype(np.uint8)
    return images


def mean_pairwise_distance(features: np.ndarray) -> float:
    """Mean Euclidean distance over the distinct pairs of rows of features [N, D] (N >= 2)."""
    if len(features) < 2:
        raise ValueError(f"need at least 2 features for a pairwise distance, got {len(features)}")
    return float(pdist(np.asarray(features, np.float64)).mean())


def within_class_diversity(
    fake: np.ndarray, fake_labels: np.ndarray, real: np.ndarray, real_labels: np.ndarray
) -> tuple[float, dict[int, float]]:
    """Per class c of fake_labels: mean pairwise distance of fake [M, D] rows of class c over
    that of real [N, D] rows of class c. Returns (mean over classes, {class: ratio})."""
    fake_labels, real_labels = np.asarray(fake_labels), np.asarray(real_labels)
    ratios = {}
    for c in np.unique(fake_labels):
        real_c = real[real_labels == c]
        if len(real_c) < 2:
            raise ValueError(f"class {int(c)} has {len(real_c)} real digits; need >= 2")
        ratios[int(c)] = mean_pairwise_distance(fake[fake_labels == c]) / mean_pairwise_distance(
            real_c
        )
    return float(np.mean(list(ratios.values()))), ratios


class DigitYardstick:
    """Judge + feature space fitted on real training digits; scores samples against held-out
    real digits (``score``) and real training digits likewise (``reference``)."""

    def __init__(self, train: Split, held_out: Split):
        """train, held_out: (uint8 images [N,H,W,1], int labels [N]) of real digits."""
        (self.train_images, self.train_labels), (held_images, self.held_labels) = train, held_out
        self.judge = DigitJudge().fit(self.train_images, self.train_labels)
        self.features = DigitFeatureSpace().fit(self.train_images, self.train_labels)
        self.held_features = self.features(held_images)

    def score(self, images: np.ndarray, labels: np.ndarray) -> dict[str, Any]:
        """Every figure for uint8 samples [N,H,W,C] conditioned on labels int [N]."""
        images, labels = _grey(images), np.asarray(labels)
        if labels.shape != (len(images),):
            raise ValueError(f"labels shape {labels.shape} does not match {len(images)} images")
        feats = self.features(images)
        k = min(PR_NEIGHBOURS, len(images) - 1)
        precision, recall = precision_recall(self.held_features, feats, k=k)
        diversity, per_class_diversity = within_class_diversity(
            feats, labels, self.held_features, self.held_labels
        )
        return {
            "class_accuracy": self.judge.accuracy(images, labels),
            "per_class_accuracy": self.judge.per_class_accuracy(images, labels),
            "frechet_distance": fid_from_features(self.held_features, feats),
            "precision": precision,
            "recall": recall,
            "diversity": diversity,
            "per_class_diversity": per_class_diversity,
            "num_samples": len(images),
        }

    def reference_digits(self, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Real training digits with the class counts of labels (the first of each class)."""
        picks = []
        for c, count in zip(*np.unique(np.asarray(labels), return_counts=True)):
            of_class = np.flatnonzero(self.train_labels == c)
            if count > len(of_class):
                raise ValueError(f"{count} samples of class {c}; only {len(of_class)} real ones")
            picks.append(of_class[:count])
        picks = np.concatenate(picks)
        return self.train_images[picks], self.train_labels[picks]

    def reference(self, labels: np.ndarray) -> dict[str, Any]:
        """The figures of real training digits with labels' class counts (the ideal row)."""
        return self.score(*self.reference_digits(labels))


@functools.lru_cache(maxsize=4)
def digits_yardstick(image_size: int = 16) -> DigitYardstick:
    """The yardstick over the bundled digits (train split fits, test split is held out).

    Fitting takes a few seconds on a CPU; it is cached per process and image size.
    """
    from jaxar.data import load_digits

    return DigitYardstick(
        load_digits(image_size=image_size, channels=1, split="train"),
        load_digits(image_size=image_size, channels=1, split="test"),
    )


def summary(report: dict[str, Any]) -> dict[str, float]:
    """The five headline figures of a ``score`` report."""
    keys = ("class_accuracy", "frechet_distance", "precision", "recall", "diversity")
    return {key: report[key] for key in keys}
