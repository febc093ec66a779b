"""Code extraction: image source -> augmented views -> tokenizer codes -> ArrayRecord shards.

``extract_split`` is run by every process at once; process p handles shards p, p + P, ...
(shard k = source images ``[k * shard_size, (k + 1) * shard_size)``, in order). Each shard
streams through grain (decode, resize, crop, views), is encoded batch by batch, and is written
under a temporary name, then published with its commit marker (``jaxar.data.codes``). A killed
run leaves only whole shards; re-running skips them and redoes the rest, so the result is the
same as an uninterrupted run. Host memory holds a few batches, whatever the dataset size.

Augmentations (LlamaGen's ``extract_codes_c2i.py``), each view one record:
- ``none``: the center crop;
- ``flip``: the center crop and its left-right mirror (2 views);
- ``ten_crop``: resize and center-crop to ``int(image_size * crop_range)`` (default 1.1), then
  the four corner crops and the center crop of size ``image_size``, then the same five crops of
  the mirrored image (torchvision's TenCrop order; 10 views).
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import tempfile
from collections.abc import Callable, Sequence
from typing import Any

import grain
import jax
import numpy as np
from array_record.python.array_record_module import ArrayRecordWriter
from etils import epath

from jaxar.data.codes import (
    FORMAT_VERSION,
    INDEX_FILE,
    PLAN_FILE,
    file_sha256,
    marker_name,
    read_index,
    read_json,
    record_dtype,
    shard_name,
    write_json_atomic,
)
from jaxar.data.pipeline import _resolve_process
from jaxar.data.transforms import DecodeAndPrepare, DropCorrupt, normalize
from jaxar.paths import PathLike, is_url, resolve

logger = logging.getLogger(__name__)

AUGMENTATIONS = {"none": 1, "flip": 2, "ten_crop": 10}
Encoder = Callable[[np.ndarray], np.ndarray]  # float32 [B, S, S, C] in [-1, 1] -> codes [B, ...]


class StaleCodesError(ValueError):
    """Codes on disk were made from another tokenizer, data config or extraction setting."""


def five_crops(image: np.ndarray, size: int) -> list[np.ndarray]:
    """Top-left, top-right, bottom-left, bottom-right and center ``size`` crops of [H, W, C]."""
    height, width = image.shape[:2]
    if size > min(height, width):
        raise ValueError(f"crop size {size} exceeds the image {height}x{width}")
    top, left = int(round((height - size) / 2.0)), int(round((width - size) / 2.0))
    corners = [(0, 0), (0, width - size), (height - size, 0), (height - size, width - size)]
    return [image[y : y + size, x : x + size] for y, x in [*corners, (top, left)]]


def image_views(image: np.ndarray, augment: str, size: int) -> np.ndarray:
    """uint8 [H, W, C] (already resized and cropped, see module doc) -> uint8 [V, S, S, C]."""
    if augment == "none":
        views = [image]
    elif augment == "flip":
        views = [image, image[:, ::-1]]
    elif augment == "ten_crop":
        views = five_crops(image, size) + five_crops(image[:, ::-1], size)
    else:
        raise ValueError(f"unknown augment {augment!r}; accepted: {sorted(AUGMENTATIONS)}")
    return np.ascontiguousarray(np.stack(views))


class _MakeViews(grain.transforms.Map):
    def __init__(self, augment: str, size: int):
        self.augment, self.size = augment, size

    def map(self, record: dict[str, Any]) -> dict[str, Any]:
        views = image_views(record["image"], self.augment, self.size)
        return {"image": views, "label": record["label"], "id": record["id"]}


def crop_size(image_size: int, augment: str, crop_range: float) -> int:
    """The size images are resized and center-cropped to before the views are taken."""
    return int(image_size * crop_range) if augment == "ten_crop" else image_size


def make_plan(num_source: int, **settings: Any) -> dict[str, Any]:
    """What a split's shards hold: the caller's ``meta`` (tokenizer, data config), the layout,
    augmentation and shard plan. Two runs with equal plans write identical shards."""
    augment, shard_size = settings["augment"], settings["shard_size"]
    if augment not in AUGMENTATIONS:
        raise ValueError(f"unknown augment {augment!r}; accepted: {sorted(AUGMENTATIONS)}")
    if shard_size < 1:
        raise ValueError(f"codes shard_size must be >= 1, got {shard_size}")
    if num_source < 1:
        raise ValueError("the image source holds no examples")
    meta = json.loads(json.dumps(settings.pop("meta"), sort_keys=True, default=str))
    plan = {"format": FORMAT_VERSION, "num_source": num_source, "meta": meta, **settings}
    plan["views"] = AUGMENTATIONS[augment]
    plan["num_shards"] = math.ceil(num_source / shard_size)
    plan["meta_sha256"] = hashlib.sha256(json.dumps(meta, sort_keys=True).encode()).hexdigest()
    return json.loads(json.dumps(plan, sort_keys=True))


def _differences(stored: dict[str, Any], plan: dict[str, Any]) -> list[str]:
    keys = sorted(set(stored) | set(plan))
    out = [k for k in keys if k not in ("meta", "meta_sha256") and stored.get(k) != plan.get(k)]
    meta_a, meta_b = stored.get("meta", {}), plan.get("meta", {})
    return out + [f"meta.{k}" for k in sorted(set(meta_a) | set(meta_b))
                  if meta_a.get(k) != meta_b.get(k)]  # fmt: skip


def _barrier(name: str) -> None:
    if jax.process_count() > 1:
        from jax.experimental import multihost_utils

        multihost_utils.sync_global_devices(name)


def _start(split_dir: epath.Path, plan: dict[str, Any], rebuild: bool) -> None:
    """Process 0: checks what is on disk against ``plan``; writes the plan."""
    split_dir.mkdir(parents=True, exist_ok=True)
    for stale in split_dir.glob(".*.tmp-*"):  # a killed run's partial files
        stale.unlink()
    stored = read_json(split_dir / PLAN_FILE)
    if stored is not None and stored != plan:
        differing = _differences(stored, plan)
        if not rebuild:
            raise StaleCodesError(
                f"codes in {split_dir} were extracted with other settings ({differing}); "
                "point codes_dir at a new folder or delete this one"
            )
        logger.warning("codes in %s are stale (%s): extracting them again", split_dir, differing)
        for path in split_dir.iterdir():
            path.unlink()
        stored = None
    if stored is None:
        write_json_atomic(split_dir / PLAN_FILE, plan)


def _shard_done(split_dir: epath.Path, shard: int, num_shards: int) -> bool:
    return (split_dir / marker_name(shard, num_shards)).exists() and (
        split_dir / shard_name(shard, num_shards)
    ).exists()


def _shard_batches(source, start: int, end: int, plan: dict[str, Any], read_threads: int):
    """Batches ``{"image": uint8 [b, V, S, S, C], "label": [b], "id": [b]}`` of one shard."""
    size, augment = plan["image_size"], plan["augment"]
    prepare = DecodeAndPrepare(crop_size(size, augment, plan["crop_range"]), plan["channels"])
    ds = grain.MapDataset.source(source)[start:end].map(prepare)
    ds = ds.map_with_index(lambda i, r: {**r, "id": np.int32(start + i)})
    ds = ds.filter(DropCorrupt()).map(_MakeViews(augment, size))
    per_batch = max(1, plan["batch_size"] // plan["views"])
    read = grain.ReadOptions(num_threads=read_threads, prefetch_buffer_size=2 * per_batch)
    return ds.to_iter_dataset(read).batch(per_batch, drop_remainder=False), per_batch


def _encode_records(batch: dict[str, np.ndarray], encode: Encoder, width: int, dtype) -> np.ndarray:
    """One batch of views -> the records (struct array ``dtype``); pads to ``width`` views."""
    views = batch["image"]
    count, num_views = views.shape[:2]
    flat = views.reshape(count * num_views, *views.shape[2:])
    padded = np.zeros((width, *flat.shape[1:]), np.uint8)
    padded[: len(flat)] = flat
    codes = np.asarray(encode(normalize(padded)))[: len(flat)]
    records = np.zeros(len(flat), dtype)
    records["codes"] = codes.reshape(records["codes"].shape)
    records["label"] = np.repeat(batch["label"], num_views)
    records["id"] = np.repeat(batch["id"], num_views)
    records["view"] = np.tile(np.arange(num_views), count)
    return records


def _write_shard(source, encode: Encoder, split_dir: epath.Path, shard: int, plan, threads):
    num_shards = plan["num_shards"]
    start = shard * plan["shard_size"]
    end = min(plan["num_source"], start + plan["shard_size"])
    name = shard_name(shard, num_shards)
    local_dir = epath.Path(tempfile.gettempdir()) if is_url(split_dir) else split_dir
    tmp = local_dir / f".{name}.tmp-{os.getpid()}"
    batches, per_batch = _shard_batches(source, start, end, plan, threads)
    dtype, total = record_dtype(plan["layout"]), 0
    writer = ArrayRecordWriter(os.fspath(tmp), "group_size:1")
    try:
        for batch in batches:
            records = _encode_records(batch, encode, per_batch * plan["views"], dtype)
            for record in records:
                writer.write(record.tobytes())
            total += len(records)
    finally:
        writer.close()
    sha = file_sha256(tmp)
    if is_url(split_dir):  # a GCS object becomes visible only once fully uploaded
        tmp.copy(split_dir / name, overwrite=True)
        tmp.unlink()
    else:
        tmp.replace(split_dir / name)
    marker = {"name": name, "records": total, "sha256": sha, "source": [start, end]}
    write_json_atomic(split_dir / marker_name(shard, num_shards), marker)
    logger.info("wrote %s (%d records)", split_dir / name, total)


def extract_split(
    source: Sequence[Any],
    encode: Encoder,
    split_dir: PathLike,
    *,
    plan: dict[str, Any],
    rebuild: bool = False,
    read_threads: int = 8,
    process_index: int | None = None,
    process_count: int | None = None,
) -> dict[str, Any]:
    """Encodes ``source`` into ``split_dir`` (see the module doc); returns the index.

    Args:
      source: random-access ``{"image", "label"}`` records (same on every process).
      encode: float32 [B, S, S, C] in [-1, 1] -> codes [B, L(, D)], B = the plan's batch size
        rounded down to whole images x views (every call gets exactly B, zero-padded).
      split_dir: ``CODES_DIR/<split>``; local or ``gs://``.
      plan: ``make_plan(len(source), meta=..., layout=..., image_size=..., channels=...,
        augment=..., crop_range=..., shard_size=..., batch_size=...)``.
      rebuild: shards of another plan are deleted and redone; otherwise StaleCodesError.
    """
    process, count = _resolve_process(process_index, process_count)
    split_dir = resolve(split_dir)
    if plan["num_source"] != len(source):
        raise ValueError(f"plan is for {plan['num_source']} images, source has {len(source)}")
    if process == 0:
        _start(split_dir, plan, rebuild)
    _barrier("jaxar_codes_plan")
    if read_json(split_dir / PLAN_FILE) != plan:
        raise StaleCodesError(f"{split_dir / PLAN_FILE} differs from this process's plan")
    num_shards = plan["num_shards"]
    for shard in range(process, num_shards, count):
        if not _shard_done(split_dir, shard, num_shards):
            _write_shard(source, encode, split_dir, shard, plan, read_threads)
    _barrier("jaxar_codes_shards")
    if process == 0:
        _write_index(split_dir, plan)
    _barrier("jaxar_codes_index")
    return read_index(split_dir)


def _write_index(split_dir: epath.Path, plan: dict[str, Any]) -> None:
    num_shards, shards = plan["num_shards"], []
    for shard in range(num_shards):
        marker = read_json(split_dir / marker_name(shard, num_shards))
        if marker is None:
            raise RuntimeError(f"shard {shard} of {split_dir} is missing after extraction")
        shards.append({k: marker[k] for k in ("name", "records", "sha256")})
    index = {**plan, "shards": shards, "num_examples": sum(s["records"] for s in shards)}
    write_json_atomic(split_dir / INDEX_FILE, index)
