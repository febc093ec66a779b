"""Tokenized datasets on disk: ArrayRecord shards of flat codes with a JSON index.

Layout of one split, ``CODES_DIR/<split>/`` (local folder or ``gs://`` URL)::

    plan.json                              written first: what the shards hold (meta, plan)
    shard-00003-of-00010.array_record      one per block of ``shard_size`` source images
    shard-00003-of-00010.json              its commit marker: record count and sha256
    index.json                             written last: the split is complete

Every record is one view of one source image: the fixed-size little-endian struct
``record_dtype(layout)`` = ``codes [L(, D)]`` (uint16 when the vocabulary fits, else int32;
continuous tokenizers' latents as float16, bfloat16 or float32),
``label``, ``id`` (the source index) and ``view`` (which augmentation view), all int32.

``make_codes_dataset`` reads a split with grain (``ArrayRecordDataSource``) and yields
``{"codes": int32 [B, L(, D)], "label": int32 [B], "id": int32 [B]}`` (codes float32 for latents).
Row r of global batch s is record ``order[s * G + r]`` of one seeded permutation per epoch;
process p takes rows ``[p * B, (p + 1) * B)`` of every global batch, so an epoch visits each
record exactly once over all processes and the global batches do not depend on the process
count.

The open-source ArrayRecord reader opens local files only, so a ``gs://`` split is copied
(once, verified by sha256) to a local cache folder before reading (``docs/DATA.md``).
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
import tempfile
from collections.abc import Mapping
from typing import Any

import grain
import ml_dtypes  # noqa: F401  (registers the "bfloat16" numpy dtype used in record layouts)
import numpy as np
from etils import epath

from jaxar.data.pipeline import _batched, _resolve_process, local_batch_size
from jaxar.paths import PathLike, is_url, resolve

PLAN_FILE, INDEX_FILE = "plan.json", "index.json"
FORMAT_VERSION = 1


def shard_name(shard: int, num_shards: int) -> str:
    return f"shard-{shard:05d}-of-{num_shards:05d}.array_record"


def marker_name(shard: int, num_shards: int) -> str:
    return f"shard-{shard:05d}-of-{num_shards:05d}.json"


# Storage dtypes of continuous latents (``CodesOptions.latent_dtype``).
LATENT_DTYPES = {"float16": "<f2", "bfloat16": "bfloat16", "float32": "<f4"}


def code_dtype(vocab_size: int) -> str:
    """Storage dtype of code ids: uint16 when every id fits, else int32."""
    return "<u2" if vocab_size <= 2**16 else "<i4"


def is_latent_layout(layout: Mapping[str, Any]) -> bool:
    """Whether a split holds float latents (continuous tokenizers) rather than code ids."""
    return layout["code_dtype"] in LATENT_DTYPES.values()


def record_dtype(layout: Mapping[str, Any]) -> np.dtype:
    """The struct of one record; ``layout = {"code_shape": [L(, D)], "code_dtype": str}``."""
    return np.dtype([
        ("codes", layout["code_dtype"], tuple(layout["code_shape"])),
        ("label", "<i4"),
        ("id", "<i4"),
        ("view", "<i4"),
    ])  # fmt: skip


def read_json(path: PathLike) -> dict[str, Any] | None:
    """The JSON object at ``path``, or None when it does not exist."""
    path = resolve(path)
    return json.loads(path.read_text()) if path.exists() else None


def write_json_atomic(path: PathLike, value: Any) -> None:
    """Writes JSON so that readers see the old file or the whole new one, never a part.

    Local: a temporary name in the same folder, then rename. ``gs://``: one object upload,
    which GCS makes visible only once complete."""
    path = resolve(path)
    text = json.dumps(value, indent=1, sort_keys=True)
    if is_url(path):
        path.write_text(text)
        return
    tmp = path.parent / f".{path.name}.tmp-{os.getpid()}"
    tmp.write_text(text)
    tmp.replace(path)


def file_sha256(path: PathLike) -> str:
    digest = hashlib.sha256()
    with resolve(path).open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def read_index(split_dir: PathLike) -> dict[str, Any]:
    """The index of a complete split; a clear error when it is missing."""
    index = read_json(resolve(split_dir) / INDEX_FILE)
    if index is None:
        raise FileNotFoundError(
            f"no {INDEX_FILE} in {split_dir}: the codes are missing or their extraction is "
            "unfinished (run experiments/extract_codes.py, or train_generator extracts them)"
        )
    if index.get("format") != FORMAT_VERSION:
        raise ValueError(f"{split_dir}/{INDEX_FILE} has format {index.get('format')}, "
                         f"this version reads {FORMAT_VERSION}")  # fmt: skip
    return index


def _local_shards(split_dir: epath.Path, index: dict[str, Any], cache_dir: PathLike | None):
    """Local paths of the split's shards; ``gs://`` shards are copied to a cache first."""
    shards = index["shards"]
    if not is_url(split_dir):
        return [os.fspath(split_dir / s["name"]) for s in shards]
    root = epath.Path(cache_dir or os.path.join(tempfile.gettempdir(), "jaxar_codes"))
    local = root / index["meta_sha256"][:16] / split_dir.name
    local.mkdir(parents=True, exist_ok=True)
    paths = []
    for shard in shards:
        target = local / shard["name"]
        if not (target.exists() and file_sha256(target) == shard["sha256"]):
            tmp = local / f".{shard['name']}.tmp-{os.getpid()}"
            (split_dir / shard["name"]).copy(tmp, overwrite=True)
            if file_sha256(tmp) != shard["sha256"]:
                raise ValueError(f"{split_dir / shard['name']}: sha256 differs from the index")
            tmp.replace(target)
        paths.append(os.fspath(target))
    return paths


class CodesSource:
    """Random access to the raw records of a split, in shard order (``__getitem__ -> bytes``)."""

    def __init__(self, split_dir: PathLike, cache_dir: PathLike | None = None):
        self.split_dir = resolve(split_dir)
        self.index = read_index(self.split_dir)
        paths = _local_shards(self.split_dir, self.index, cache_dir)
        ranges = [f"{p}[0:{s['records']}]" for p, s in zip(paths, self.index["shards"])]
        self._source = grain.sources.ArrayRecordDataSource(ranges)

    def __len__(self) -> int:
        return len(self._source)

    def __getitem__(self, index: int) -> bytes:
        return self._source[index]

    def __repr__(self) -> str:
        return f"CodesSource({os.fspath(self.split_dir)!r}, records={len(self)})"


class ParseCodes(grain.transforms.Map):
    """Raw record bytes -> ``{"codes": int32 [L(, D)], "label": int32, "id": int32}`` (codes
    float32 for latents)."""

    def __init__(self, layout: Mapping[str, Any]):
        self.dtype = record_dtype(layout)
        self.codes_dtype = np.float32 if is_latent_layout(layout) else np.int32

    def map(self, record: bytes) -> dict[str, np.ndarray]:
        row = np.frombuffer(record, dtype=self.dtype, count=1)[0]
        return {
            "codes": row["codes"].astype(self.codes_dtype),
            "label": np.int32(row["label"]),
            "id": np.int32(row["id"]),
        }


class ProcessRows(grain.MapDataset):
    """Process ``p``'s rows of consecutive global batches of ``parent``.

    Element ``i`` is ``parent[(i // B) * G + p * B + i % B]`` (B local, G global batch), so
    the processes together read every element of each whole global batch exactly once."""

    def __init__(self, parent: grain.MapDataset, process: int, count: int, local_batch: int):
        super().__init__(parent)
        self._process, self._count, self._local = process, count, local_batch
        global_batch = local_batch * count
        self._length = (len(parent) // global_batch) * local_batch
        if len(parent) < sys.maxsize and self._length == 0:
            raise ValueError(f"{len(parent)} records hold no whole global batch of {global_batch}")

    def __len__(self) -> int:
        return self._length

    def __getitem__(self, index):
        if isinstance(index, slice):
            return self.slice(index)
        step, row = divmod(index, self._local)
        return self._parent[step * self._local * self._count + self._process * self._local + row]

    def __str__(self) -> str:
        return f"ProcessRows(process={self._process}/{self._count}, local_batch={self._local})"


def make_codes_dataset(
    split_dir: PathLike,
    *,
    global_batch_size: int,
    seed: int = 0,
    train: bool = True,
    num_epochs: int | None = None,
    worker_count: int = 0,
    process_index: int | None = None,
    process_count: int | None = None,
    cache_dir: PathLike | None = None,
) -> grain.IterDataset:
    """Batches ``{"codes": int32 [B, L(, D)], "label": int32 [B], "id": int32 [B]}`` of a split.

    ``B = global_batch_size // process_count``; see the module doc for which rows each process
    reads. ``train`` shuffles (a new permutation each epoch, from ``seed``); ``num_epochs=None``
    repeats forever; a last partial global batch of an epoch joins the next epoch (finite
    epochs: dropped). The iterator is checkpointable (``get_state`` / ``set_state``).
    """
    index, count = _resolve_process(process_index, process_count)
    batch = local_batch_size(global_batch_size, count)
    if num_epochs is not None and num_epochs < 1:
        raise ValueError(f"num_epochs must be None (forever) or >= 1, got {num_epochs}")
    source = CodesSource(split_dir, cache_dir)
    ds = grain.MapDataset.source(source)
    if train:
        ds = ds.shuffle(seed=seed)
    ds = ProcessRows(ds.repeat(num_epochs), index, count, batch)
    ds = ds.map(ParseCodes(source.index["layout"]))
    return _batched(ds, batch, drop_remainder=True, worker_count=worker_count, read_threads=8)
