"""The grain input pipeline: source -> per-process shard -> shuffle -> repeat -> map -> batch.

``make_image_dataset`` yields ``{"image": float32 [B, H, W, C] in [-1, 1], "label": int32 [B]}``
and ``make_array_dataset`` yields batches of an in-memory dict of arrays (e.g. pre-tokenized
``{"codes": int32 [N, L], "label": int32 [N]}``). ``B = global_batch_size // process_count``:
each process reads its own contiguous shard of the data. Both return a ``grain.IterDataset``
whose iterator is checkpointable: ``it.get_state()`` / ``it.set_state(state)`` resume at
exactly the next example (save it with orbax's grain handler next to the train state).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from typing import Any

import grain
import jax
import numpy as np

from jaxar.data.sources import DictArraySource
from jaxar.data.transforms import DecodeAndPrepare, DropCorrupt, Normalize, RandomFlip

logger = logging.getLogger(__name__)


def _resolve_process(process_index: int | None, process_count: int | None) -> tuple[int, int]:
    index = jax.process_index() if process_index is None else process_index
    count = jax.process_count() if process_count is None else process_count
    if count < 1 or not 0 <= index < count:
        raise ValueError(f"need 0 <= process_index < process_count, got {index} and {count}")
    return index, count


def local_batch_size(global_batch_size: int, process_count: int) -> int:
    """The per-process batch: ``global_batch_size // process_count`` (must divide exactly)."""
    if global_batch_size <= 0:
        raise ValueError(f"global_batch_size must be positive, got {global_batch_size}")
    if global_batch_size % process_count:
        raise ValueError(
            f"global_batch_size {global_batch_size} is not divisible by the process count "
            f"{process_count}"
        )
    return global_batch_size // process_count


def _indexed_dataset(
    source: Sequence[Any],
    *,
    global_batch_size: int,
    train: bool,
    seed: int,
    num_epochs: int | None,
    drop_remainder: bool,
    process_index: int | None,
    process_count: int | None,
) -> tuple[grain.MapDataset, int]:
    """MapDataset over this process's shard, shuffled per epoch (train) and repeated."""
    index, count = _resolve_process(process_index, process_count)
    batch = local_batch_size(global_batch_size, count)
    if num_epochs is not None and num_epochs < 1:
        raise ValueError(f"num_epochs must be None (forever) or >= 1, got {num_epochs}")
    ds = grain.MapDataset.source(source)
    shard = len(ds) // count
    if shard == 0:
        raise ValueError(f"{len(ds)} examples cannot be split over {count} processes")
    if len(ds) % count:
        logger.warning("dropping %d examples so processes get equal shards", len(ds) % count)
    ds = ds[index * shard : (index + 1) * shard]
    if drop_remainder and num_epochs is not None and shard * num_epochs < batch:
        raise ValueError(
            f"a process shard has {shard} examples x {num_epochs} epochs, fewer than one local "
            f"batch of {batch}; lower the batch size or set drop_remainder=False"
        )
    if train:
        ds = ds.shuffle(seed=seed)
    return ds.repeat(num_epochs), batch


def _ensure_absl_flags_parsed() -> None:
    """grain's worker start-up reads absl flags and fails in scripts that never parsed them
    (google/grain#1355); outside ``absl.app`` treat the defaults as parsed."""
    from absl import flags

    if not flags.FLAGS.is_parsed():
        flags.FLAGS.mark_as_parsed()


def _batched(
    ds: grain.MapDataset,
    batch: int,
    *,
    drop_remainder: bool,
    worker_count: int,
    read_threads: int,
) -> grain.IterDataset:
    if worker_count < 0:
        raise ValueError(f"worker_count must be >= 0, got {worker_count}")
    read = grain.ReadOptions(num_threads=read_threads, prefetch_buffer_size=max(2 * batch, 16))
    out = ds.to_iter_dataset(read).batch(batch, drop_remainder=drop_remainder)
    if worker_count > 0:
        _ensure_absl_flags_parsed()
        out = out.mp_prefetch(grain.MultiprocessingOptions(num_workers=worker_count))
    return out


def make_image_dataset(
    source: Sequence[Any],
    *,
    global_batch_size: int,
    image_size: int,
    channels: int,
    train: bool = True,
    seed: int = 0,
    num_epochs: int | None = None,
    random_flip: bool = False,
    worker_count: int = 0,
    drop_remainder: bool = True,
    process_index: int | None = None,
    process_count: int | None = None,
    read_threads: int = 8,
) -> grain.IterDataset:
    """Image batches ``{"image": float32 [B, S, S, C] in [-1, 1], "label": int32 [B]}``.

    Args:
      source: random-access records ``{"image": uint8 [H, W, C] or encoded bytes, "label"}``
        (``tfds_source``, ``ImageFolderSource``, ``ArraySource``).
      global_batch_size: examples per step over all processes; B is its per-process share.
      image_size, channels: output S (shorter side resized, then center crop) and C (1 or 3).
      train: shuffle (a new order each epoch, from ``seed``); False keeps source order.
      num_epochs: passes over the data; None repeats forever.
      random_flip: random left-right flips, seeded per example from ``seed``.
      worker_count: grain worker processes (0: read in this process).
      drop_remainder: drop a last partial batch (only reachable with finite epochs).
      process_index, process_count: default to ``jax.process_index() / process_count()``.
      read_threads: threads reading and decoding inside each process.

    Unreadable images are dropped (and logged) rather than raising.
    """
    ds, batch = _indexed_dataset(
        source,
        global_batch_size=global_batch_size,
        train=train,
        seed=seed,
        num_epochs=num_epochs,
        drop_remainder=drop_remainder,
        process_index=process_index,
        process_count=process_count,
    )
    ds = ds.map(DecodeAndPrepare(image_size, channels)).filter(DropCorrupt())
    if random_flip:
        ds = ds.random_map(RandomFlip(), seed=seed)
    ds = ds.map(Normalize())
    return _batched(
        ds,
        batch,
        drop_remainder=drop_remainder,
        worker_count=worker_count,
        read_threads=read_threads,
    )


def make_array_dataset(
    arrays: Mapping[str, Any],
    *,
    global_batch_size: int,
    seed: int = 0,
    train: bool = True,
    num_epochs: int | None = None,
    drop_remainder: bool = True,
    worker_count: int = 0,
    process_index: int | None = None,
    process_count: int | None = None,
) -> grain.IterDataset:
    """Batches of an in-memory dict of arrays sharing a leading dimension N.

    ``{"codes": int32 [N, L], "label": int32 [N]}`` -> ``{"codes": [B, L], "label": [B]}``,
    dtypes kept. Shuffling, repeating, per-process sharding and checkpointing behave as in
    ``make_image_dataset``.
    """
    ds, batch = _indexed_dataset(
        DictArraySource(arrays),
        global_batch_size=global_batch_size,
        train=train,
        seed=seed,
        num_epochs=num_epochs,
        drop_remainder=drop_remainder,
        process_index=process_index,
        process_count=process_count,
    )
    # In-memory reads are cheap: no reader threads (avoids GIL contention).
    return _batched(
        ds, batch, drop_remainder=drop_remainder, worker_count=worker_count, read_threads=0
    )


def take_batches(dataset: grain.IterDataset, count: int) -> list[dict[str, np.ndarray]]:
    """The first ``count`` batches of a fresh iterator (handy in tests and notebooks)."""
    iterator = iter(dataset)
    return [next(iterator) for _ in range(count)]
