"""PSNR / SSIM against an independent float64 numpy + scipy reference."""

import numpy as np
import pytest
from scipy.ndimage import gaussian_filter

from jaxar.eval.image_metrics import psnr, ssim


def reference_ssim(x, y, data_range):
    """Wang et al. SSIM per image, gaussian 11x11 (sigma 1.5) with 'valid' borders, float64."""
    out = []
    c1, c2 = (0.01 * data_range) ** 2, (0.03 * data_range) ** 2
    for a, b in zip(x.astype(np.float64), y.astype(np.float64)):
        values = []
        for ch in range(a.shape[-1]):
            f = lambda img: gaussian_filter(img, 1.5, truncate=3.5)[5:-5, 5:-5]
            p, q = a[..., ch], b[..., ch]
            mu_p, mu_q = f(p), f(q)
            var_p, var_q = f(p * p) - mu_p**2, f(q * q) - mu_q**2
            cov = f(p * q) - mu_p * mu_q
            s = ((2 * mu_p * mu_q + c1) * (2 * cov + c2)) / (
                (mu_p**2 + mu_q**2 + c1) * (var_p + var_q + c2)
            )
            values.append(s.mean())
        out.append(np.mean(values))
    return np.asarray(out)


def images(seed, shape=(3, 20, 24, 3)):
    rng = np.random.default_rng(seed)
    x = rng.uniform(0, 1, shape).astype(np.float32)
    y = np.clip(x + rng.normal(0, 0.1, shape), 0, 1).astype(np.float32)
    return x, y


def test_psnr_matches_reference_and_identical_is_inf():
    x, y = images(0)
    mse = ((x.astype(np.float64) - y) ** 2).mean(axis=(1, 2, 3))
    np.testing.assert_allclose(psnr(x, y), 10 * np.log10(1.0 / mse), rtol=1e-5)
    np.testing.assert_allclose(psnr(2 * x - 1, 2 * y - 1, data_range=2.0), psnr(x, y), rtol=1e-5)
    same = psnr(x, x)
    assert np.all(np.isinf(same)) and np.all(np.asarray(same) > 0)


def test_ssim_matches_scipy_reference():
    x, y = images(1)
    np.testing.assert_allclose(ssim(x, y), reference_ssim(x, y, 1.0), atol=1e-5)
    grey_x, grey_y = images(2, (2, 16, 16, 1))
    np.testing.assert_allclose(ssim(grey_x, grey_y), reference_ssim(grey_x, grey_y, 1.0), atol=1e-5)
    x2, y2 = 2 * x - 1, 2 * y - 1  # [-1, 1] inputs: data_range 2 (not shift invariant)
    np.testing.assert_allclose(ssim(x2, y2, 2.0), reference_ssim(x2, y2, 2.0), atol=1e-5)
    np.testing.assert_allclose(ssim(x, x), 1.0, atol=1e-6)


def test_bad_inputs_raise():
    x, y = images(0)
    with pytest.raises(ValueError, match="differ"):
        psnr(x, y[:, :10])
    with pytest.raises(ValueError, match=r"\[B, H, W, C\]"):
        ssim(x[0], y[0])
    with pytest.raises(ValueError, match="window"):
        ssim(x[:, :8, :8], y[:, :8, :8])
