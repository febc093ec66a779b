"""One process of a local multi-process JAX run (launched by tests, not collected by pytest).

    XLA_FLAGS=--xla_force_host_platform_device_count=2 JAX_PLATFORMS=cpu \
    python tests/multiprocess_worker.py --task psum \
        --coordinator-address 127.0.0.1:PORT --num-processes 2 --process-id 0

Prints one line ``RESULT {json}`` for the parent to compare across processes. New tasks are
added to ``TASKS`` (a function ``args -> dict`` run after ``initialize_distributed``).

Tasks: ``psum`` (global reductions of a batch split over processes) and ``train_gpt`` (the tiny
GPT trained step by step) and ``fit_gpt`` (the same training through ``fit`` with checkpoints in
``--workdir``); in both each process feeds its own half of every global batch.
``generator_epoch`` extracts an image folder's codes and trains through ``train_generator``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

_START = time.perf_counter()

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax  # noqa: E402
import numpy as np  # noqa: E402
from jax.sharding import PartitionSpec as P  # noqa: E402

from jaxar import distributed, sharding  # noqa: E402
from jaxar.data import make_array_dataset  # noqa: E402
from jaxar.data.global_batch import host_to_global  # noqa: E402
from jaxar.generators.gpt import GPTConfig, gpt_config, make_gpt_task  # noqa: E402
from jaxar.train.loop import TrainConfig, fit  # noqa: E402
from jaxar.train.optimizer import OptimizerConfig, learning_rate_at, make_optimizer  # noqa: E402
from jaxar.train.state import create_train_state  # noqa: E402
from jaxar.train.step import jit_train_step, make_train_step  # noqa: E402

GLOBAL_ROWS, COLUMNS = 8, 3
# Tiny-GPT training: steps, global batch, examples in the fixed code dataset, seed.
GPT_STEPS, GPT_GLOBAL_BATCH, GPT_EXAMPLES, GPT_SEED = 6, 8, 64, 0
GPT_PROCESSES = 2


def global_data() -> np.ndarray:
    """The global batch every process agrees on; each process only holds its own rows."""
    return np.arange(GLOBAL_ROWS * COLUMNS, dtype=np.float32).reshape(GLOBAL_ROWS, COLUMNS) ** 2


def run_psum(args: argparse.Namespace) -> dict:
    """Global mean / sum of a batch split over processes, by jit and by shard_map psum."""
    mesh = sharding.make_mesh(data=-1)
    rows = GLOBAL_ROWS // jax.process_count()
    start = jax.process_index() * rows
    local = global_data()[start : start + rows]  # [rows, 3]
    x = jax.make_array_from_process_local_data(
        sharding.batch_sharding(mesh, ndim=2), local, (GLOBAL_ROWS, COLUMNS)
    )  # [8, 3] spread over every device of every process

    column_mean = jax.jit(lambda a: a.mean(axis=0), out_shardings=sharding.replicated(mesh))(x)

    def shard_sum(block):  # [rows per device, 3] -> [3], summed over all devices
        return jax.lax.psum(block.sum(axis=0), ("data", "fsdp"))

    psum = jax.jit(
        jax.shard_map(shard_sum, mesh=mesh, in_specs=P(("data", "fsdp")), out_specs=P())
    )(x)
    return {
        "process_index": jax.process_index(),
        "process_count": jax.process_count(),
        "global_devices": jax.device_count(),
        "local_devices": jax.local_device_count(),
        "column_mean": np.asarray(column_mean).tolist(),
        "psum": np.asarray(psum).tolist(),
    }


def _progress(message: str) -> None:
    """Seconds since start-up and a message on stderr (shown when a test fails)."""
    print(f"[{time.perf_counter() - _START:7.1f}s] {message}", file=sys.stderr, flush=True)


def gpt_setup() -> tuple[GPTConfig, dict[str, np.ndarray], TrainConfig]:
    """The tiny GPT with every dropout off (deterministic), its fixed random code dataset
    ``{"codes": int32 [64, 16], "label": int32 [64]}`` and the loop settings.

    Each class has a random code template; examples copy it with a quarter of the tokens
    replaced at random, so the loss falls visibly within a few steps.
    """
    cfg = gpt_config("GPT-tiny", class_dropout_prob=0.0, attn_dropout=0.0)
    rng = np.random.default_rng(GPT_SEED)
    shape = (GPT_EXAMPLES, cfg.block_size)
    templates = rng.integers(0, cfg.vocab_size, (cfg.num_classes, cfg.block_size))
    labels = rng.integers(0, cfg.num_classes, GPT_EXAMPLES)
    noise = rng.integers(0, cfg.vocab_size, shape)
    codes = np.where(rng.random(shape) < 0.25, noise, templates[labels])
    arrays = {"codes": codes.astype(np.int32), "label": labels.astype(np.int32)}
    optimizer = OptimizerConfig(learning_rate=1e-2, warmup_steps=0, total_steps=GPT_STEPS)
    config = TrainConfig(
        num_steps=GPT_STEPS,
        optimizer=optimizer,
        log_every=1,
        checkpoint_every=2,
        keep_checkpoints=2,
        ema_decay=None,  # less to compile; EMA is covered by the single-process tests
        progress_bar=False,
    )
    return cfg, arrays, config


def gpt_dataset(arrays: dict[str, np.ndarray], process_index: int, process_count: int):
    """The grain dataset of one process: its own shard, ``GPT_GLOBAL_BATCH / count`` rows."""
    return make_array_dataset(
        arrays,
        global_batch_size=GPT_GLOBAL_BATCH,
        seed=GPT_SEED,
        process_index=process_index,
        process_count=process_count,
    )


def take_local_batches(
    arrays: dict[str, np.ndarray], process_index: int, process_count: int, steps: int = GPT_STEPS
) -> list[dict[str, np.ndarray]]:
    """The first ``steps`` local batches of one process."""
    iterator = iter(gpt_dataset(arrays, process_index, process_count))
    return [next(iterator) for _ in range(steps)]


def global_gpt_batches(arrays: dict[str, np.ndarray], steps: int) -> list[dict[str, np.ndarray]]:
    """The global batches of a ``GPT_PROCESSES``-process run: each process's local batch
    concatenated in process order (the row order ``make_array_from_process_local_data``
    gives over a mesh whose devices are in process order)."""
    parts = [take_local_batches(arrays, i, GPT_PROCESSES, steps) for i in range(GPT_PROCESSES)]
    return [
        {k: np.concatenate([p[step][k] for p in parts]) for k in parts[0][step]}
        for step in range(steps)
    ]


def gpt_mesh(devices=None):
    """All devices on the fsdp axis: params are split across processes, so both processes
    hold (and checkpoint) distinct shards, and the batch is split over all devices."""
    return sharding.make_mesh(data=1, fsdp=-1, devices=devices)


@jax.jit
def _fingerprint(params):
    leaves = [x.astype(np.float32) for x in jax.tree.leaves(params)]
    return jax.numpy.stack([x.sum() for x in leaves] + [(x * x).sum() for x in leaves])


def params_fingerprint(params) -> list[float]:
    """Per-leaf sums and sums of squares of the params: a cheap, replicated summary."""
    return np.asarray(_fingerprint(params)).tolist()


def train_gpt_steps(mesh, batches: list[dict[str, np.ndarray]], config: TrainConfig):
    """The step-level loop ``fit`` runs (same rng split, optimizer, EMA, step function).

    ``batches`` are this process's rows of each global batch. Returns (losses, state).
    """
    cfg, _, _ = gpt_setup()
    task = make_gpt_task(cfg)
    init_rng, train_rng, _ = jax.random.split(jax.random.key(GPT_SEED), 3)
    optimizer = make_optimizer(config.optimizer)
    state, shardings = create_train_state(
        task, optimizer, init_rng, batches[0], mesh, ema=config.ema_decay is not None
    )
    step = make_train_step(
        task.loss_fn,
        optimizer,
        ema_decay=config.ema_decay,
        learning_rate_fn=lambda s: learning_rate_at(config.optimizer, s),
    )
    step_fn = jit_train_step(step, mesh, shardings, sharding.batch_sharding(mesh))
    losses = []
    for batch in batches:
        state, metrics = step_fn(state, host_to_global(batch, mesh), train_rng)
        losses.append(float(np.asarray(metrics["loss"])))
    return losses, state


def run_train_gpt(args: argparse.Namespace) -> dict:
    """Trains the tiny GPT step by step; returns the per-step losses and a params summary."""
    del args
    _, arrays, config = gpt_setup()
    index, count = jax.process_index(), jax.process_count()
    batches = take_local_batches(arrays, index, count)  # this process's rows
    losses, state = train_gpt_steps(gpt_mesh(), batches, config)
    return {
        "process_index": index,
        "process_count": count,
        "global_devices": jax.device_count(),
        "losses": losses,
        "fingerprint": params_fingerprint(state.params),
    }


def run_fit_gpt(args: argparse.Namespace) -> dict:
    """Trains the tiny GPT with ``fit`` (metrics and checkpoints in ``--workdir``)."""
    if not args.workdir:
        raise ValueError("--task fit_gpt needs --workdir")
    cfg, arrays, config = gpt_setup()
    index, count = jax.process_index(), jax.process_count()
    state = fit(
        make_gpt_task(cfg),
        iter(gpt_dataset(arrays, index, count)),
        config=config,
        workdir=args.workdir,
        mesh=gpt_mesh(),
        rng_seed=GPT_SEED,
    )
    return {
        "process_index": index,
        "step": int(np.asarray(state.step)),
        "fingerprint": params_fingerprint(state.params),
    }


class _RecordIds:
    """A grain map that records the example ids of every batch it passes on (this process)."""

    def __init__(self):
        self.seen: list[list[int]] = []

    def __call__(self, batch):
        self.seen.append(np.asarray(batch["id"]).tolist())
        return batch


def run_generator_epoch(args: argparse.Namespace) -> dict:
    """Extracts the codes of ``--images`` and trains the tiny GPT ``--steps`` steps through
    ``train_generator`` (global batch 8); returns the ids of every local batch and the losses."""
    import codes_setup

    from jaxar.recipes import generator

    recorder = _RecordIds()
    make_dataset = generator.codes_dataset  # what generator_dataset reads, ids included
    generator.codes_dataset = lambda *a, **k: make_dataset(*a, **k).map(recorder)
    config = codes_setup.generator_config(args.images, args.tokenizer, steps=args.steps)
    state = generator.train_generator(config, args.workdir)
    losses = []
    if jax.process_index() == 0:
        lines = (Path(args.workdir) / "metrics.jsonl").read_text().splitlines()
        losses = [json.loads(line)["loss"] for line in lines]
    return {
        "process_index": jax.process_index(),
        "process_count": jax.process_count(),
        "step": int(np.asarray(state.step)),
        "ids": recorder.seen,
        "losses": losses,
    }


TASKS = {
    "psum": run_psum,
    "train_gpt": run_train_gpt,
    "fit_gpt": run_fit_gpt,
    "generator_epoch": run_generator_epoch,
}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--task", choices=sorted(TASKS), default="psum")
    parser.add_argument("--workdir", default=None, help="fit_gpt: checkpoints and metrics")
    parser.add_argument("--images", default=None, help="generator_epoch: image folder")
    parser.add_argument("--tokenizer", default=None, help="generator_epoch: tokenizer workdir")
    parser.add_argument("--steps", type=int, default=4, help="generator_epoch: train steps")
    distributed.add_distributed_flags(parser)
    args = parser.parse_args(argv)
    info = distributed.initialize_from_flags(args)
    _progress(f"initialized as process {jax.process_index()} of {jax.process_count()}")
    result = TASKS[args.task](args)
    _progress("done")
    result["mode"] = info.mode
    print("RESULT " + json.dumps(result, sort_keys=True), flush=True)
    jax.distributed.shutdown()


if __name__ == "__main__":
    main()
