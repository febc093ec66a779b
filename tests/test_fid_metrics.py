"""FID / IS / precision-recall against independent numpy/scipy references; sharded extraction."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.linalg

from jaxar.eval.features import extract_features, extract_npz_features, inception_apply_fn
from jaxar.eval.inception import InceptionConfig, InceptionV3, random_inception_variables
from jaxar.eval.metrics import (
    feature_statistics,
    fid_from_features,
    frechet_distance,
    inception_score,
    manifold_radii,
    precision_recall,
)
from jaxar.eval.reference_npz import save_samples_npz
from jaxar.sharding import make_mesh


def _scipy_frechet(mu1, s1, mu2, s2):
    covmean = scipy.linalg.sqrtm(s1 @ s2).real
    return float(((mu1 - mu2) ** 2).sum() + np.trace(s1) + np.trace(s2) - 2 * np.trace(covmean))


def _random_gaussian_features(rng, n, d, scale, shift):
    mixing = rng.standard_normal((d, d)) * scale
    return rng.standard_normal((n, d)) @ mixing + shift


def test_feature_statistics_match_numpy():
    x = np.random.default_rng(0).standard_normal((50, 6)).astype(np.float32)
    mu, sigma = feature_statistics(x)
    assert mu.dtype == sigma.dtype == np.float64
    np.testing.assert_allclose(mu, x.astype(np.float64).mean(0), rtol=1e-12)
    np.testing.assert_allclose(sigma, np.cov(x.astype(np.float64), rowvar=False), rtol=1e-12)


@pytest.mark.parametrize("d", [4, 32])
def test_frechet_distance_matches_scipy(d):
    rng = np.random.default_rng(d)
    a = _random_gaussian_features(rng, 400, d, 1.0, 0.0)
    b = _random_gaussian_features(rng, 300, d, 0.5, 0.3)
    stats_a, stats_b = feature_statistics(a), feature_statistics(b)
    expected = _scipy_frechet(*stats_a, *stats_b)
    got = frechet_distance(*stats_a, *stats_b)
    assert expected > 1.0
    assert abs(got - expected) <= 1e-6 * abs(expected)
    assert abs(fid_from_features(a, b) - expected) <= 1e-6 * abs(expected)
    assert abs(frechet_distance(*stats_b, *stats_a) - expected) <= 1e-6 * abs(expected)


def test_fid_of_a_set_with_itself_is_zero():
    x = _random_gaussian_features(np.random.default_rng(1), 200, 16, 2.0, 1.0)
    scale = np.trace(feature_statistics(x)[1])
    assert abs(fid_from_features(x, x)) < 1e-9 * scale
    # singular covariance (fewer samples than dimensions) stays finite and ~0
    few = x[:8]
    assert abs(fid_from_features(few, few)) < 1e-6 * scale


def test_frechet_distance_rejects_bad_shapes():
    with pytest.raises(ValueError, match="feature dimensions differ"):
        frechet_distance(np.zeros(3), np.eye(3), np.zeros(4), np.eye(4))
    with pytest.raises(ValueError, match=r"sigma \[D, D\]"):
        frechet_distance(np.zeros(3), np.eye(2), np.zeros(3), np.eye(3))


def _numpy_inception_score(probs, num_splits):
    scores = []
    n = len(probs)
    for i in range(num_splits):
        part = probs[i * n // num_splits : (i + 1) * n // num_splits]
        kl = part * (np.log(part) - np.log(part.mean(0, keepdims=True)))
        scores.append(np.exp(kl.sum(1).mean()))
    return np.mean(scores), np.std(scores)


def test_inception_score_known_values():
    uniform = np.full((20, 10), 0.1)
    assert inception_score(probs=uniform, num_splits=2) == pytest.approx((1.0, 0.0), abs=1e-12)
    confident = np.eye(10)[np.arange(40) % 10]  # one-hot, each split balanced
    mean, std = inception_score(probs=confident, num_splits=4)
    assert mean == pytest.approx(10.0, rel=1e-12) and std == pytest.approx(0.0, abs=1e-9)


def test_inception_score_matches_numpy_reference():
    logits = np.random.default_rng(2).standard_normal((103, 12)) * 3
    probs = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    expected = _numpy_inception_score(probs, 5)
    np.testing.assert_allclose(inception_score(logits, num_splits=5, batch_size=7), expected)
    np.testing.assert_allclose(inception_score(probs=probs, num_splits=5), expected, rtol=1e-10)
    with pytest.raises(ValueError, match="exactly one"):
        inception_score(logits, probs=probs)
    with pytest.raises(ValueError, match="num_splits"):
        inception_score(logits, num_splits=200)


def _brute_force_precision_recall(real, fake, k):
    def sq_dists(a, b):
        return ((a[:, None, :].astype(np.float64) - b[None, :, :]) ** 2).sum(-1)

    real_radii = np.sort(sq_dists(real, real), axis=1)[:, k]
    fake_radii = np.sort(sq_dists(fake, fake), axis=1)[:, k]
    precision = np.mean(np.any(sq_dists(fake, real) <= real_radii[None, :], axis=1))
    recall = np.mean(np.any(sq_dists(real, fake) <= fake_radii[None, :], axis=1))
    return precision, recall, real_radii


def test_precision_recall_matches_brute_force():
    rng = np.random.default_rng(3)
    real = rng.standard_normal((45, 8)).astype(np.float32)
    fake = (rng.standard_normal((37, 8)) * 1.4 + 0.5).astype(np.float32)
    precision, recall, real_radii = _brute_force_precision_recall(real, fake, k=3)
    assert 0.0 < precision < 1.0 and 0.0 < recall < 1.0
    got = precision_recall(real, fake, k=3, row_batch_size=16)  # partial last row block
    assert got == pytest.approx((precision, recall), abs=1e-12)
    np.testing.assert_allclose(manifold_radii(real, k=3, row_batch_size=10), real_radii, rtol=1e-4)


def test_precision_recall_of_identical_sets_is_one():
    x = np.random.default_rng(4).standard_normal((30, 5)).astype(np.float32)
    assert precision_recall(x, x.copy()) == (1.0, 1.0)
    far = x + 100.0
    assert precision_recall(x, far) == (0.0, 0.0)
    with pytest.raises(ValueError, match="feature dimensions differ"):
        precision_recall(x, x[:, :3])
    with pytest.raises(ValueError, match="k must be"):
        manifold_radii(x[:3], k=3)


@pytest.fixture(scope="module")
def tiny_inception():
    config = InceptionConfig(width_multiplier=1 / 16, num_classes=10, resize_to=None)
    return inception_apply_fn(InceptionV3(config)), random_inception_variables(config, seed=0)


def test_sharded_extraction_equals_single_device(tiny_inception, tmp_path):
    apply_fn, variables = tiny_inception
    images = np.random.default_rng(5).integers(0, 256, (13, 75, 75, 3), dtype=np.uint8)
    batches = [images[:5], {"image": images[5:8]}, images[8:]]  # re-chunked into 8 + 5
    keys = ("pool", "logits_unbiased")
    assert len(jax.devices()) == 8
    sharded = extract_features(
        apply_fn, variables, iter(batches), batch_size=8, mesh=make_mesh(), keys=keys
    )
    single = extract_features(
        apply_fn,
        variables,
        iter(batches),
        batch_size=8,
        mesh=make_mesh(devices=jax.devices()[:1]),
        keys=keys,
    )
    direct = jax.jit(apply_fn)(variables, jnp.asarray(images))
    for key in keys:
        assert sharded[key].shape == (13, direct[key].shape[1])
        np.testing.assert_allclose(sharded[key], single[key], rtol=1e-5, atol=1e-5)
        np.testing.assert_allclose(sharded[key], np.asarray(direct[key]), rtol=1e-5, atol=1e-5)
    path = tmp_path / "samples.npz"
    save_samples_npz(path, images)
    from_npz = extract_npz_features(apply_fn, variables, path, batch_size=8, keys=keys)
    np.testing.assert_allclose(from_npz["pool"], sharded["pool"], rtol=1e-5, atol=1e-5)


def test_extraction_errors(tiny_inception):
    apply_fn, variables = tiny_inception
    images = np.zeros((4, 75, 75, 3), np.uint8)
    with pytest.raises(ValueError, match="multiple of the 8"):
        extract_features(apply_fn, variables, [images], batch_size=6, mesh=make_mesh())
    with pytest.raises(ValueError, match="no images"):
        extract_features(apply_fn, variables, [], batch_size=8)
    with pytest.raises(ValueError, match=r"\[B,H,W,C\]"):
        extract_features(apply_fn, variables, [images[0]], batch_size=8)
