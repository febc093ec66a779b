"""FID, Inception Score and improved precision / recall from Inception features.

Conventions follow the ADM evaluation suite (openai/guided-diffusion ``evaluations/``):
- FID statistics are float64 ``mu = mean(features)``, ``sigma = np.cov(features, rowvar=False)``
  (unbiased) of the 2048-d pool features;
- the Inception Score uses ``softmax(pool @ W)`` (no bias: the model's ``logits_unbiased``) and
  ``exp(E_x KL(p(y|x) || p(y)))`` per split, reported as (mean, std) over splits;
- precision / recall (Kynkaenniemi et al. 2019) use k=3 nearest-neighbour balls in feature space:
  a sample counts for precision when it lies inside the k-NN ball of some real feature, a real
  feature counts for recall when it lies inside the k-NN ball of some sample.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
from numpy.typing import ArrayLike


def _as_features(features: ArrayLike, name: str) -> np.ndarray:
    x = np.asarray(features)
    if x.ndim != 2 or x.shape[0] < 1:
        raise ValueError(f"{name} must be a non-empty 2-D array [N, D], got shape {x.shape}")
    if not np.all(np.isfinite(x)):
        raise ValueError(f"{name} holds non-finite values")
    return x


def feature_statistics(features: ArrayLike) -> tuple[np.ndarray, np.ndarray]:
    """features [N, D] -> (mu [D], sigma [D, D]) in float64, sigma unbiased as ``np.cov``."""
    x = _as_features(features, "features").astype(np.float64)
    if x.shape[0] < 2:
        raise ValueError(f"need at least 2 feature vectors for a covariance, got {x.shape[0]}")
    mu = x.mean(axis=0)
    centred = x - mu
    sigma = centred.T @ centred / (x.shape[0] - 1)
    return mu, sigma


def _sqrt_psd(matrix: np.ndarray) -> np.ndarray:
    """Symmetric square root of a symmetric PSD matrix (eigenvalues clipped at 0)."""
    eigvals, eigvecs = np.linalg.eigh(matrix)
    return (eigvecs * np.sqrt(np.clip(eigvals, 0.0, None))) @ eigvecs.T


def _check_stats(mu: ArrayLike, sigma: ArrayLike, name: str) -> tuple[np.ndarray, np.ndarray]:
    mu = np.atleast_1d(np.asarray(mu, dtype=np.float64))
    sigma = np.atleast_2d(np.asarray(sigma, dtype=np.float64))
    if mu.ndim != 1 or sigma.shape != (mu.shape[0], mu.shape[0]):
        raise ValueError(f"{name}: expected mu [D] and sigma [D, D], got {mu.shape}, {sigma.shape}")
    return mu, sigma


def frechet_distance(mu1: ArrayLike, sigma1: ArrayLike, mu2: ArrayLike, sigma2: ArrayLike) -> float:
    """Fréchet distance ``|mu1-mu2|^2 + tr(S1) + tr(S2) - 2 tr((S1 S2)^(1/2))`` in float64.

    ``tr((S1 S2)^(1/2))`` is computed as the sum of square roots of the eigenvalues of the
    symmetric PSD matrix ``S1^(1/2) S2 S1^(1/2)`` (similar to ``S1 S2``), which needs no
    regularising epsilon for singular covariances.
    """
    mu1, sigma1 = _check_stats(mu1, sigma1, "first statistics")
    mu2, sigma2 = _check_stats(mu2, sigma2, "second statistics")
    if mu1.shape != mu2.shape:
        raise ValueError(f"feature dimensions differ: {mu1.shape[0]} vs {mu2.shape[0]}")
    sigma1 = (sigma1 + sigma1.T) / 2
    sigma2 = (sigma2 + sigma2.T) / 2
    root1 = _sqrt_psd(sigma1)
    product = root1 @ sigma2 @ root1
    eigvals = np.linalg.eigvalsh((product + product.T) / 2)
    tr_covmean = np.sqrt(np.clip(eigvals, 0.0, None)).sum()
    diff = mu1 - mu2
    return float(diff @ diff + np.trace(sigma1) + np.trace(sigma2) - 2.0 * tr_covmean)


def fid_from_features(features1: ArrayLike, features2: ArrayLike) -> float:
    """FID between two feature sets [N1, D] and [N2, D]."""
    return frechet_distance(*feature_statistics(features1), *feature_statistics(features2))


def _log_probs(logits: ArrayLike | None, probs: ArrayLike | None) -> np.ndarray:
    if (logits is None) == (probs is None):
        raise ValueError("pass exactly one of logits or probs")
    if logits is not None:
        x = _as_features(logits, "logits").astype(np.float64)
        x = x - x.max(axis=1, keepdims=True)
        return x - np.log(np.exp(x).sum(axis=1, keepdims=True))
    p = _as_features(probs, "probs").astype(np.float64)
    if np.any(p < 0) or not np.allclose(p.sum(axis=1), 1.0, atol=1e-4):
        raise ValueError("probs must be non-negative rows that sum to 1")
    with np.errstate(divide="ignore"):
        return np.log(p)


def inception_score(
    logits: ArrayLike | None = None,
    *,
    probs: ArrayLike | None = None,
    num_splits: int = 10,
    batch_size: int = 8192,
) -> tuple[float, float]:
    """Inception Score (mean, std) over ``num_splits`` equal splits.

    logits: [N, K] (use the model's ``logits_unbiased`` for numbers comparable to the ADM
    evaluator / improved-gan), or probs: [N, K] class probabilities. Each split scores
    ``exp(mean_i sum_y p(y|x_i) (log p(y|x_i) - log p(y)))`` with ``p(y)`` the split's mean
    prediction; rows are processed ``batch_size`` at a time in float64.
    """
    log_p = _log_probs(logits, probs)
    n = log_p.shape[0]
    if not 1 <= num_splits <= n:
        raise ValueError(f"num_splits must be in [1, {n}] for {n} predictions, got {num_splits}")
    scores = []
    for i in range(num_splits):
        part = log_p[i * n // num_splits : (i + 1) * n // num_splits]
        marginal = sum(
            np.exp(part[j : j + batch_size]).sum(0) for j in range(0, len(part), batch_size)
        )
        with np.errstate(divide="ignore"):
            log_marginal = np.log(marginal / len(part))
        kl = 0.0
        for j in range(0, len(part), batch_size):
            chunk = part[j : j + batch_size]
            p = np.exp(chunk)
            with np.errstate(invalid="ignore"):  # p * (log p - log p(y)) with 0 * log 0 = 0
                kl += np.where(p > 0, p * (chunk - log_marginal), 0.0).sum()
        scores.append(np.exp(kl / len(part)))
    return float(np.mean(scores)), float(np.std(scores))


@jax.jit
def pairwise_sq_distances(u: jax.Array, v: jax.Array) -> jax.Array:
    """Squared Euclidean distances [N, M] between rows of u [N, D] and v [M, D] (float32)."""
    u = u.astype(jnp.float32)
    v = v.astype(jnp.float32)
    uv = jnp.dot(u, v.T, precision=jax.lax.Precision.HIGHEST)
    d = jnp.sum(u * u, 1)[:, None] - 2.0 * uv + jnp.sum(v * v, 1)[None, :]
    return jnp.maximum(d, 0.0)


@functools.partial(jax.jit, static_argnames="k")
def _kth_neighbour_block(rows: jax.Array, features: jax.Array, k: int) -> jax.Array:
    d = pairwise_sq_distances(rows, features)  # [R, N]
    smallest = -jax.lax.top_k(-d, k + 1)[0]  # [R, k+1]; index 0 is the point itself
    return smallest[:, k]


@jax.jit
def _inside_any_ball(rows: jax.Array, centres: jax.Array, radii: jax.Array) -> jax.Array:
    d = pairwise_sq_distances(rows, centres)  # [R, N]
    return jnp.any(d <= radii[None, :], axis=1)


def _row_blocks(x: np.ndarray, block: int):
    """Yields (start, rows padded to a fixed block size) so each jitted shape compiles once."""
    block = min(block, x.shape[0])
    for start in range(0, x.shape[0], block):
        rows = x[start : start + block]
        if rows.shape[0] < block:
            rows = np.concatenate([rows, np.repeat(rows[-1:], block - rows.shape[0], 0)])
        yield start, rows


def manifold_radii(features: ArrayLike, k: int = 3, row_batch_size: int = 1024) -> np.ndarray:
    """Squared distance of each feature [N, D] to its k-th nearest other feature -> [N]."""
    x = _as_features(features, "features").astype(np.float32)
    if not 1 <= k < x.shape[0]:
        raise ValueError(f"k must be in [1, {x.shape[0] - 1}] for {x.shape[0]} features, got {k}")
    all_x = jnp.asarray(x)
    radii = np.empty(x.shape[0], np.float32)
    for start, rows in _row_blocks(x, row_batch_size):
        block = np.asarray(_kth_neighbour_block(jnp.asarray(rows), all_x, k))
        radii[start : start + len(block)] = block[: x.shape[0] - start]
    return radii


def _fraction_inside(points: np.ndarray, centres: np.ndarray, radii: np.ndarray, block: int):
    centres, radii = jnp.asarray(centres), jnp.asarray(radii)
    inside = np.empty(points.shape[0], bool)
    for start, rows in _row_blocks(points, block):
        flags = np.asarray(_inside_any_ball(jnp.asarray(rows), centres, radii))
        inside[start : start + len(flags)] = flags[: points.shape[0] - start]
    return float(inside.mean())


def precision_recall(
    real_features: ArrayLike, fake_features: ArrayLike, k: int = 3, row_batch_size: int = 1024
) -> tuple[float, float]:
    """Improved precision and recall of fake [M, D] against real [N, D] features.

    precision: fraction of fake features inside some real k-NN ball; recall: fraction of real
    features inside some fake k-NN ball. Distances are computed in jitted row blocks.
    """
    real = _as_features(real_features, "real_features").astype(np.float32)
    fake = _as_features(fake_features, "fake_features").astype(np.float32)
    if real.shape[1] != fake.shape[1]:
        raise ValueError(f"feature dimensions differ: {real.shape[1]} vs {fake.shape[1]}")
    real_radii = manifold_radii(real, k, row_batch_size)
    fake_radii = manifold_radii(fake, k, row_batch_size)
    precision = _fraction_inside(fake, real, real_radii, row_batch_size)
    recall = _fraction_inside(real, fake, fake_radii, row_batch_size)
    return precision, recall
