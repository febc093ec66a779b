"""Multi-host training on one machine: 2 processes x 2 fake CPU devices train the tiny GPT.

Each process feeds only its own half of every global batch of 8 (``make_array_dataset`` with
``process_index`` / ``process_count``); the mesh puts all 4 devices on the fsdp axis, so params
are split across processes. The loss curve must match a single-process run on 4 devices over
the same global batches, and ``fit`` must checkpoint once (one metadata tree, one metrics log,
one array shard set per process) in a form a single process restores.
"""

from __future__ import annotations

import functools
import json
import os
import socket
import subprocess
import sys

import jax
import multiprocess_worker as worker
import numpy as np
import pytest

from jaxar.train.checkpoint import restore_for_eval

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
WORKER = os.path.join(REPO, "tests", "multiprocess_worker.py")
NUM_PROCESSES, DEVICES_PER_PROCESS = 2, 2
TOLERANCE = 1e-5
# Params after 6 Adam steps: Adam divides by sqrt(v), so last-bit differences in near-zero
# gradients (another reduction order across processes) move single weights by up to ~lr.
# Per-leaf sums therefore get an absolute tolerance; losses keep TOLERANCE.
PARAMS_ATOL = 2e-3


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _start(
    task: str, *extra: str, processes: int = NUM_PROCESSES, devices: int = DEVICES_PER_PROCESS
) -> list[subprocess.Popen]:
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    env["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={devices}"
    for name in ("JAXAR_COORDINATOR", "JAXAR_NUM_PROCESSES", "JAXAR_PROCESS_ID"):
        env.pop(name, None)
    address = f"127.0.0.1:{_free_port()}"
    return [
        subprocess.Popen(
            [sys.executable, WORKER, "--task", task, "--coordinator-address", address,
             "--num-processes", str(processes), "--process-id", str(i), *extra],
            env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        )
        for i in range(processes)
    ]  # fmt: skip


def _results(procs: list[subprocess.Popen], timeout: int = 170) -> list[dict]:
    """Waits for the workers; returns their RESULT dicts in process order."""
    outputs = []
    try:
        for proc in procs:
            outputs.append(proc.communicate(timeout=timeout)[0])
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
    results = []
    for proc, out in zip(procs, outputs):
        assert proc.returncode == 0, out[-3000:]
        lines = [line for line in out.splitlines() if line.startswith("RESULT ")]
        assert len(lines) == 1, out[-3000:]
        results.append(json.loads(lines[0][len("RESULT ") :]))
    assert [r["process_index"] for r in results] == list(range(len(procs)))
    return results


@functools.cache
def single_process_reference() -> tuple[tuple[float, ...], tuple[float, ...]]:
    """(losses, params fingerprint) of one process on 4 devices over the same global batches."""
    _, arrays, config = worker.gpt_setup()
    batches = worker.global_gpt_batches(arrays, worker.GPT_STEPS)
    mesh = worker.gpt_mesh(jax.devices()[: NUM_PROCESSES * DEVICES_PER_PROCESS])
    losses, state = worker.train_gpt_steps(mesh, batches, config)
    return tuple(losses), tuple(worker.params_fingerprint(state.params))


def test_global_batches_are_the_process_halves_in_order():
    _, arrays, _ = worker.gpt_setup()
    first = worker.global_gpt_batches(arrays, 2)
    halves = [worker.take_local_batches(arrays, i, 2) for i in range(NUM_PROCESSES)]
    for step, batch in enumerate(first):
        assert batch["codes"].shape == (worker.GPT_GLOBAL_BATCH, 16)
        np.testing.assert_array_equal(batch["codes"][:4], halves[0][step]["codes"])
        np.testing.assert_array_equal(batch["codes"][4:], halves[1][step]["codes"])
    # Process shards are disjoint parts of the dataset.
    rows = [set(map(bytes, h[0]["codes"])) for h in halves]
    assert not rows[0] & rows[1]


def test_two_processes_train_like_one():
    procs = _start("train_gpt")
    ref_losses, ref_fingerprint = single_process_reference()  # runs while the workers do
    results = _results(procs)
    assert ref_losses[-1] < ref_losses[0] - 0.1, ref_losses  # the model learns something
    for r in results:
        assert (r["process_count"], r["global_devices"]) == (NUM_PROCESSES, 4)
        np.testing.assert_allclose(r["losses"], ref_losses, rtol=0, atol=TOLERANCE)
        np.testing.assert_allclose(r["fingerprint"], ref_fingerprint, rtol=0, atol=PARAMS_ATOL)
    assert results[0]["losses"] == results[1]["losses"]  # one SPMD program: identical
    assert results[0]["fingerprint"] == results[1]["fingerprint"]


def test_fit_across_processes_checkpoints_once(tmp_path):
    workdir = tmp_path / "run"
    procs = _start("fit_gpt", "--workdir", str(workdir))
    ref_losses, ref_fingerprint = single_process_reference()
    results = _results(procs)
    steps = worker.GPT_STEPS
    for r in results:
        assert r["step"] == steps
        np.testing.assert_allclose(r["fingerprint"], ref_fingerprint, rtol=0, atol=PARAMS_ATOL)
    assert results[0]["fingerprint"] == results[1]["fingerprint"]
    # Metrics are written by process 0 only: one line per step, once.
    lines = [json.loads(x) for x in (workdir / "metrics.jsonl").read_text().splitlines()]
    assert [m["step"] for m in lines] == list(range(1, steps + 1))
    np.testing.assert_allclose([m["loss"] for m in lines], ref_losses, rtol=0, atol=TOLERANCE)
    assert len(list((workdir / "tensorboard").iterdir())) == 1
    # keep_checkpoints=2 of the saves at steps 2, 4, 6; no temporary directories left.
    checkpoints = workdir / "checkpoints"
    assert sorted(p.name for p in checkpoints.iterdir()) == ["4", "6"]
    state_dir = checkpoints / str(steps) / "state"
    names = sorted(p.name for p in state_dir.iterdir())
    assert "_METADATA" in names and not any("tmp" in n for n in names), names
    # Each process wrote its own params shards (fsdp across processes).
    assert {n for n in names if n.startswith("ocdbt.process_")} == {
        f"ocdbt.process_{i}" for i in range(NUM_PROCESSES)
    }
    for i in range(NUM_PROCESSES):
        assert any((state_dir / f"ocdbt.process_{i}" / "d").iterdir())
    # One process restores the two-process checkpoint.
    restored, config = restore_for_eval(workdir)
    assert int(restored["step"]) == steps
    assert config["num_steps"] == steps
    fingerprint = worker.params_fingerprint(restored["params"])
    np.testing.assert_allclose(fingerprint, results[0]["fingerprint"], rtol=1e-5, atol=1e-5)


def test_fit_task_needs_a_workdir():
    with pytest.raises(ValueError, match="--workdir"):
        worker.run_fit_gpt(worker.argparse.Namespace(workdir=None))


@pytest.mark.slow
def test_two_processes_extract_and_train_one_epoch_through_train_generator(
    tmp_path, tmp_path_factory
):
    """Extraction and ``train_generator`` on 2 processes x 2 devices vs 1 process x 4 devices:
    the epoch visits every image exactly once (each process its own rows of every global
    batch), the global batches and loss curves are the same, and so are the extracted shards."""
    import codes_setup

    images, tokenizer = codes_setup.shared_setup(tmp_path_factory)
    steps = 32 // 8  # one epoch at global batch 8
    common = ["--images", str(images), "--tokenizer", str(tokenizer), "--steps", str(steps)]
    two = _start("generator_epoch", "--workdir", str(tmp_path / "two"), *common)
    one = _start("generator_epoch", "--workdir", str(tmp_path / "one"), *common,
                 processes=1, devices=NUM_PROCESSES * DEVICES_PER_PROCESS)  # fmt: skip
    two, (one,) = _results(two, timeout=400), _results(one, timeout=400)
    assert [r["step"] for r in (*two, one)] == [steps] * 3
    assert [len(r["ids"]) for r in two] == [steps, steps] and len(one["ids"]) == steps
    global_ids = [two[0]["ids"][s] + two[1]["ids"][s] for s in range(steps)]
    seen = [i for batch in global_ids for i in batch]
    assert sorted(seen) == list(range(32))  # the whole dataset, each image once
    assert not set(sum(two[0]["ids"], [])) & set(sum(two[1]["ids"], []))
    assert global_ids == one["ids"]  # the same global batches, in the same order
    assert len(two[0]["losses"]) == steps and two[1]["losses"] == []  # process 0 logs
    np.testing.assert_allclose(two[0]["losses"], one["losses"], rtol=0, atol=TOLERANCE)
    # Both extractions wrote the same shards (4 shards of 8 images, 2 per process).
    shard_dirs = [tmp_path / run / "codes" / "train" for run in ("two", "one")]
    names = [sorted(p.name for p in d.glob("*.array_record")) for d in shard_dirs]
    assert len(names[0]) == 4 and names[0] == names[1]
    names = names[0]
    for name in names:
        assert (shard_dirs[0] / name).read_bytes() == (shard_dirs[1] / name).read_bytes(), name
    index = json.loads((shard_dirs[0] / "index.json").read_text())
    assert index["num_examples"] == 32 and index["layout"]["code_shape"] == [64]
