"""Random-access data sources: TFDS (ArrayRecord) and in-memory arrays.

Every source has ``__len__`` and ``__getitem__(index) -> dict`` records, as grain's
``MapDataset.source`` expects. Image records are ``{"image": uint8 [H, W, C] or encoded bytes,
"label": int}``. The image-folder source lives in ``image_folder.py``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np


class DictArraySource:
    """A dict of arrays with a common leading dimension; record i is ``{k: v[i]}``."""

    def __init__(self, arrays: Mapping[str, Any]):
        if not arrays:
            raise ValueError("arrays must be a non-empty dict of arrays")
        self.arrays = {k: np.asarray(v) for k, v in arrays.items()}
        lengths = {k: (v.shape[0] if v.ndim else None) for k, v in self.arrays.items()}
        if None in lengths.values():
            raise ValueError(f"every array needs a leading example dimension, got {lengths}")
        if len(set(lengths.values())) != 1:
            raise ValueError(f"arrays must share their leading dimension, got {lengths}")
        self._length = next(iter(lengths.values()))
        if self._length == 0:
            raise ValueError("arrays hold no examples (leading dimension 0)")

    def __len__(self) -> int:
        return self._length

    def __getitem__(self, index: int) -> dict[str, np.ndarray]:
        return {k: v[index] for k, v in self.arrays.items()}

    def __repr__(self) -> str:
        shapes = {k: (v.shape, str(v.dtype)) for k, v in self.arrays.items()}
        return f"{type(self).__name__}({shapes})"


class ArraySource(DictArraySource):
    """In-memory images ``uint8 [N, H, W, C]`` (or ``[N, H, W]``) and integer labels ``[N]``."""

    def __init__(self, images: np.ndarray, labels: np.ndarray | Sequence[int]):
        images, labels = np.asarray(images), np.asarray(labels)
        if images.dtype != np.uint8:
            raise ValueError(f"images must be uint8 (0..255), got dtype {images.dtype}")
        if images.ndim == 3:
            images = images[..., None]
        if images.ndim != 4:
            raise ValueError(f"images must be [N, H, W, C] or [N, H, W], got shape {images.shape}")
        if labels.ndim != 1 or not np.issubdtype(labels.dtype, np.integer):
            raise ValueError(
                f"labels must be a 1-D integer array, got shape {labels.shape} dtype {labels.dtype}"
            )
        if labels.shape[0] != images.shape[0]:
            raise ValueError(
                f"{images.shape[0]} images but {labels.shape[0]} labels; counts must match"
            )
        super().__init__({"image": images, "label": labels.astype(np.int32)})

    def __getitem__(self, index: int) -> dict[str, Any]:
        return {"image": self.arrays["image"][index], "label": int(self.arrays["label"][index])}


def _skip_image_decoders(features: Any) -> dict[str, Any]:
    """SkipDecoding for every top-level ``tfds.features.Image`` so PIL decodes in the pipeline."""
    import tensorflow_datasets as tfds

    if not isinstance(features, tfds.features.FeaturesDict):
        return {}
    return {
        key: tfds.decode.SkipDecoding()
        for key, feature in features.items()
        if isinstance(feature, tfds.features.Image)
    }


def tfds_source(
    name: str,
    split: str,
    data_dir: str | None = None,
    *,
    decode_images_in_pipeline: bool = True,
) -> Sequence[dict[str, Any]]:
    """A prepared TFDS dataset read through ``tfds.data_source`` (ArrayRecord files).

    Nothing is downloaded: the dataset must already be prepared under ``data_dir``. With
    ``decode_images_in_pipeline`` (default), ``tfds.features.Image`` fields are returned as
    encoded bytes and decoded with PIL inside the grain map (``DecodeAndPrepare``), so no
    TensorFlow is needed and corrupt images are filtered instead of failing the read.
    Datasets storing raw ``tfds.features.Tensor`` images come back as uint8 arrays.

    Split may use TFDS slicing, e.g. ``"train[:90%]"``. Importing ``jaxar.data.tfds_builders``
    first registers jaxar's own builders (``jaxar_digits``).
    """
    import tensorflow_datasets as tfds

    from jaxar.data import tfds_builders  # noqa: F401  (registers jaxar builders)

    try:
        builder = tfds.builder(name, data_dir=data_dir, try_gcs=False)
    except Exception as err:
        raise ValueError(f"cannot open TFDS dataset {name!r} in {data_dir!r}: {err}") from err
    if not builder.is_prepared():
        raise ValueError(
            f"TFDS dataset {name!r} is not prepared in {builder.data_dir!r}; prepare it first "
            "(e.g. `tfds build` or builder.download_and_prepare(file_format='array_record'))"
        )
    decoders = _skip_image_decoders(builder.info.features) if decode_images_in_pipeline else None
    return builder.as_data_source(split=split, decoders=decoders or None)
