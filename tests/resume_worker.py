"""Subprocess helper for test_resume.py (and the tiny task shared by the train tests).

Run: ``python tests/resume_worker.py WORKDIR NUM_STEPS CHECKPOINT_EVERY OUT_NPZ [SLEEP_S]``.
Trains a tiny MLP on in-memory data through ``jaxar.train.loop.fit`` on a (2, 2, 2) mesh with
``log_every=1``; every step logs the example ids of its batch (``id_0 .. id_7``) so the test
can check where the data stream resumed. Writes the final params to OUT_NPZ.

``python tests/resume_worker.py chain WORKDIR NUM_STEPS CHECKPOINT_EVERY OUT_NPZ SEED COUNT
SLEEP_S`` (test_faults.py): ``COUNT`` times, sends this process SIGTERM or SIGINT at a seeded
random moment of a ``fit`` (from a timer armed when batch 0, 1 or 2 of that fit is drawn: the
signal lands during restore, compile, data loading, the device wait or a save), catches
``Preempted``, checks the reported step is on disk, and resumes; then trains to the end.
Writes the final params to OUT_NPZ and one JSON line per stop to OUT_NPZ + ".json".
"""

from __future__ import annotations

import json
import os
import signal
import sys
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import flax.linen as nn  # noqa: E402
import grain  # noqa: E402
import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import optax  # noqa: E402

from jaxar.task import Task  # noqa: E402

DIM, HIDDEN, CLASSES, BATCH, NUM_EXAMPLES = 16, 32, 8, 8, 64


def _partitioned(init, names):
    return nn.with_logical_partitioning(init, names)


class TinyMLP(nn.Module):
    """x [B, DIM] -> logits [B, CLASSES], every param logically annotated."""

    hidden: int = HIDDEN
    classes: int = CLASSES

    @nn.compact
    def __call__(self, x):
        x = nn.Dense(
            self.hidden,
            kernel_init=_partitioned(nn.initializers.lecun_normal(), ("embed", "mlp")),
            bias_init=_partitioned(nn.initializers.zeros, ("mlp",)),
        )(x)
        x = nn.with_logical_constraint(nn.gelu(x), ("batch", "mlp"))
        x = nn.LayerNorm(
            scale_init=_partitioned(nn.initializers.ones, ("mlp",)),
            bias_init=_partitioned(nn.initializers.zeros, ("mlp",)),
        )(x)
        return nn.Dense(
            self.classes,
            kernel_init=_partitioned(nn.initializers.lecun_normal(), ("mlp", "vocab")),
            bias_init=_partitioned(nn.initializers.zeros, ("vocab",)),
        )(x)


def make_task(nan_from_step: int | None = None, log_ids: bool = False, noise: float = 0.1) -> Task:
    """Classification task; the rng adds input noise so per-step randomness matters."""
    model = TinyMLP()

    def init(rng, batch):
        return model.init(rng, batch["x"])["params"], {}

    def loss_fn(params, model_state, batch, rng, step):
        x = batch["x"] + noise * jax.random.normal(rng, batch["x"].shape)
        logits = model.apply({"params": params}, x)
        loss = optax.softmax_cross_entropy_with_integer_labels(logits, batch["y"]).mean()
        if nan_from_step is not None:
            loss = loss * jnp.where(step >= nan_from_step, jnp.nan, 1.0)
        metrics = {"accuracy": (logits.argmax(-1) == batch["y"]).mean()}
        if log_ids:
            metrics.update({f"id_{i}": batch["id"][i].astype(jnp.float32) for i in range(BATCH)})
        return loss, (metrics, model_state)

    def sample_images(params, rng):  # uint8 [4, 4, 8, 1] derived from the params
        kernel = params["Dense_0"]["kernel"] + 0.01 * jax.random.normal(rng, (DIM, HIDDEN))
        pixels = jax.nn.sigmoid(kernel.reshape(4, 4, 4, 8).mean(axis=1)) * 255
        return pixels.astype(jnp.uint8)[..., None]

    return Task(name="tiny_mlp", init=init, loss_fn=loss_fn, sample_images=sample_images)


def make_records(num: int = NUM_EXAMPLES, seed: int = 0) -> list[dict[str, np.ndarray]]:
    rng = np.random.default_rng(seed)
    xs = rng.normal(size=(num, DIM)).astype(np.float32)
    return [{"x": xs[i], "y": np.int32(i % CLASSES), "id": np.int32(i)} for i in range(num)]


def make_iterator(sleep_s: float = 0.0, batch: int = BATCH, seed: int = 0):
    """A grain DatasetIterator of {"x", "y", "id"} batches, endless, shuffled."""

    def slow(record):
        if sleep_s:
            time.sleep(sleep_s)
        return record

    dataset = grain.MapDataset.source(make_records()).shuffle(seed=seed).repeat().map(slow)
    return iter(dataset.batch(batch, drop_remainder=True))


def train_config(num_steps: int, every: int):
    from jaxar.train.loop import TrainConfig
    from jaxar.train.optimizer import OptimizerConfig

    return TrainConfig(
        num_steps=num_steps,
        optimizer=OptimizerConfig(learning_rate=1e-2, warmup_steps=2, total_steps=num_steps),
        log_every=1,
        checkpoint_every=every,
        ema_decay=0.9,
        progress_bar=False,
    )


def checkpoint_config(num_steps: int) -> dict:
    return {"model": "tiny_mlp", "num_steps": num_steps}


def train(workdir, num_steps: int, every: int, data_iter, mesh=None):
    """``fit`` of the tiny task on a (2, 2, 2) mesh (default); -> final TrainState."""
    from jaxar.sharding import make_mesh
    from jaxar.train.loop import fit

    return fit(
        make_task(log_ids=True),
        data_iter,
        config=train_config(num_steps, every),
        workdir=workdir,
        mesh=make_mesh(2, 2, 2) if mesh is None else mesh,
        rng_seed=0,
        checkpoint_config=checkpoint_config(num_steps),
    )


def abstract_train_state(num_steps: int):
    """The abstract (sharded) TrainState ``train`` restores onto, for in-process restores."""
    from jaxar.sharding import abstract_with_sharding, make_mesh
    from jaxar.train.optimizer import make_optimizer
    from jaxar.train.state import create_train_state

    optimizer = make_optimizer(train_config(num_steps, 1).optimizer)
    batch = next(make_iterator())
    state, shardings = create_train_state(
        make_task(log_ids=True), optimizer, jax.random.key(0), batch, make_mesh(2, 2, 2)
    )
    return abstract_with_sharding(jax.eval_shape(lambda: state), shardings)


def save_params(state, out) -> None:
    leaves = jax.tree_util.tree_flatten_with_path(jax.device_get(state.params))[0]
    np.savez(out, **{jax.tree_util.keystr(path): value for path, value in leaves})


class _ArmedIterator:
    """Delegates to ``inner``; when batch ``arm_at`` is drawn, starts a timer that sends
    ``signum`` to this process after ``delay`` seconds."""

    def __init__(self, inner, arm_at: int, delay: float, signum: int):
        self.inner, self.arm_at, self.delay, self.signum = inner, arm_at, delay, signum
        self.drawn, self.timer = 0, None

    def __iter__(self):
        return self

    def __next__(self):
        if self.drawn == self.arm_at:
            self.timer = threading.Timer(self.delay, os.kill, (os.getpid(), self.signum))
            self.timer.start()
        self.drawn += 1
        return next(self.inner)

    def get_state(self):
        return self.inner.get_state()

    def set_state(self, state):
        self.inner.set_state(state)


def chain(workdir, num_steps, every, out, seed, count, sleep_s) -> None:
    from jaxar.train.checkpoint import restore_for_eval
    from jaxar.train.loop import Preempted

    stray = []  # a signal landing outside fit (after it returned) is recorded, not fatal
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda n, f: stray.append(n))
    rng = np.random.default_rng(seed)
    records = []
    for _ in range(count):
        arm_at, delay = int(rng.integers(0, 3)), float(rng.uniform(0.0, 0.3))
        signum = (signal.SIGTERM, signal.SIGINT)[int(rng.integers(0, 2))]
        data_iter = _ArmedIterator(make_iterator(sleep_s), arm_at, delay, signum)
        record = {"arm_at": arm_at, "delay": delay, "signal": signal.Signals(signum).name}
        try:
            train(workdir, num_steps, every, data_iter)
            record["reported"] = None  # the run ended before the signal
        except Preempted as stop:
            restored, _ = restore_for_eval(workdir, step=stop.step)
            record.update(reported=stop.step, restored_step=int(restored["step"]))
            record["message"] = str(stop)
        data_iter.timer.join()
        records.append(record)
    save_params(train(workdir, num_steps, every, make_iterator()), out)
    with open(f"{out}.json", "w") as f:
        f.write("".join(json.dumps(r) + "\n" for r in records))


def _use_compilation_cache() -> None:
    """JAXAR_TEST_JAX_CACHE=DIR: a persistent compilation cache shared by the test's runs (the
    same programs compile once instead of once per fit)."""
    cache = os.environ.get("JAXAR_TEST_JAX_CACHE")
    if cache:
        jax.config.update("jax_compilation_cache_dir", cache)
        jax.config.update("jax_persistent_cache_min_compile_time_secs", 0)
        jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)


def multi(workdir, num_steps, every, coordinator, num_processes, process_id, sleep_s) -> None:
    """One of ``num_processes`` processes (2 devices each) training together; each feeds its
    own half of every global batch of 8."""
    from jaxar.distributed import initialize_distributed
    from jaxar.sharding import make_mesh
    from jaxar.train.loop import Preempted
    from jaxar.train.preemption import _preemption_service_active

    initialize_distributed(coordinator, num_processes, process_id)
    data_iter = make_iterator(sleep_s, batch=BATCH // num_processes, seed=process_id)
    try:
        train(workdir, num_steps, every, data_iter, mesh=make_mesh(data=-1))
    except Preempted as stop:
        synced = _preemption_service_active()  # True: JAX's preemption sync decided the step
        record = {"process": process_id, "step": stop.step, "synced": synced}
        print(f"STOPPED {json.dumps(record)}", flush=True)
        raise


def main(argv: list[str]) -> None:
    _use_compilation_cache()
    if argv[0] == "multi":
        workdir, steps, every, coordinator, count, index, sleep_s = argv[1:8]
        multi(workdir, int(steps), int(every), coordinator, int(count), int(index), float(sleep_s))
        return
    if argv[0] == "chain":
        workdir, num_steps, every, out, seed, count, sleep_s = argv[1:8]
        chain(workdir, int(num_steps), int(every), out, int(seed), int(count), float(sleep_s))
        return
    workdir, num_steps, every, out = argv[0], int(argv[1]), int(argv[2]), argv[3]
    sleep_s = float(argv[4]) if len(argv) > 4 else 0.0
    save_params(train(workdir, num_steps, every, make_iterator(sleep_s)), out)


if __name__ == "__main__":
    main(sys.argv[1:])
