"""Sources and transforms: TFDS (raw and encoded images), image folders, arrays, channels."""

import io
import logging

import grain
import numpy as np
import pytest
import tensorflow_datasets as tfds
from etils import epath
from PIL import Image

from jaxar.data import transforms
from jaxar.data.digits import load_digits, prepare_digits_tfds
from jaxar.data.image_folder import ImageFolderSource
from jaxar.data.pipeline import make_image_dataset
from jaxar.data.sources import ArraySource, tfds_source


def _encode(array, fmt="PNG", mode=None, **kwargs):
    buffer = io.BytesIO()
    Image.fromarray(array, mode=mode).save(buffer, format=fmt, **kwargs)
    return buffer.getvalue()


def _pattern(h, w, c, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (h, w, c), dtype=np.uint8)


def _collect(ds):
    """All examples of a finite pipeline -> (uint8 images [N,H,W,C], labels [N])."""
    batches = list(ds)
    images = np.concatenate([b["image"] for b in batches])
    labels = np.concatenate([b["label"] for b in batches])
    return transforms.to_uint8(images), labels


# ---- TFDS -----------------------------------------------------------------------------------


def test_digits_tfds_round_trip_through_grain(tmp_path):
    prepared = prepare_digits_tfds(tmp_path, image_size=16, channels=1)
    assert prepared.name == "jaxar_digits/size16_ch1"
    for split in ("train", "test"):
        source = tfds_source("jaxar_digits", split, str(tmp_path))
        expected_images, expected_labels = load_digits(16, 1, split=split)
        assert len(source) == len(expected_labels)
        ds = make_image_dataset(
            source,
            global_batch_size=64,
            image_size=16,
            channels=1,
            train=False,
            num_epochs=1,
            drop_remainder=False,
            process_count=1,
            process_index=0,
        )
        images, labels = _collect(ds)
        np.testing.assert_array_equal(images, expected_images)
        np.testing.assert_array_equal(labels, expected_labels)


def test_digits_tfds_other_config_and_slicing(tmp_path):
    prepared = prepare_digits_tfds(tmp_path, image_size=8, channels=3)
    source = tfds_source(prepared.name, "test[:10]", prepared.data_dir)
    expected_images, expected_labels = load_digits(8, 3, split="test")
    records = list(grain.MapDataset.source(source))
    np.testing.assert_array_equal(np.stack([r["image"] for r in records]), expected_images[:10])
    np.testing.assert_array_equal([r["label"] for r in records], expected_labels[:10])
    with pytest.raises(ValueError, match="image_size"):
        prepare_digits_tfds(tmp_path, image_size=12)


def test_tfds_source_unprepared_raises(tmp_path):
    with pytest.raises(ValueError, match="not prepared"):
        tfds_source("jaxar_digits", "train", str(tmp_path))


class EncodedToyImages(tfds.core.GeneratorBasedBuilder):
    """Stores PNG bytes in a tfds.features.Image field, like ImageNet; one entry is garbage."""

    VERSION = tfds.core.Version("1.0.0")
    # Builders normally live in a package; a test module has to name its metadata folder.
    pkg_dir_path = epath.Path(__file__).parent

    def _info(self):
        features = {
            "image": tfds.features.Image(shape=(None, None, 3), encoding_format="png"),
            "label": tfds.features.ClassLabel(num_classes=3),
        }
        return self.dataset_info_from_configs(
            features=tfds.features.FeaturesDict(features), disable_shuffling=True
        )

    def _split_generators(self, dl_manager):
        return {"train": self._generate_examples()}

    def _generate_examples(self):
        for i in range(6):
            data = b"not an image" if i == 4 else _encode(_pattern(6 + i, 9, 3, seed=i))
            yield i, {"image": data, "label": i % 3}


def test_tfds_encoded_images_decode_in_pipeline(tmp_path, caplog):
    EncodedToyImages(data_dir=str(tmp_path)).download_and_prepare(file_format="array_record")
    source = tfds_source("encoded_toy_images", "train", str(tmp_path))
    assert isinstance(source[0]["image"], bytes)  # decoding is left to the grain map
    ds = make_image_dataset(
        source, global_batch_size=2, image_size=6, channels=3, train=False, num_epochs=1,
        drop_remainder=False, process_count=1, process_index=0,
    )  # fmt: skip
    with caplog.at_level(logging.WARNING):
        images, labels = _collect(ds)
    np.testing.assert_array_equal(labels, [0, 1, 2, 0, 2])  # example 4 (garbage) dropped
    assert images.shape == (5, 6, 6, 3)
    np.testing.assert_array_equal(images[0], _pattern(6, 9, 3, seed=0)[:, 1:7])
    assert "dropping unreadable example" in caplog.text


# ---- transforms -----------------------------------------------------------------------------


def test_decode_png_exact_and_jpeg_close():
    rgb = _pattern(10, 12, 3)
    np.testing.assert_array_equal(transforms.decode_image(_encode(rgb)), rgb)
    smooth = np.broadcast_to(np.linspace(0, 255, 12, dtype=np.uint8)[None, :, None], (10, 12, 3))
    jpeg = transforms.decode_image(_encode(np.ascontiguousarray(smooth), "JPEG", quality=95))
    assert jpeg.shape == (10, 12, 3) and np.abs(jpeg.astype(int) - smooth).mean() < 4
    grey = _pattern(5, 7, 1)[..., 0]
    np.testing.assert_array_equal(transforms.decode_image(_encode(grey)), grey[..., None])
    rgba = _pattern(5, 7, 4)
    np.testing.assert_array_equal(transforms.decode_image(_encode(rgba)), rgba)
    with pytest.raises(ValueError, match="cannot decode"):
        transforms.decode_image(b"\x89PNG garbage")


def test_convert_channels():
    grey = _pattern(4, 5, 1)
    np.testing.assert_array_equal(transforms.convert_channels(grey, 3), np.repeat(grey, 3, -1))
    np.testing.assert_array_equal(transforms.convert_channels(grey[..., 0], 1), grey)
    rgba = _pattern(4, 5, 4)
    np.testing.assert_array_equal(transforms.convert_channels(rgba, 3), rgba[..., :3])
    rgb = _pattern(4, 5, 3)
    pil_grey = np.asarray(Image.fromarray(rgb).convert("L"))
    np.testing.assert_array_equal(transforms.convert_channels(rgb, 1)[..., 0], pil_grey)
    with pytest.raises(ValueError, match="channels 2"):
        transforms.convert_channels(_pattern(4, 5, 2), 3)
    with pytest.raises(ValueError, match="uint8"):
        transforms.convert_channels(rgb.astype(np.float32), 3)
    with pytest.raises(ValueError, match="1 or 3"):
        transforms.convert_channels(rgb, 4)


def test_resize_and_center_crop():
    stripes = np.zeros((8, 24, 1), np.uint8)
    stripes[:, 8:16] = 200
    stripes[:, 16:] = 50
    np.testing.assert_array_equal(transforms.resize_and_center_crop(stripes, 8), stripes[:, 8:16])
    tall = np.full((40, 20, 3), 77, np.uint8)
    out = transforms.resize_and_center_crop(tall, 8)
    assert out.shape == (8, 8, 3) and (out == 77).all()
    small = _pattern(4, 6, 3)
    assert transforms.resize_and_center_crop(small, 12).shape == (12, 12, 3)


def test_normalize_round_trip():
    values = np.arange(256, dtype=np.uint8)
    normed = transforms.normalize(values)
    assert normed.dtype == np.float32 and normed.min() == -1.0 and normed.max() == 1.0
    np.testing.assert_array_equal(transforms.to_uint8(normed), values)
    np.testing.assert_array_equal(transforms.to_uint8(np.array([-3.0, 3.0])), [0, 255])


# ---- image folder ---------------------------------------------------------------------------


def _write_folder(root):
    """ant: 1 RGB png; cat: RGB png + jpeg; dog: grey png, RGBA png, garbage png, a txt."""
    files = {
        "ant/a0.png": _encode(_pattern(8, 8, 3, 1)),
        "cat/c0.png": _encode(_pattern(8, 8, 3, 2)),
        "cat/sub/c1.JPG": _encode(_pattern(8, 8, 3, 3), "JPEG"),
        "dog/d0.png": _encode(_pattern(8, 8, 1, 4)[..., 0]),
        "dog/d1.png": _encode(_pattern(8, 8, 4, 5)),
        "dog/d2.png": b"\x00garbage bytes, not a png",
        "dog/notes.txt": b"ignored",
    }
    for name, data in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)


def test_image_folder_skips_corrupt_and_labels_sorted(tmp_path, caplog):
    _write_folder(tmp_path)
    with caplog.at_level(logging.WARNING):
        source = ImageFolderSource(tmp_path)
    assert source.class_names == ["ant", "cat", "dog"]
    assert len(source) == 5
    assert source.num_skipped == 1 and source.skipped_files[0].endswith("d2.png")
    assert "d2.png" in caplog.text
    np.testing.assert_array_equal(source.labels, [0, 1, 1, 2, 2])
    np.testing.assert_array_equal(source[0]["image"], _pattern(8, 8, 3, 1))
    assert source[3]["image"].shape == (8, 8, 1) and source[4]["image"].shape == (8, 8, 4)


def test_image_folder_channels_converted_in_pipeline(tmp_path):
    _write_folder(tmp_path)
    source = ImageFolderSource(tmp_path, extensions=("png",))  # the jpeg is not listed
    kwargs = dict(global_batch_size=4, image_size=8, train=False, num_epochs=1)
    kwargs.update(drop_remainder=False, process_count=1, process_index=0)
    images, labels = _collect(make_image_dataset(source, channels=3, **kwargs))
    np.testing.assert_array_equal(labels, [0, 1, 2, 2])
    np.testing.assert_array_equal(images[2], np.repeat(_pattern(8, 8, 1, 4), 3, -1))
    np.testing.assert_array_equal(images[3], _pattern(8, 8, 4, 5)[..., :3])
    grey, _ = _collect(make_image_dataset(source, channels=1, **kwargs))
    assert grey.shape == (4, 8, 8, 1)
    np.testing.assert_array_equal(grey[2], _pattern(8, 8, 1, 4))


def test_image_folder_read_time_failures_are_filtered_and_counted(tmp_path):
    _write_folder(tmp_path)
    source = ImageFolderSource(tmp_path, verify=False)
    assert len(source) == 6 and source.num_skipped == 0
    ds = make_image_dataset(
        source, global_batch_size=3, image_size=8, channels=3, train=False, num_epochs=1,
        drop_remainder=False, process_count=1, process_index=0,
    )  # fmt: skip
    _, labels = _collect(ds)
    np.testing.assert_array_equal(labels, [0, 1, 1, 2, 2])
    assert source.num_skipped == 1 and source.skipped_files[0].endswith("d2.png")


def test_image_folder_bad_roots(tmp_path):
    with pytest.raises(ValueError, match="does not exist"):
        ImageFolderSource(tmp_path / "missing")
    with pytest.raises(ValueError, match="no class sub-folders"):
        ImageFolderSource(tmp_path)
    (tmp_path / "loose.png").write_bytes(_encode(_pattern(4, 4, 3)))
    with pytest.raises(ValueError, match="no class sub-folders"):
        ImageFolderSource(tmp_path)
    (tmp_path / "empty_class").mkdir()
    with pytest.raises(ValueError, match="no readable images"):
        ImageFolderSource(tmp_path)


# ---- arrays ---------------------------------------------------------------------------------


def test_array_source_validation():
    images, labels = _pattern(5, 4, 4, 3)[None].repeat(3, 0), np.arange(3)
    source = ArraySource(images, labels)
    assert len(source) == 3 and source[2]["label"] == 2
    np.testing.assert_array_equal(source[1]["image"], images[1])
    assert ArraySource(images[..., 0], labels)[0]["image"].shape == (5, 4, 1)
    with pytest.raises(ValueError, match="uint8"):
        ArraySource(images.astype(np.float32), labels)
    with pytest.raises(ValueError, match="counts must match"):
        ArraySource(images, np.arange(4))
    with pytest.raises(ValueError, match=r"\[N, H, W, C\]"):
        ArraySource(images[None], labels)
    with pytest.raises(ValueError, match="integer"):
        ArraySource(images, np.zeros(3, np.float32))


def test_two_channel_images_raise_in_pipeline():
    source = ArraySource(np.zeros((4, 6, 6, 2), np.uint8), np.zeros(4, np.int32))
    ds = make_image_dataset(
        source, global_batch_size=2, image_size=6, channels=3, process_count=1, process_index=0
    )
    with pytest.raises(ValueError, match="channels 2"):
        next(iter(ds))
