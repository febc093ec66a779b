"""An independent judge of generated digits: a scikit-learn classifier trained on real digits.

Generated samples are scored by the class accuracy this classifier gives them against the labels
they were conditioned on. The judge shares nothing with the generators (no JAX, no tokenizer):
images are area-averaged down to 8x8 (the resolution of scikit-learn's digits), scaled to the
0..16 range of that dataset and classified by an RBF support vector machine.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from sklearn.svm import SVC

GRID = 8  # scikit-learn's digits are 8x8 with values 0..16


def digit_features(images: np.ndarray) -> np.ndarray:
    """uint8 [N,H,W,C] (H, W multiples of 8) -> float64 [N, 64] in 0..16."""
    images = np.asarray(images)
    if images.ndim != 4:
        raise ValueError(f"expected images [N,H,W,C], got shape {images.shape}")
    if images.dtype != np.uint8:
        raise ValueError(f"expected uint8 images, got dtype {images.dtype}")
    n, h, w, _ = images.shape
    if h % GRID or w % GRID:
        raise ValueError(f"image size {h}x{w} is not a multiple of {GRID}")
    grey = images.astype(np.float64).mean(axis=-1)
    pooled = grey.reshape(n, GRID, h // GRID, GRID, w // GRID).mean(axis=(2, 4))
    return (pooled * (16.0 / 255.0)).reshape(n, GRID * GRID)


@dataclass
class DigitJudge:
    """RBF-SVM digit classifier; ``fit`` on real digits, then ``accuracy`` on samples."""

    gamma: float = 0.001
    c: float = 10.0

    def __post_init__(self):
        self._svc = SVC(gamma=self.gamma, C=self.c)

    def fit(self, images: np.ndarray, labels: np.ndarray) -> DigitJudge:
        self._svc.fit(digit_features(images), np.asarray(labels))
        return self

    def predict(self, images: np.ndarray) -> np.ndarray:
        return self._svc.predict(digit_features(images)).astype(np.int32)

    def accuracy(self, images: np.ndarray, labels: np.ndarray) -> float:
        labels = np.asarray(labels)
        if labels.shape != (len(images),):
            raise ValueError(f"labels shape {labels.shape} does not match {len(images)} images")
        return float(np.mean(self.predict(images) == labels))

    def per_class_accuracy(self, images: np.ndarray, labels: np.ndarray) -> dict[int, float]:
        pred, labels = self.predict(images), np.asarray(labels)
        return {int(c): float(np.mean(pred[labels == c] == c)) for c in np.unique(labels)}
