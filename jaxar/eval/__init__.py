"""Evaluation: FID Inception (Flax), FID / IS / precision-recall, features, ADM npz, PSNR/SSIM."""

from jaxar.eval.features import extract_features, extract_npz_features, inception_apply_fn
from jaxar.eval.image_metrics import psnr, ssim
from jaxar.eval.inception import (
    InceptionConfig,
    InceptionV3,
    load_inception_params,
    save_inception_params,
)
from jaxar.eval.metrics import (
    feature_statistics,
    fid_from_features,
    frechet_distance,
    inception_score,
    manifold_radii,
    precision_recall,
)
from jaxar.eval.reference_npz import (
    ReferenceBatch,
    iter_npz_images,
    load_reference,
    save_reference,
    save_samples_npz,
)

__all__ = [
    "InceptionConfig",
    "InceptionV3",
    "ReferenceBatch",
    "extract_features",
    "extract_npz_features",
    "feature_statistics",
    "fid_from_features",
    "frechet_distance",
    "inception_apply_fn",
    "inception_score",
    "iter_npz_images",
    "load_inception_params",
    "load_reference",
    "manifold_radii",
    "precision_recall",
    "psnr",
    "save_inception_params",
    "save_reference",
    "save_samples_npz",
    "ssim",
]
