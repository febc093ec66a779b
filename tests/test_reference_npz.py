"""ADM-layout .npz: round trips, streaming reads and clear errors for malformed files."""

import numpy as np
import pytest

from jaxar.eval.reference_npz import (
    iter_npz_images,
    load_reference,
    save_reference,
    save_samples_npz,
)


def _images(n=7, size=6, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (n, size, size, 3), dtype=np.uint8)


def _stats(d, seed=1):
    x = np.random.default_rng(seed).standard_normal((20, d))
    return x.mean(0), np.cov(x, rowvar=False)


def test_reference_round_trip(tmp_path):
    images = _images()
    mu, sigma = _stats(5)
    mu_s, sigma_s = _stats(3, seed=2)
    path = tmp_path / "ref.npz"
    save_reference(path, images, mu, sigma, mu_s, sigma_s)
    with np.load(path) as raw:  # the ADM layout, readable by the original evaluator
        assert sorted(raw.files) == ["arr_0", "mu", "mu_s", "sigma", "sigma_s"]
        assert raw["arr_0"].dtype == np.uint8
    ref = load_reference(path)
    np.testing.assert_array_equal(ref.images, images)
    for got, want in ((ref.mu, mu), (ref.sigma, sigma), (ref.mu_s, mu_s), (ref.sigma_s, sigma_s)):
        assert got.dtype == np.float64
        np.testing.assert_array_equal(got, want)
    assert ref.num_images == 7 and ref.image_shape == (7, 6, 6, 3)
    header_only = load_reference(path, load_images=False)
    assert header_only.images is None and header_only.image_shape == (7, 6, 6, 3)


def test_samples_round_trip_and_streaming(tmp_path):
    images, labels = _images(11), np.arange(11) % 3
    path = tmp_path / "samples.npz"
    save_samples_npz(path, images, labels)
    ref = load_reference(path, require_statistics=False)
    np.testing.assert_array_equal(ref.images, images)
    np.testing.assert_array_equal(ref.labels, labels)
    assert ref.mu is None and ref.sigma_s is None
    batches = list(iter_npz_images(path, batch_size=4))
    assert [b.shape[0] for b in batches] == [4, 4, 3]
    np.testing.assert_array_equal(np.concatenate(batches), images)


def test_missing_or_not_npz(tmp_path):
    with pytest.raises(FileNotFoundError, match="not found"):
        load_reference(tmp_path / "missing.npz")
    text = tmp_path / "text.npz"
    text.write_text("hello")
    with pytest.raises(ValueError, match="not an .npz"):
        load_reference(text)
    with pytest.raises(ValueError, match="not an .npz"):
        next(iter_npz_images(text, 2))


@pytest.mark.parametrize(
    "arrays, message",
    [
        ({"mu": np.zeros(3), "sigma": np.eye(3)}, r"lacks \['arr_0'\]"),
        ({"arr_0": _images()}, r"lacks \['mu', 'sigma'\]"),
        ({"arr_0": _images().astype(np.float32), "mu": np.zeros(3), "sigma": np.eye(3)}, "uint8"),
        ({"arr_0": _images()[..., :1], "mu": np.zeros(3), "sigma": np.eye(3)}, r"\[N, H, W, 3\]"),
        ({"arr_0": _images(), "mu": np.zeros(3), "sigma": np.eye(4)}, r"mu must be \[D\]"),
        ({"arr_0": _images(), "mu": np.zeros(3, np.int64), "sigma": np.eye(3)}, "floating"),
        (
            {"arr_0": _images(), "mu": np.zeros(3), "sigma": np.eye(3), "mu_s": np.zeros(2)},
            "mu_s and sigma_s must be given together",
        ),
    ],
)
def test_malformed_reference(tmp_path, arrays, message):
    path = tmp_path / "bad.npz"
    np.savez(path, **arrays)
    with pytest.raises(ValueError, match=message):
        load_reference(path)


def test_save_rejects_bad_arrays(tmp_path):
    with pytest.raises(ValueError, match="uint8"):
        save_samples_npz(tmp_path / "x.npz", _images().astype(np.float32))
    with pytest.raises(ValueError, match="labels"):
        save_samples_npz(tmp_path / "x.npz", _images(), labels=np.zeros(3, np.int32))
    with pytest.raises(ValueError, match="together"):
        save_reference(tmp_path / "x.npz", _images(), mu=np.zeros(3))
