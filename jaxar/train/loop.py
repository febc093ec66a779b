"""The generic training loop: ``fit(task, train_iter, config=..., workdir=..., mesh=...)``.

Resumes from the newest readable checkpoint in ``workdir`` (train state and data iterator;
damaged newer steps are moved aside unless ``strict_restore``), logs metrics to TensorBoard,
``metrics.jsonl`` and stdout, writes PNG sample grids, stops on a non-finite loss (the last
good checkpoint stays the latest) and saves a final checkpoint. Every folder the run writes is
checked before the first step.

Preemption: SIGTERM or SIGINT at any moment (from the start of ``fit``) lets the current step
finish, saves it, waits for the save, reads the step back from storage and raises
``Preempted`` (a ``SystemExit`` with status ``PREEMPTED_EXIT_CODE`` = 75, ``EX_TEMPFAIL``:
"rerun me"), so a script exits with 75 and its log names the step that is on disk. A second
SIGINT aborts at once (KeyboardInterrupt). In a multi-process run started with
``jax.distributed`` (its preemption service on, the default), JAX's coordination service
owns SIGTERM: any host's notice makes every host stop at the same agreed step
(``multihost_utils.reached_preemption_sync_point``) and all save that step; SIGINT is not
trapped there (a local Ctrl-C cannot be agreed without a collective per step). Without the
service, the processes agree on a stop with one tiny all-gather per step.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
import sys
from collections.abc import Iterator
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import tqdm
from jax.sharding import Mesh

from jaxar.data.global_batch import host_to_global
from jaxar.paths import check_writable_dir, resolve
from jaxar.sharding import DEFAULT_RULES, abstract_with_sharding, batch_sharding, use_mesh
from jaxar.task import Task
from jaxar.train.checkpoint import CHECKPOINT_DIR, Checkpointer, CheckpointError
from jaxar.train.images import save_image_grid
from jaxar.train.metrics_writer import MetricsWriter
from jaxar.train.optimizer import OptimizerConfig, learning_rate_at, make_optimizer
from jaxar.train.preemption import PREEMPTED_EXIT_CODE, Preempted, StopSignals
from jaxar.train.state import TrainState, create_train_state
from jaxar.train.step import jit_train_step, make_train_step

log = logging.getLogger(__name__)

__all__ = [
    "PREEMPTED_EXIT_CODE",
    "NonFiniteError",
    "Preempted",
    "TrainConfig",
    "check_run_dirs",
    "fit",
]


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """Loop settings. ``sample_every=0`` disables sample grids; ``compute_dtype`` is a dtype
    name (e.g. ``"bfloat16"``) for the forward/backward pass, None for float32."""

    num_steps: int
    optimizer: OptimizerConfig
    log_every: int = 50
    checkpoint_every: int = 1000
    sample_every: int = 0
    keep_checkpoints: int = 3
    ema_decay: float | None = 0.999
    compute_dtype: str | None = None
    async_checkpoints: bool = True
    progress_bar: bool = True
    strict_restore: bool = False  # True: a damaged latest checkpoint is an error, no fallback

    def __post_init__(self):
        for name in ("num_steps", "log_every", "checkpoint_every", "keep_checkpoints"):
            if getattr(self, name) < 1:
                raise ValueError(f"TrainConfig.{name} must be >= 1, got {getattr(self, name)}")
        if self.sample_every < 0:
            raise ValueError(f"TrainConfig.sample_every must be >= 0, got {self.sample_every}")
        if self.ema_decay is not None and not 0.0 <= self.ema_decay < 1.0:
            raise ValueError(
                f"TrainConfig.ema_decay must be in [0, 1) or None, got {self.ema_decay}"
            )
        if self.compute_dtype is not None:
            try:
                jnp.dtype(self.compute_dtype)
            except TypeError as err:
                raise ValueError(f"unknown compute_dtype {self.compute_dtype!r}") from err


class NonFiniteError(FloatingPointError):
    """Raised when the loss or gradient norm stops being finite."""


class _Run:
    """Logging, checking, sampling and checkpointing around the step function."""

    def __init__(self, task, train_iter, config, workdir, mesh, rules, checkpoint_config, rngs):
        self.task, self.train_iter, self.config = task, train_iter, config
        self.workdir, self.mesh, self.rules = resolve(workdir), mesh, rules
        self.stop_signals = StopSignals()
        self.checkpoint_config = checkpoint_config
        self.train_rng, self.sample_rng = rngs
        self.is_main = jax.process_index() == 0
        self.writer = MetricsWriter(self.workdir) if self.is_main else None
        self.checkpointer = Checkpointer(
            self.workdir, keep=config.keep_checkpoints, async_save=config.async_checkpoints
        )
        self.pending: list[dict[str, jax.Array]] = []  # device metrics not yet checked
        self.checked: list[dict[str, np.ndarray]] = []  # host metrics not yet logged

    def check_finite(self, step: int) -> None:
        """Moves pending metrics to the host; raises NonFiniteError on a non-finite loss."""
        first = step - len(self.pending) + 1
        for offset, metrics in enumerate(jax.device_get(self.pending)):
            bad = [k for k in ("loss", "grad_norm") if not np.all(np.isfinite(metrics[k]))]
            if bad:
                latest = self.checkpointer.latest_step()
                raise NonFiniteError(
                    f"non-finite {bad} at step {first + offset}: {_floats(metrics)}. Stopping; "
                    f"the last good checkpoint is step {latest} in {self.checkpointer.directory}"
                )
            self.checked.append(metrics)
        self.pending = []

    def log(self, step: int) -> None:
        if self.writer is not None and self.checked:
            means = {k: np.mean([m[k] for m in self.checked]) for k in self.checked[0]}
            self.writer.write_scalars(step, means)
        self.checked = []

    def sample(self, state: TrainState, step: int) -> None:
        params = state.ema_params if state.ema_params is not None else state.params
        with use_mesh(self.mesh, self.rules):
            images = self.task.sample_images(params, jax.random.fold_in(self.sample_rng, step))
        if self.writer is not None:
            path = self.workdir / "samples" / f"step_{step:08d}.png"
            grid = save_image_grid(np.asarray(jax.device_get(images)), path)
            self.writer.write_images(step, "samples", grid)

    def save(self, state: TrainState, step: int, force: bool = False) -> None:
        config = self.checkpoint_config
        self.checkpointer.save(step, state, self.train_iter, config, force=force)

    def save_and_confirm(self, state: TrainState, step: int) -> None:
        """Saves ``step`` (unless already saved), waits, and checks it is on disk."""
        if self.checkpointer.latest_step() != step:
            self.save(state, step, force=True)
        on_disk = self.checkpointer.steps_on_disk()  # waits; re-raises a failed async save
        if step not in on_disk:
            raise CheckpointError(
                f"checkpoint of step {step} is not in {self.checkpointer.directory} after its "
                f"save (steps on disk: {on_disk})"
            )

    def close(self) -> None:
        self.checkpointer.close()
        if self.writer is not None:
            self.writer.close()


def _floats(metrics: dict[str, Any]) -> dict[str, float]:
    return {k: float(np.asarray(v)) for k, v in metrics.items()}


def _initial_state(run: _Run, init_rng, first_batch, optimizer):
    """Creates the state; restores the latest checkpoint (and iterator position) if any."""
    state, shardings = create_train_state(
        run.task,
        optimizer,
        init_rng,
        first_batch,
        run.mesh,
        rules=run.rules,
        ema=run.config.ema_decay is not None,
    )
    abstract = abstract_with_sharding(jax.eval_shape(lambda: state), shardings)
    restored = run.checkpointer.restore_latest(
        abstract, run.train_iter, run.checkpoint_config, strict=run.config.strict_restore
    )
    if restored is not None:
        log.info("resumed from step %d", int(restored.step))
        return restored, shardings, True
    return state, shardings, False


def fit(
    task: Task,
    train_iter: Iterator[dict[str, np.ndarray]],
    *,
    config: TrainConfig,
    workdir: str | os.PathLike,
    mesh: Mesh,
    rng_seed: int,
    checkpoint_config: dict[str, Any] | None = None,
    rules=DEFAULT_RULES,
) -> TrainState:
    """Trains ``task`` for ``config.num_steps`` steps; returns the final state.

    Args:
      task: model family (init, loss_fn, optional sample_images).
      train_iter: iterator of host numpy dict batches (global batch / process count rows);
        a grain DatasetIterator (or anything with get_state/set_state) is checkpointed.
      config: loop settings.
      workdir: directory for checkpoints, metrics and samples; resumed from when it holds
        a checkpoint.
      mesh: device mesh; batches are split over (data, fsdp).
      rng_seed: seed for init, per-step randomness and sampling.
      checkpoint_config: experiment config (JSON-able dict) stored with each checkpoint and
        compared on resume; defaults to ``config`` as a dict.
      rules: logical-axis rules.

    Raises:
      NonFiniteError: loss or grad norm became NaN/Inf (no checkpoint of that state is made).
      Preempted: (SystemExit(75)) after SIGTERM/SIGINT, once the current step is on disk.
      CheckpointError: a save failed or its step is not on disk afterwards.
      NotADirectoryError / PermissionError: a folder the run writes is unusable.
    """
    check_run_dirs(workdir, samples=bool(config.sample_every and task.sample_images))
    if checkpoint_config is None:
        checkpoint_config = dataclasses.asdict(config)
    init_rng, train_rng, sample_rng = jax.random.split(jax.random.key(rng_seed), 3)
    optimizer = make_optimizer(config.optimizer)
    run = _Run(
        task, train_iter, config, workdir, mesh, rules, checkpoint_config, (train_rng, sample_rng)
    )
    with run.stop_signals, contextlib.ExitStack() as stack:
        stack.callback(run.close)
        first_batch = next(train_iter)
        state, shardings, resumed = _initial_state(run, init_rng, first_batch, optimizer)
        train_step = make_train_step(
            task.loss_fn,
            optimizer,
            ema_decay=config.ema_decay,
            compute_dtype=None if config.compute_dtype is None else jnp.dtype(config.compute_dtype),
            learning_rate_fn=lambda s: learning_rate_at(config.optimizer, s),
        )
        step_fn = jit_train_step(train_step, mesh, shardings, batch_sharding(mesh), rules=rules)
        return _train(run, state, step_fn, None if resumed else first_batch)


def check_run_dirs(workdir: str | os.PathLike, samples: bool = True) -> None:
    """Fails fast (naming the path) unless the workdir, ``checkpoints/``, ``samples/`` and the
    metrics outputs are writable directories or can be created as such."""
    root = check_writable_dir(workdir, "workdir")
    check_writable_dir(root / CHECKPOINT_DIR, "checkpoint directory")
    if jax.process_index() != 0:
        return  # only process 0 writes metrics and samples
    check_writable_dir(root / "tensorboard", "TensorBoard directory")
    if (root / "metrics.jsonl").is_dir():
        raise IsADirectoryError(f"metrics file {root / 'metrics.jsonl'} is a directory")
    if samples:
        check_writable_dir(root / "samples", "samples directory")


def _train(run: _Run, state: TrainState, step_fn, first_batch) -> TrainState:
    config = run.config
    start = int(jax.device_get(state.step))
    bar = tqdm.tqdm(
        total=config.num_steps,
        initial=start,
        disable=not (config.progress_bar and run.is_main),
        desc=run.task.name,
    )
    with bar:
        for step in range(start, config.num_steps):
            batch = first_batch if first_batch is not None else _next_batch(run.train_iter)
            first_batch = None
            if batch is None:
                log.warning("data iterator exhausted after %d steps", step)
                break
            state, metrics = step_fn(state, host_to_global(batch, run.mesh), run.train_rng)
            run.pending.append(metrics)
            done = step + 1
            bar.update(1)
            _after_step(run, state, done)
            # Read only now: a signal that arrived while _after_step waited on the device
            # (or saved) still stops this step.
            if done < config.num_steps and run.stop_signals.should_stop(done):
                _stop(run, state, done)
        done = int(jax.device_get(state.step))
        run.check_finite(done)
        run.save_and_confirm(state, done)
    if run.stop_signals.received:
        log.warning(
            "%s received after the last step; step %d is on disk", run.stop_signals.received, done
        )
    return state


def _stop(run: _Run, state: TrainState, done: int):
    """Saves step ``done``, checks it is on disk, raises Preempted."""
    run.check_finite(done)  # a non-finite state is never saved
    run.log(done)
    run.save_and_confirm(state, done)
    stop = Preempted(done, run.stop_signals.received or "stop", run.checkpointer.directory)
    print(stop, file=sys.stderr, flush=True)
    raise stop


def _next_batch(train_iter):
    try:
        return next(train_iter)
    except StopIteration:
        return None


def _after_step(run: _Run, state: TrainState, done: int) -> None:
    """Checks, logs, samples and checkpoints after train step number ``done``."""
    config = run.config
    is_log = done % config.log_every == 0
    is_checkpoint = done % config.checkpoint_every == 0 or done == config.num_steps
    if is_log or is_checkpoint:
        run.check_finite(done)
    if is_log:
        run.log(done)
    if run.task.sample_images is not None and config.sample_every:
        if done % config.sample_every == 0:
            run.sample(state, done)
    if is_checkpoint:
        run.save(state, done)
