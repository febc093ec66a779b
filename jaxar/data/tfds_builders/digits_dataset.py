"""TFDS builder ``jaxar_digits``: sklearn's bundled handwritten digits, no download.

Images are stored as raw ``tfds.features.Tensor`` uint8 arrays (not ``tfds.features.Image``,
whose PNG encoding needs TensorFlow), so preparing and reading work without TensorFlow.
One config per (image_size, channels); the first, ``size16_ch1``, is the default.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import tensorflow_datasets as tfds

SIZES = (8, 16, 32, 64)
CHANNELS = (1, 3)


@dataclasses.dataclass
class DigitsConfig(tfds.core.BuilderConfig):
    image_size: int = 16
    channels: int = 1


def config_name(image_size: int, channels: int) -> str:
    """Name of the config for (image_size, channels); ValueError when none exists."""
    if image_size not in SIZES or channels not in CHANNELS:
        raise ValueError(
            f"jaxar_digits has configs for image_size in {SIZES} and channels in {CHANNELS}, "
            f"got image_size={image_size}, channels={channels}"
        )
    return f"size{image_size}_ch{channels}"


def _configs() -> list[DigitsConfig]:
    order = [(16, 1)] + [(s, c) for s in SIZES for c in CHANNELS if (s, c) != (16, 1)]
    return [
        DigitsConfig(
            name=config_name(s, c),
            description=f"{s}x{s} images with {c} channel(s)",
            image_size=s,
            channels=c,
        )
        for s, c in order
    ]


class JaxarDigits(tfds.core.GeneratorBasedBuilder):
    """sklearn digits upsampled to ``image_size`` (uint8), stratified 90/10 train/test split."""

    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES = {"1.0.0": "Initial release."}
    BUILDER_CONFIGS = _configs()

    def _info(self) -> tfds.core.DatasetInfo:
        size, channels = self.builder_config.image_size, self.builder_config.channels
        return self.dataset_info_from_configs(
            features=tfds.features.FeaturesDict(
                {
                    "image": tfds.features.Tensor(shape=(size, size, channels), dtype=np.uint8),
                    "label": tfds.features.ClassLabel(num_classes=10),
                }
            ),
            supervised_keys=("image", "label"),
            homepage="https://scikit-learn.org/stable/datasets/toy_dataset.html",
            # Keep sklearn's order so records line up with ``load_digits``; grain shuffles.
            disable_shuffling=True,
        )

    def _split_generators(self, dl_manager):
        del dl_manager  # Nothing to download: the data ships with scikit-learn.
        return {"train": self._generate_examples("train"), "test": self._generate_examples("test")}

    def _generate_examples(self, split: str):
        from jaxar.data.digits import load_digits

        cfg = self.builder_config
        images, labels = load_digits(cfg.image_size, cfg.channels, split=split)
        for index, (image, label) in enumerate(zip(images, labels)):
            yield index, {"image": image, "label": int(label)}
