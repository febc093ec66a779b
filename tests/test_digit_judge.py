import numpy as np
import pytest
from sklearn.datasets import load_digits

from jaxar.eval.digit_judge import DigitJudge, digit_features


def _digits16():
    data = load_digits()
    grey = (data.images * (255.0 / 16.0)).round().astype(np.uint8)  # [N,8,8]
    images = np.kron(grey, np.ones((2, 2), np.uint8))[..., None]  # [N,16,16,1]
    return images, data.target.astype(np.int32)


def test_features_recover_the_8x8_digits():
    images, _ = _digits16()
    feats = digit_features(images[:5])
    expected = load_digits().images[:5].reshape(5, 64)
    np.testing.assert_allclose(feats, expected, atol=16 / 255 * 0.5 + 1e-9)


def test_judge_is_accurate_on_held_out_real_digits_and_not_on_wrong_labels():
    images, labels = _digits16()
    rng = np.random.default_rng(0)
    order = rng.permutation(len(images))
    train, test = order[:1500], order[1500:]
    judge = DigitJudge().fit(images[train], labels[train])
    assert judge.accuracy(images[test], labels[test]) >= 0.97
    wrong = (labels[test] + 1) % 10
    assert judge.accuracy(images[test], wrong) < 0.05
    per_class = judge.per_class_accuracy(images[test], labels[test])
    assert set(per_class) == set(range(10))


def test_judge_rejects_bad_input():
    images, labels = _digits16()
    judge = DigitJudge().fit(images[:200], labels[:200])
    with pytest.raises(ValueError, match="uint8"):
        judge.predict(images[:4].astype(np.float32))
    with pytest.raises(ValueError, match="multiple of 8"):
        judge.predict(images[:4, :12, :12])
    with pytest.raises(ValueError, match="labels shape"):
        judge.accuracy(images[:4], labels[:3])
