"""grain pipeline: batches, shuffling, epochs, exact resume, per-process shards, global arrays."""

import io
import json

import jax
import numpy as np
import pytest
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P
from PIL import Image

from jaxar.data.digits import load_digits
from jaxar.data.global_batch import host_to_global
from jaxar.data.pipeline import make_array_dataset, make_image_dataset, take_batches
from jaxar.data.sources import ArraySource
from jaxar.data.transforms import to_uint8
from jaxar.sharding import make_mesh

N = 48  # examples in the toy source; label i identifies example i


@pytest.fixture(scope="module")
def toy_source():
    """48 distinct 8x8 grey images whose label is their index."""
    images = np.random.default_rng(0).integers(0, 256, (N, 8, 8, 1), dtype=np.uint8)
    return ArraySource(images, np.arange(N))


def _image_ds(source, **overrides):
    kwargs = dict(global_batch_size=8, image_size=8, channels=1, seed=0)
    kwargs.update(process_index=0, process_count=1)
    kwargs.update(overrides)
    return make_image_dataset(source, **kwargs)


def _labels(batches):
    return np.concatenate([b["label"] for b in batches])


def _assert_same_stream(first, second):
    assert len(first) == len(second)
    for a, b in zip(first, second):
        assert a.keys() == b.keys()
        for key in a:
            np.testing.assert_array_equal(a[key], b[key])


def test_batch_shapes_dtypes_range():
    images, labels = load_digits(16, 1, split="test")
    ds = _image_ds(ArraySource(images, labels), global_batch_size=32, image_size=16, channels=3)
    batch = next(iter(ds))
    assert batch["image"].shape == (32, 16, 16, 3) and batch["image"].dtype == np.float32
    assert batch["label"].shape == (32,) and batch["label"].dtype == np.int32
    assert batch["image"].min() >= -1.0 and batch["image"].max() <= 1.0
    assert batch["image"].min() == -1.0 and batch["image"].max() == 1.0  # digits span 0..255
    np.testing.assert_array_equal(batch["image"][..., 0], batch["image"][..., 2])  # grey -> RGB
    # Each output image is its source image (shuffled), normalised.
    by_label = [images[labels == y] for y in batch["label"]]
    for image, candidates in zip(to_uint8(batch["image"][..., :1]), by_label):
        assert any(np.array_equal(image, c) for c in candidates)


def test_seed_determinism_and_order(toy_source):
    first = take_batches(_image_ds(toy_source, seed=3), 6)
    _assert_same_stream(first, take_batches(_image_ds(toy_source, seed=3), 6))
    other = take_batches(_image_ds(toy_source, seed=4), 6)
    assert not np.array_equal(_labels(first), _labels(other))
    ordered = take_batches(_image_ds(toy_source, train=False), 6)
    np.testing.assert_array_equal(_labels(ordered), np.arange(N))


def test_every_example_once_per_epoch(toy_source):
    labels = _labels(take_batches(_image_ds(toy_source, seed=1), 3 * N // 8))
    epochs = labels.reshape(3, N)
    for epoch in epochs:
        np.testing.assert_array_equal(np.sort(epoch), np.arange(N))
    assert not np.array_equal(epochs[0], epochs[1])  # reshuffled each epoch
    assert not np.array_equal(epochs[0], np.arange(N))


def test_finite_epochs_and_remainder(toy_source):
    batches = list(_image_ds(toy_source, global_batch_size=10, num_epochs=2, drop_remainder=False))
    assert [len(b["label"]) for b in batches] == [10] * 9 + [6]
    np.testing.assert_array_equal(np.sort(_labels(batches)), np.repeat(np.arange(N), 2))
    dropped = list(_image_ds(toy_source, global_batch_size=10, num_epochs=1))
    assert len(dropped) == 4
    with pytest.raises(ValueError, match="fewer than one local batch"):
        _image_ds(toy_source, global_batch_size=64, num_epochs=1)


def _encoded_source():
    """Records with PNG bytes; record 5 is garbage and must be dropped."""
    rng = np.random.default_rng(1)
    records = []
    for i in range(20):
        buffer = io.BytesIO()
        Image.fromarray(rng.integers(0, 256, (10, 12, 3), dtype=np.uint8)).save(buffer, "PNG")
        records.append({"image": b"junk" if i == 5 else buffer.getvalue(), "label": i})
    return records


@pytest.mark.parametrize("kind", ["arrays_flip", "encoded_with_corrupt"])
def test_checkpoint_resume_is_exact(toy_source, kind):
    if kind == "arrays_flip":
        make = lambda: _image_ds(toy_source, seed=7, random_flip=True)  # noqa: E731
    else:
        make = lambda: _image_ds(_encoded_source(), channels=3, global_batch_size=4)  # noqa: E731
    k, more = 3, 9  # the continuation crosses an epoch boundary in both cases
    reference = take_batches(make(), k + more)
    iterator = iter(make())
    for _ in range(k):
        next(iterator)
    state = json.loads(json.dumps(iterator.get_state()))  # the state is plain JSON
    resumed = iter(make())
    resumed.set_state(state)
    _assert_same_stream(reference[k:], [next(resumed) for _ in range(more)])
    if kind == "encoded_with_corrupt":
        assert 5 not in _labels(reference)


def test_random_flip_flips_some_examples(toy_source):
    plain = next(iter(_image_ds(toy_source, global_batch_size=48, seed=2)))
    flipped = next(iter(_image_ds(toy_source, global_batch_size=48, seed=2, random_flip=True)))
    np.testing.assert_array_equal(plain["label"], flipped["label"])
    same = [np.array_equal(a, b) for a, b in zip(plain["image"], flipped["image"])]
    mirrored = [np.array_equal(a[:, ::-1], b) for a, b in zip(plain["image"], flipped["image"])]
    assert all(s or m for s, m in zip(same, mirrored))
    assert 10 < sum(mirrored) < 38


def test_process_shards_partition_the_data(toy_source):
    seen = []
    for index in range(4):
        batches = list(_image_ds(toy_source, num_epochs=1, process_index=index, process_count=4))
        assert all(b["label"].shape == (2,) for b in batches)  # 8 global / 4 processes
        seen.append(_labels(batches))
    assert sum(len(s) for s in seen) == N
    np.testing.assert_array_equal(np.sort(np.concatenate(seen)), np.arange(N))
    with pytest.raises(ValueError, match="not divisible by the process count"):
        _image_ds(toy_source, global_batch_size=6, process_count=4)
    with pytest.raises(ValueError, match="process_index"):
        _image_ds(toy_source, process_index=4, process_count=4)


def test_array_dataset_codes():
    codes = np.arange(30 * 5, dtype=np.int32).reshape(30, 5)
    arrays = {"codes": codes, "label": np.arange(30, dtype=np.int32) % 4}
    make = lambda seed: make_array_dataset(  # noqa: E731
        arrays, global_batch_size=6, seed=seed, process_index=0, process_count=1
    )
    batches = take_batches(make(0), 10)
    assert batches[0]["codes"].shape == (6, 5) and batches[0]["codes"].dtype == np.int32
    rows = np.concatenate([b["codes"] for b in batches])[:, 0] // 5
    np.testing.assert_array_equal(np.sort(rows[:30]), np.arange(30))
    np.testing.assert_array_equal(np.concatenate([b["label"] for b in batches]), rows % 4)
    assert not np.array_equal(rows[:30], rows[30:])
    iterator = iter(make(0))
    next(iterator), next(iterator)
    resumed = iter(make(0))
    resumed.set_state(iterator.get_state())
    _assert_same_stream(batches[2:6], [next(resumed) for _ in range(4)])
    with pytest.raises(ValueError, match="leading dimension"):
        make_array_dataset({"codes": codes, "label": np.arange(29)}, global_batch_size=2)


def test_host_to_global_on_eight_devices():
    assert jax.device_count() == 8
    mesh = make_mesh(data=2, fsdp=2, tensor=2)
    batch = {
        "image": np.arange(8 * 2 * 2 * 1, dtype=np.float32).reshape(8, 2, 2, 1),
        "label": np.arange(8, dtype=np.int32),
    }
    out = host_to_global(batch, mesh)
    for key, value in out.items():
        assert value.shape == batch[key].shape and value.dtype == batch[key].dtype
        assert value.sharding == NamedSharding(mesh, P(("data", "fsdp")))
        np.testing.assert_array_equal(np.asarray(value), batch[key])
        for shard in value.addressable_shards:  # each device holds its quarter of the batch
            assert shard.data.shape[0] == 2
            np.testing.assert_array_equal(np.asarray(shard.data), batch[key][shard.index])
    with pytest.raises(ValueError, match="not divisible by the 4 batch shards"):
        host_to_global({"label": np.arange(6)}, mesh)
    data_only = host_to_global(batch, make_mesh(data=8), spec=P("data"))
    assert data_only["label"].addressable_shards[0].data.shape == (1,)


@pytest.mark.slow
def test_worker_process_gives_the_same_stream(toy_source):
    reference = take_batches(_image_ds(toy_source, seed=5, random_flip=True), 7)
    iterator = iter(_image_ds(toy_source, seed=5, random_flip=True, worker_count=1))
    try:
        _assert_same_stream(reference, [next(iterator) for _ in range(7)])
    finally:
        iterator.close()
