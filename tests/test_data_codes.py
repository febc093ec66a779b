"""Codes on disk (``jaxar.data.codes`` / ``jaxar.data.extract``) with a stand-in encoder:
views, the shard format, process-invariant batches, exact resume, and SIGKILL + re-run."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time

import codes_setup
import numpy as np
import pytest

from jaxar.data import ImageFolderSource
from jaxar.data.codes import make_codes_dataset, read_index
from jaxar.data.extract import StaleCodesError, extract_split, image_views, make_plan
from jaxar.data.transforms import normalize

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def pixel_encoder(images: np.ndarray) -> np.ndarray:
    """A deterministic stand-in tokenizer: 4x4 mean-pooled grey levels as 16 codes in 0..63."""
    b, h, w, _ = images.shape
    pooled = images.mean(-1).reshape(b, 4, h // 4, 4, w // 4).mean((2, 4))
    return np.clip(np.rint((pooled + 1) * 31.5), 0, 63).astype(np.int32).reshape(b, 16)


def plan_for(source, augment="none", shard_size=4, batch_size=4, meta=None):
    return make_plan(
        len(source), meta=meta or {"tokenizer": "pixels"},
        layout={"code_shape": [16], "code_dtype": "<u2"}, image_size=16, channels=1,
        augment=augment, crop_range=1.1, shard_size=shard_size, batch_size=batch_size,
    )  # fmt: skip


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    return codes_setup.write_image_folder(tmp_path_factory.mktemp("images"), 20)


def test_views_follow_llamagen_flip_and_ten_crop():
    image = np.arange(6 * 5 * 1, dtype=np.uint8).reshape(6, 5, 1)
    np.testing.assert_array_equal(image_views(image, "none", 4), image[None])
    flip = image_views(image, "flip", 4)
    np.testing.assert_array_equal(flip[1], image[:, ::-1])
    ten = image_views(image, "ten_crop", 4)
    assert ten.shape == (10, 4, 4, 1)
    np.testing.assert_array_equal(ten[0], image[:4, :4])  # top-left
    np.testing.assert_array_equal(ten[1], image[:4, 1:])  # top-right
    np.testing.assert_array_equal(ten[2], image[2:, :4])  # bottom-left
    np.testing.assert_array_equal(ten[3], image[2:, 1:])  # bottom-right
    np.testing.assert_array_equal(ten[4], image[1:5, 0:4])  # center: round((6-4)/2), round(.5)
    np.testing.assert_array_equal(ten[5:], image_views(image[:, ::-1].copy(), "ten_crop", 4)[:5])
    with pytest.raises(ValueError, match="accepted"):
        image_views(image, "rotate", 4)


def test_extracted_records_are_the_encoded_views_in_source_order(folder, tmp_path):
    source = ImageFolderSource(folder)
    plan = plan_for(source, augment="flip", shard_size=8, batch_size=6)
    index = extract_split(source, pixel_encoder, tmp_path / "train", plan=plan)
    assert index["num_examples"] == 40 and index["num_shards"] == 3
    assert [s["records"] for s in index["shards"]] == [16, 16, 8]
    batches = make_codes_dataset(tmp_path / "train", global_batch_size=40, train=False,
                                 num_epochs=1)  # fmt: skip
    (batch,) = list(batches)
    from jaxar.data.transforms import DecodeAndPrepare

    prepare = DecodeAndPrepare(16, 1)
    images = np.stack([prepare.map(source[i])["image"] for i in range(20)])
    views = np.stack([images, images[:, :, ::-1]], axis=1).reshape(40, 16, 16, 1)
    np.testing.assert_array_equal(batch["codes"], pixel_encoder(normalize(views)))
    np.testing.assert_array_equal(batch["id"], np.repeat(np.arange(20), 2))
    np.testing.assert_array_equal(batch["label"], np.repeat(source.labels, 2))
    assert batch["codes"].dtype == np.int32


def test_processes_read_their_rows_of_the_same_global_batches(folder, tmp_path):
    source = ImageFolderSource(folder)
    extract_split(source, pixel_encoder, tmp_path / "train", plan=plan_for(source))

    def ids(count, process):  # fmt: skip
        ds = make_codes_dataset(tmp_path / "train", global_batch_size=4, seed=3,
                                process_index=process, process_count=count)  # fmt: skip
        it = iter(ds)
        return [next(it)["id"] for _ in range(10)]  # two epochs of 5 steps

    one = ids(1, 0)
    halves = [ids(2, 0), ids(2, 1)]
    quarters = [ids(4, p) for p in range(4)]
    for step in range(10):
        np.testing.assert_array_equal(np.concatenate([h[step] for h in halves]), one[step])
        np.testing.assert_array_equal(np.concatenate([q[step] for q in quarters]), one[step])
    for epoch in (one[:5], one[5:]):
        assert sorted(np.concatenate(epoch).tolist()) == list(range(20))
    assert np.concatenate(one[:5]).tolist() != np.concatenate(one[5:]).tolist()  # reshuffled


def test_codes_iterator_resumes_exactly(folder, tmp_path):
    source = ImageFolderSource(folder)
    extract_split(source, pixel_encoder, tmp_path / "train", plan=plan_for(source))
    dataset = make_codes_dataset(tmp_path / "train", global_batch_size=4, seed=1)
    it = iter(dataset)
    for _ in range(3):
        next(it)
    state = it.get_state()
    expected = [next(it)["id"].tolist() for _ in range(4)]
    again = iter(dataset)
    again.set_state(state)
    assert [next(again)["id"].tolist() for _ in range(4)] == expected


def test_other_settings_are_never_reused(folder, tmp_path):
    source = ImageFolderSource(folder)
    extract_split(source, pixel_encoder, tmp_path / "train", plan=plan_for(source))
    other = plan_for(source, meta={"tokenizer": "other"})
    with pytest.raises(StaleCodesError, match="meta.tokenizer"):
        extract_split(source, pixel_encoder, tmp_path / "train", plan=other)
    index = extract_split(source, lambda x: pixel_encoder(x) // 2, tmp_path / "train",
                          plan=other, rebuild=True)  # fmt: skip
    assert index["meta"] == {"tokenizer": "other"}
    (batch,) = make_codes_dataset(tmp_path / "train", global_batch_size=20, train=False,
                                  num_epochs=1)  # fmt: skip
    assert batch["codes"].max() <= 31  # the new encoder's codes, not the old ones


EXTRACT_SCRIPT = textwrap.dedent("""
    import sys, time
    import numpy as np
    sys.path.insert(0, {tests!r})
    from test_data_codes import pixel_encoder, plan_for
    from jaxar.data import ImageFolderSource
    from jaxar.data.extract import extract_split

    def slow(images):
        time.sleep({delay})
        return pixel_encoder(images)

    source = ImageFolderSource({folder!r})
    plan = plan_for(source, augment="flip", shard_size=2, batch_size=2)
    extract_split(source, slow, {out!r}, plan=plan)
""")


def _extract_in_subprocess(folder, out, delay: float) -> subprocess.Popen:
    script = EXTRACT_SCRIPT.format(tests=os.path.join(REPO, "tests"), folder=str(folder),
                                   out=str(out), delay=delay)  # fmt: skip
    env = dict(os.environ, PYTHONPATH=REPO, JAX_PLATFORMS="cpu")
    return subprocess.Popen([sys.executable, "-c", script], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)  # fmt: skip


@pytest.mark.slow
def test_sigkill_mid_extraction_then_rerun_gives_identical_shards(folder, tmp_path):
    reference = _extract_in_subprocess(folder, tmp_path / "whole", 0.0)
    killed = _extract_in_subprocess(folder, tmp_path / "killed", 0.15)
    try:
        deadline = time.time() + 120
        while len(list((tmp_path / "killed").glob("*.json"))) < 4:  # plan + 3 shard markers
            assert killed.poll() is None and time.time() < deadline, killed.stdout.read()
            time.sleep(0.02)
        time.sleep(0.1)  # inside the next shard
        killed.send_signal(signal.SIGKILL)
        killed.wait(30)
    finally:
        if killed.poll() is None:
            killed.kill()
    assert killed.returncode == -signal.SIGKILL
    done = sorted(p.name for p in (tmp_path / "killed").glob("shard-*.json"))
    assert 3 <= len(done) < 10 and not (tmp_path / "killed" / "index.json").exists()
    rerun = _extract_in_subprocess(folder, tmp_path / "killed", 0.0)
    for proc in (reference, rerun):
        out = proc.communicate(timeout=120)[0]
        assert proc.returncode == 0, out[-3000:]
    whole, resumed = read_index(tmp_path / "whole"), read_index(tmp_path / "killed")
    assert whole == resumed and len(whole["shards"]) == 10
    for shard in whole["shards"]:
        a = (tmp_path / "whole" / shard["name"]).read_bytes()
        assert a == (tmp_path / "killed" / shard["name"]).read_bytes(), shard["name"]
    leftovers = [p.name for p in (tmp_path / "killed").iterdir() if ".tmp-" in p.name]
    assert not leftovers
    markers = json.loads((tmp_path / "killed" / done[0]).read_text())
    assert markers["records"] == 4  # 2 images x (crop, flip)
