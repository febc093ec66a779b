"""Data: sources (TFDS, image folder, arrays, bundled digits), transforms, grain pipeline,
code extraction to ArrayRecord shards and their reader (``codes``, ``extract``).

``jaxar.data.tfds_builders`` (TFDS builders) is imported lazily, only when TFDS is used.
"""

from jaxar.data.codes import CodesSource, make_codes_dataset, read_index
from jaxar.data.digits import (
    PreparedTfds,
    load_digits,
    load_sample_photo_crops,
    prepare_digits_tfds,
)
from jaxar.data.extract import AUGMENTATIONS, StaleCodesError, extract_split, make_plan
from jaxar.data.global_batch import host_to_global, local_batch_shards
from jaxar.data.image_folder import IMAGE_EXTENSIONS, ImageFolderSource
from jaxar.data.pipeline import (
    local_batch_size,
    make_array_dataset,
    make_image_dataset,
    take_batches,
)
from jaxar.data.sources import ArraySource, DictArraySource, tfds_source
from jaxar.data.transforms import (
    DecodeAndPrepare,
    DropCorrupt,
    Normalize,
    RandomFlip,
    convert_channels,
    decode_image,
    normalize,
    resize_and_center_crop,
    to_uint8,
)

__all__ = [
    "AUGMENTATIONS",
    "IMAGE_EXTENSIONS",
    "ArraySource",
    "CodesSource",
    "DecodeAndPrepare",
    "DictArraySource",
    "DropCorrupt",
    "ImageFolderSource",
    "Normalize",
    "PreparedTfds",
    "RandomFlip",
    "StaleCodesError",
    "convert_channels",
    "decode_image",
    "extract_split",
    "host_to_global",
    "load_digits",
    "load_sample_photo_crops",
    "local_batch_shards",
    "local_batch_size",
    "make_array_dataset",
    "make_codes_dataset",
    "make_image_dataset",
    "make_plan",
    "normalize",
    "prepare_digits_tfds",
    "read_index",
    "resize_and_center_crop",
    "take_batches",
    "tfds_source",
    "to_uint8",
]
