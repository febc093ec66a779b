"""Orbax checkpoints of the train state, the grain iterator position and the config.

Restoring falls back past damaged checkpoints: when the newest step cannot be read (truncated
blob, missing metadata, deleted ``state/``), it is moved to
``<workdir>/checkpoints.corrupt/<step>-<reason>`` (never deleted; the error is written next to
it as ``ERROR.txt``), a warning names both steps, and the newest readable step is restored.
``strict=True`` raises instead. Only process 0 moves files; all processes then wait at a
barrier and re-read the step list.

Layout: ``<workdir>/checkpoints/<step>/{state,data,config}``, written by one
``orbax.checkpoint.CheckpointManager`` (atomic via orbax temporary directories, async,
keep-N). ``data`` is the JSON state of the data iterator (grain ``DatasetIterator.get_state()``
or ``DataLoaderIterator.get_state()``), captured when ``save`` is called so an async write
can never see a later position. ``config`` is the experiment config as a JSON dict; resuming
with a different config raises ValueError, except for the keys in ``RESUME_IGNORED_KEYS``.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import time
from collections.abc import Iterable
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp
from jax.sharding import Mesh, NamedSharding, PartitionSpec, SingleDeviceSharding

from jaxar.paths import join
from jaxar.train.state import TrainState

log = logging.getLogger(__name__)

CHECKPOINT_DIR = "checkpoints"
CORRUPT_DIR = "checkpoints.corrupt"  # damaged steps moved aside, outside orbax's step listing
ITEM_NAMES = ("state", "data", "config")

# Config keys (at any nesting level) that may change between a run and its resumption:
# run length, logging and checkpoint cadence, paths.
RESUME_IGNORED_KEYS = frozenset(
    {
        "num_steps",
        "log_every",
        "checkpoint_every",
        "sample_every",
        "keep_checkpoints",
        "async_checkpoints",
        "progress_bar",
        "strict_restore",
        "workdir",
    }
)

# TrainState fields restored by ``restore_for_eval`` (the optimizer state is skipped).
EVAL_FIELDS = ("step", "params", "ema_params", "model_state")


def to_json_config(config: Any) -> dict[str, Any]:
    """A config (dict, dataclass or ml_collections ConfigDict) as a plain JSON-able dict."""
    if dataclasses.is_dataclass(config) and not isinstance(config, type):
        config = dataclasses.asdict(config)
    elif hasattr(config, "to_dict"):
        config = config.to_dict()
    if not isinstance(config, dict):
        raise ValueError(f"config must be a dict, dataclass or ConfigDict, got {type(config)}")
    return json.loads(json.dumps(config, default=_json_default))


def _json_default(value: Any) -> Any:
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return dataclasses.asdict(value)
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    return str(value)  # dtypes, callables, ...: compared by their string form


def _flatten(config: Any, prefix: str = "") -> dict[str, Any]:
    if not isinstance(config, dict):
        return {prefix: config}
    flat = {}
    for key, value in config.items():
        flat.update(_flatten(value, f"{prefix}.{key}" if prefix else str(key)))
    return flat


def config_differences(
    stored: dict[str, Any], current: dict[str, Any], ignored: Iterable[str] = RESUME_IGNORED_KEYS
) -> list[str]:
    """Dotted keys whose values differ, skipping keys with an ignored name at any level."""
    ignored = set(ignored)
    a, b = _flatten(stored), _flatten(current)
    differing = []
    for key in sorted(set(a) | set(b)):
        if ignored & set(key.split(".")):
            continue
        if a.get(key, "<missing>") != b.get(key, "<missing>"):
            differing.append(key)
    return differing


class CheckpointError(RuntimeError):
    """A checkpoint could not be written, or is not on disk after its save."""


class CorruptCheckpointError(ValueError):
    """A stored checkpoint cannot be read (``reason``: a short slug for the damage)."""

    def __init__(self, message: str, step: int, reason: str):
        super().__init__(message)
        self.step, self.reason = step, reason


def _iterator_state(data_iter: Any) -> dict[str, Any] | None:
    if data_iter is None or not hasattr(data_iter, "get_state"):
        return None
    state = data_iter.get_state()
    if isinstance(state, bytes):  # grain DataLoaderIterator: JSON text as bytes
        return {"format": "bytes", "state": state.decode()}
    return {"format": "dict", "state": json.loads(json.dumps(state))}


def _set_iterator_state(data_iter: Any, stored: dict[str, Any]) -> None:
    state = stored["state"]
    data_iter.set_state(state.encode() if stored["format"] == "bytes" else state)


def all_finite(tree: Any) -> bool:
    """True when every floating leaf of ``tree`` is finite."""
    leaves = [x for x in jax.tree.leaves(tree) if np.issubdtype(np.dtype(x.dtype), np.inexact)]
    if not leaves:
        return True
    return all(bool(flag) for flag in jax.device_get(_finite_flags(leaves)))


@jax.jit
def _finite_flags(leaves):
    return [jax.numpy.isfinite(x).all() for x in leaves]


class Checkpointer:
    """Saves and restores ``(state, data iterator, config)`` under ``<workdir>/checkpoints``."""

    def __init__(
        self,
        workdir: str | os.PathLike,
        *,
        keep: int | None = 3,
        async_save: bool = True,
        ignored_config_keys: Iterable[str] = RESUME_IGNORED_KEYS,
    ):
        self.directory = join(workdir, CHECKPOINT_DIR)  # local or gs://
        self.ignored_config_keys = frozenset(ignored_config_keys)
        options = ocp.CheckpointManagerOptions(
            max_to_keep=keep, create=True, enable_async_checkpointing=async_save
        )
        self.manager = ocp.CheckpointManager(self.directory, options=options, item_names=ITEM_NAMES)

    def latest_step(self) -> int | None:
        return self.manager.latest_step()

    def all_steps(self) -> list[int]:
        return list(self.manager.all_steps())

    def save(
        self,
        step: int,
        state: TrainState,
        data_iter: Any = None,
        config: Any = None,
        force: bool = False,
    ) -> bool:
        """Starts an (async) save of ``state`` at ``step``; returns whether it saved.

        Raises FloatingPointError instead of saving non-finite params.
        """
        if not all_finite(state.params):
            raise FloatingPointError(f"refusing to save non-finite params at step {step}")
        items = {"state": ocp.args.StandardSave(state)}
        iterator_state = _iterator_state(data_iter)
        if iterator_state is not None:
            items["data"] = ocp.args.JsonSave(iterator_state)
        if config is not None:
            items["config"] = ocp.args.JsonSave(to_json_config(config))
        saved = self.manager.save(step, args=ocp.args.Composite(**items), force=force)
        if force and not saved:
            raise CheckpointError(
                f"orbax declined the forced save of step {step} in {self.directory}"
            )
        return saved

    def steps_on_disk(self) -> list[int]:
        """Finished steps as read back from storage now (waits for pending saves first)."""
        self.manager.wait_until_finished()
        self.manager.reload()
        return sorted(self.manager.all_steps())

    def check_config(self, step: int, config: Any) -> None:
        """Raises ValueError when the config stored at ``step`` differs from ``config``."""
        stored = self._restore_items(step, config=ocp.args.JsonRestore()).get("config")
        if stored is None:
            return
        differing = config_differences(stored, to_json_config(config), self.ignored_config_keys)
        if differing:
            details = ", ".join(
                f"{k}: stored={_flatten(stored).get(k, '<missing>')!r} "
                f"current={_flatten(to_json_config(config)).get(k, '<missing>')!r}"
                for k in differing
            )
            raise ValueError(
                f"config differs from the checkpoint in {self.directory} (step {step}) in keys "
                f"{differing}: {details}. Use a new workdir or restore the old config."
            )

    def restore_latest(
        self,
        abstract_state: TrainState,
        data_iter: Any = None,
        config: Any = None,
        strict: bool = False,
    ) -> TrainState | None:
        """Restores the newest readable checkpoint onto ``abstract_state``'s shardings.

        Returns None when there is no checkpoint. Also moves ``data_iter`` to the stored
        position and, when ``config`` is given, checks it against the stored one (a differing
        config raises ValueError; it is not damage). Damaged newer steps are moved to
        ``<workdir>/checkpoints.corrupt`` with a warning; ``strict=True`` raises
        CorruptCheckpointError instead. When no step is readable, raises and moves nothing.
        """
        steps = sorted(self.manager.all_steps(), reverse=True)
        damaged: list[CorruptCheckpointError] = []
        for step in steps:
            try:
                restored = self._restore_step(step, abstract_state, data_iter, config)
            except CorruptCheckpointError as err:
                if strict:
                    raise CorruptCheckpointError(
                        f"{err} (train.strict_restore=True: not falling back to an older step)",
                        err.step,
                        err.reason,
                    ) from err
                damaged.append(err)
                continue
            if damaged:
                self._set_aside(damaged, step)
            return restored
        if damaged:
            raise CorruptCheckpointError(
                f"no readable checkpoint in {self.directory}: "
                + "; ".join(f"step {e.step}: {e}" for e in damaged),
                damaged[0].step,
                damaged[0].reason,
            )
        return None

    def _restore_step(self, step: int, abstract_state, data_iter, config) -> TrainState:
        reason = _damage(self.directory / str(step))
        if reason is not None:
            raise CorruptCheckpointError(
                f"checkpoint {self.directory / str(step)} is damaged ({reason})", step, reason
            )
        if config is not None:
            self.check_config(step, config)
        items = {"state": ocp.args.StandardRestore(abstract_state)}
        has_data = self._has_item(step, "data")
        if not hasattr(data_iter, "set_state"):
            data_iter = None  # plain iterators cannot be repositioned
        if data_iter is not None and not has_data:
            path = self.directory / str(step)
            raise CorruptCheckpointError(
                f"checkpoint {path} holds no data iterator state", step, "missing-data"
            )
        if data_iter is not None:
            items["data"] = ocp.args.JsonRestore()
        restored = self._restore_items(step, **items)
        if data_iter is not None:
            _set_iterator_state(data_iter, restored["data"])
        return restored["state"]

    def _set_aside(self, damaged: list[CorruptCheckpointError], restored_step: int) -> None:
        """Moves damaged steps out of orbax's listing (process 0), then all processes sync."""
        corrupt = self.directory.parent / CORRUPT_DIR
        for err in damaged:
            target = corrupt / f"{err.step}-{err.reason}-{time.strftime('%Y%m%dT%H%M%S')}"
            log.warning(
                "checkpoint step %d cannot be read (%s): %s. Moved it to %s; resuming from "
                "step %d instead. Set train.strict_restore=True to stop instead.",
                err.step, err.reason, err, target, restored_step,
            )  # fmt: skip
            if jax.process_index() == 0:
                corrupt.mkdir(parents=True, exist_ok=True)
                (self.directory / str(err.step)).rename(target)
                (target / "ERROR.txt").write_text(f"{err}\n")
        if jax.process_count() > 1:
            from jax.experimental import multihost_utils

            multihost_utils.sync_global_devices("jaxar_checkpoint_set_aside")
        self.manager.reload()

    def _has_item(self, step: int, name: str) -> bool:
        return (self.directory / str(step) / name).is_dir()

    def _restore_items(self, step: int, **items) -> dict[str, Any]:
        try:
            return dict(self.manager.restore(step, args=ocp.args.Composite(**items)))
        except Exception as err:
            path = self.directory / str(step)
            raise CorruptCheckpointError(
                f"could not restore checkpoint {path}: {type(err).__name__}: {err}",
                step,
                "unreadable",
            ) from err

    def wait_until_finished(self) -> None:
        self.manager.wait_until_finished()

    def close(self) -> None:
        self.manager.wait_until_finished()
        self.manager.close()


def _damage(step_dir) -> str | None:
    """A short reason slug when a finished step directory lacks a file orbax writes into
    every step (``_CHECKPOINT_METADATA``; ``state/_METADATA``; ``state/manifest.ocdbt`` when
    the arrays are in OCDBT ``ocdbt.process_*`` folders), else None."""
    state = step_dir / "state"
    if not state.is_dir():
        return "missing-state"
    missing = [n for n in ("_CHECKPOINT_METADATA",) if not (step_dir / n).exists()]
    missing += [n for n in ("_METADATA",) if not (state / n).exists()]
    if any(state.glob("ocdbt.process_*")) and not (state / "manifest.ocdbt").exists():
        missing.append("manifest.ocdbt")
    if missing:
        return "missing-" + missing[0].strip("_").lower().replace(".", "-").replace("_", "-")
    return None


def _eval_target(metadata: Any, sharding: Any) -> dict[str, Any]:
    """Abstract arrays (replicated on ``sharding``) for the EVAL_FIELDS of stored metadata."""
    tree = metadata.tree if hasattr(metadata, "tree") else metadata

    def to_abstract(meta):
        return jax.ShapeDtypeStruct(tuple(meta.shape), meta.dtype, sharding=sharding)

    return {
        name: jax.tree.map(to_abstract, tree[name], is_leaf=lambda x: hasattr(x, "shape"))
        for name in EVAL_FIELDS
        if name in tree
    }


def restore_for_eval(
    workdir: str | os.PathLike,
    mesh: Mesh | None = None,
    target: Any = None,
    step: int | None = None,
) -> tuple[Any, dict[str, Any] | None]:
    """Restores a checkpoint for evaluation / notebooks, onto any mesh.

    Args:
      workdir: the training workdir (holding ``checkpoints/``).
      mesh: without ``target``, arrays are restored replicated on this mesh (one device when
        None).
      target: an abstract tree with shardings: a whole ``TrainState`` (restored as one) or a
        dict with some of ``step, params, ema_params, model_state``.
      step: the step to restore (default: latest).

    Returns:
      ``(state, config)``: a TrainState when ``target`` is one, otherwise a dict with
      ``step, params, ema_params, model_state``; ``config`` is the stored config dict.
    """
    directory = join(workdir, CHECKPOINT_DIR)
    if not directory.is_dir():
        raise FileNotFoundError(f"no checkpoint directory at {directory}")
    options = ocp.CheckpointManagerOptions(read_only=True, create=False)
    handlers = {
        "state": ocp.PyTreeCheckpointHandler(),
        "config": ocp.JsonCheckpointHandler(),
        "data": ocp.JsonCheckpointHandler(),
    }
    with ocp.CheckpointManager(directory, options=options, item_handlers=handlers) as manager:
        step = manager.latest_step() if step is None else step
        if step is None or step not in manager.all_steps():
            raise FileNotFoundError(
                f"no checkpoint for step {step} in {directory} (found {manager.all_steps()})"
            )
        path = directory / str(step)
        try:
            if target is None:
                sharding = (
                    NamedSharding(mesh, PartitionSpec())
                    if mesh is not None
                    else SingleDeviceSharding(jax.devices()[0])
                )
                target = _eval_target(manager.item_metadata(step)["state"], sharding)
            state_args = ocp.args.PyTreeRestore(
                item=target,
                restore_args=ocp.checkpoint_utils.construct_restore_args(target),
                partial_restore=not isinstance(target, TrainState),
            )
            items = {"state": state_args}
            if (path / "config").is_dir():
                items["config"] = ocp.args.JsonRestore()
            restored = manager.restore(step, args=ocp.args.Composite(**items))
        except Exception as err:
            raise ValueError(f"could not restore checkpoint {path}: {err}") from err
    return restored["state"], (restored["config"] if "config" in items else None)
