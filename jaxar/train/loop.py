"""The generic training loop: ``fit(task, train_iter, config=..., workdir=..., mesh=...)``.

Resumes from the latest checkpoint in ``workdir`` (train state and data iterator), logs
metrics to TensorBoard, ``metrics.jsonl`` and stdout, writes PNG sample grids, stops on a
non-finite loss (the last good checkpoint stays the latest), saves and exits on SIGTERM
(preemption) and saves a final checkpoint.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
import signal
from collections.abc import Iterator
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import tqdm
from jax.sharding import Mesh

from jaxar.paths import resolve
from jaxar.sharding import DEFAULT_RULES, abstract_with_sharding, batch_sharding, use_mesh
from jaxar.train.checkpoint import Checkpointer
from jaxar.train.images import save_image_grid
from jaxar.train.metrics_writer import MetricsWriter
from jaxar.train.optimizer import OptimizerConfig, learning_rate_at, make_optimizer
from jaxar.train.state import TrainState, create_train_state
from jaxar.train.step import jit_train_step, make_train_step, to_global_batch
from jaxar.train.task import Task

log = logging.getLogger(__name__)


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


@contextlib.contextmanager
def _sigterm_flag():
    """Yields a dict whose ``"set"`` turns True on SIGTERM (main thread only)."""
    flag = {"set": False}

    def handler(signum, frame):
        del signum, frame
        flag["set"] = True

    try:
        previous = signal.signal(signal.SIGTERM, handler)
    except ValueError:  # not the main thread: no handler
        previous = None
    try:
        yield flag
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)


class _Run:
    """Logging, checking, sampling and checkpointing around the step function."""

    def __init__(self, task, train_iter, config, workdir, mesh, rules, checkpoint_config, rngs):
        self.task, self.train_iter, self.config = task, train_iter, config
        self.workdir, self.mesh, self.rules = resolve(workdir), mesh, rules
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
    restored = run.checkpointer.restore_latest(abstract, run.train_iter, run.checkpoint_config)
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
      SystemExit(0): after SIGTERM, once a checkpoint of the current step is saved.
    """
    if checkpoint_config is None:
        checkpoint_config = dataclasses.asdict(config)
    init_rng, train_rng, sample_rng = jax.random.split(jax.random.key(rng_seed), 3)
    optimizer = make_optimizer(config.optimizer)
    run = _Run(
        task, train_iter, config, workdir, mesh, rules, checkpoint_config, (train_rng, sample_rng)
    )
    try:
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
    finally:
        run.close()


def _train(run: _Run, state: TrainState, step_fn, first_batch) -> TrainState:
    config = run.config
    start = int(jax.device_get(state.step))
    bar = tqdm.tqdm(
        total=config.num_steps,
        initial=start,
        disable=not (config.progress_bar and run.is_main),
        desc=run.task.name,
    )
    with _sigterm_flag() as preempted, bar:
        for step in range(start, config.num_steps):
            batch = first_batch if first_batch is not None else _next_batch(run.train_iter)
            first_batch = None
            if batch is None:
                log.warning("data iterator exhausted after %d steps", step)
                break
            state, metrics = step_fn(state, to_global_batch(batch, run.mesh), run.train_rng)
            run.pending.append(metrics)
            done = step + 1
            bar.update(1)
            _after_step(run, state, done, preempted["set"])
            if preempted["set"]:
                log.warning("SIGTERM: saved checkpoint at step %d, exiting", done)
                run.checkpointer.wait_until_finished()
                raise SystemExit(0)
        done = int(jax.device_get(state.step))
        if run.checkpointer.latest_step() != done:
            run.check_finite(done)
            run.save(state, done, force=True)
    return state


def _next_batch(train_iter):
    try:
        return next(train_iter)
    except StopIteration:
        return None


def _after_step(run: _Run, state: TrainState, done: int, preempted: bool) -> None:
    """Checks, logs, samples and checkpoints after train step number ``done``."""
    config = run.config
    is_log = done % config.log_every == 0
    is_checkpoint = done % config.checkpoint_every == 0 or done == config.num_steps
    if is_log or is_checkpoint or preempted:
        run.check_finite(done)
    if is_log:
        run.log(done)
    if run.task.sample_images is not None and config.sample_every:
        if done % config.sample_every == 0:
            run.sample(state, done)
    if is_checkpoint or preempted:
        run.save(state, done, force=preempted)
