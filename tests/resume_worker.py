"""Subprocess helper for test_resume.py (and the tiny task shared by the train tests).

Run: ``python tests/resume_worker.py WORKDIR NUM_STEPS CHECKPOINT_EVERY OUT_NPZ [SLEEP_S]``.
Trains a tiny MLP on in-memory data through ``jaxar.train.loop.fit`` on a (2, 2, 2) mesh with
``log_every=1``; every step logs the example ids of its batch (``id_0 .. id_7``) so the test
can check where the data stream resumed. Writes the final params to OUT_NPZ.
"""

from __future__ import annotations

import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import flax.linen as nn  # noqa: E402
import grain  # noqa: E402
import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import optax  # noqa: E402

from jaxar.train.task import Task  # noqa: E402

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


def main(argv: list[str]) -> None:
    from jaxar.sharding import make_mesh
    from jaxar.train.loop import TrainConfig, fit
    from jaxar.train.optimizer import OptimizerConfig

    workdir, num_steps, every, out = argv[0], int(argv[1]), int(argv[2]), argv[3]
    sleep_s = float(argv[4]) if len(argv) > 4 else 0.0
    config = TrainConfig(
        num_steps=num_steps,
        optimizer=OptimizerConfig(learning_rate=1e-2, warmup_steps=2, total_steps=num_steps),
        log_every=1,
        checkpoint_every=every,
        ema_decay=0.9,
        progress_bar=False,
    )
    state = fit(
        make_task(log_ids=True),
        make_iterator(sleep_s),
        config=config,
        workdir=workdir,
        mesh=make_mesh(2, 2, 2),
        rng_seed=0,
        checkpoint_config={"model": "tiny_mlp", "num_steps": num_steps},
    )
    leaves = jax.tree_util.tree_flatten_with_path(jax.device_get(state.params))[0]
    np.savez(out, **{jax.tree_util.keystr(path): value for path, value in leaves})


if __name__ == "__main__":
    main(sys.argv[1:])
