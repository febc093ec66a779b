"""Fault injection: stop signals at random moments, SIGKILL during a save, damaged checkpoints.

One uninterrupted reference run (``tests/resume_worker.py``, subprocess) is shared by every
test; runs share a persistent compilation cache so each program compiles once.
"""

import json
import os
import shutil
import signal
import subprocess
import sys
import time

import jax
import numpy as np
import pytest

from jaxar.train.checkpoint import CORRUPT_DIR, Checkpointer, CorruptCheckpointError
from jaxar.train.loop import PREEMPTED_EXIT_CODE
from tests import resume_worker

WORKER = os.path.join(os.path.dirname(__file__), "resume_worker.py")
NUM_STEPS, EVERY = 64, 8  # the reference keeps steps 48, 56, 64
SIGNALS, SEED = 10, 0


def _env(cache):
    env = dict(os.environ)
    env.update(XLA_FLAGS="--xla_force_host_platform_device_count=8", JAX_PLATFORMS="cpu")
    env["JAXAR_TEST_JAX_CACHE"] = str(cache)
    return env


def _start(cache, *args):
    return subprocess.Popen(
        [sys.executable, WORKER, *map(str, args)],
        env=_env(cache),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def _finish(proc, expect_rc=0):
    output, _ = proc.communicate(timeout=300)
    assert proc.returncode == expect_rc, output[-4000:]
    return output


def _assert_same_params(path_a, path_b):
    a, b = np.load(path_a), np.load(path_b)
    assert sorted(a) == sorted(b)
    for name in a:
        assert np.array_equal(a[name], b[name]), name


def _steps(workdir):
    return sorted(int(n) for n in os.listdir(os.path.join(workdir, "checkpoints")) if n.isdigit())


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """(workdir, params.npz, compilation cache) of one uninterrupted run."""
    root = tmp_path_factory.mktemp("faults")
    cache, workdir, out = root / "jax_cache", root / "reference", root / "reference.npz"
    _finish(_start(cache, workdir, NUM_STEPS, EVERY, out))
    assert _steps(workdir) == [48, 56, 64]
    return workdir, out, cache


def test_stop_signals_at_random_moments_save_the_reported_step(reference, tmp_path):
    _, ref_params, cache = reference
    out = tmp_path / "chain.npz"
    output = _finish(
        _start(cache, "chain", tmp_path / "w", NUM_STEPS, EVERY, out, SEED, SIGNALS, 0.01)
    )
    records = [json.loads(line) for line in open(f"{out}.json")]
    assert len(records) == SIGNALS
    reported = [r["reported"] for r in records]
    assert None not in reported, records  # every signal stopped a run mid-way
    assert reported == sorted(set(reported)), reported  # each resumed run made progress
    assert {r["signal"] for r in records} == {"SIGTERM", "SIGINT"}
    for record in records:
        assert record["restored_step"] == record["reported"], record  # on disk, readable
        message = f"{record['signal']}: checkpoint of step {record['reported']} is on disk"
        assert record["message"].startswith(message), record
        assert message in output
    _assert_same_params(ref_params, out)  # resuming to the end == the uninterrupted run


def test_sigterm_exits_with_the_preempted_status(reference, tmp_path):
    _, _, cache = reference
    workdir = tmp_path / "w"
    proc = _start(cache, workdir, NUM_STEPS, EVERY, tmp_path / "unused.npz", 0.02)
    metrics = workdir / "metrics.jsonl"
    deadline = time.monotonic() + 120
    while not (metrics.exists() and metrics.read_text().count("\n") >= 2):
        assert proc.poll() is None and time.monotonic() < deadline, proc.stdout.read()
        time.sleep(0.01)
    proc.send_signal(signal.SIGTERM)
    output = _finish(proc, expect_rc=PREEMPTED_EXIT_CODE)
    step = _steps(workdir)[-1]
    assert f"SIGTERM: checkpoint of step {step} is on disk" in output
    assert f"exiting with status {PREEMPTED_EXIT_CODE}" in output


def test_sigkill_during_a_save_then_resume(reference, tmp_path):
    _, ref_params, cache = reference
    workdir = tmp_path / "w"
    proc = _start(cache, workdir, NUM_STEPS, 1, tmp_path / "unused.npz", 0.002)
    checkpoints, deadline = workdir / "checkpoints", time.monotonic() + 120
    while True:  # kill once an orbax temporary (unfinished) step dir appears after 3 kept steps
        names = os.listdir(checkpoints) if checkpoints.is_dir() else []
        if any("tmp" in n for n in names) and len([n for n in names if n.isdigit()]) >= 3:
            proc.send_signal(signal.SIGKILL)
            break
        assert proc.poll() is None and time.monotonic() < deadline, proc.stdout.read()
    _finish(proc, expect_rc=-signal.SIGKILL)
    assert any("tmp" in n for n in os.listdir(checkpoints))  # really killed mid-save
    finished, logged = (
        _steps(workdir)[-1],
        len((workdir / "metrics.jsonl").read_text().splitlines()),
    )
    out = tmp_path / "resumed.npz"
    _finish(_start(cache, workdir, NUM_STEPS, 1, out))
    lines = (workdir / "metrics.jsonl").read_text().splitlines()
    assert json.loads(lines[logged])["step"] == finished + 1  # resumed from the last finished step
    _assert_same_params(ref_params, out)


def test_sigterm_to_one_process_stops_every_process_at_the_same_step(reference, tmp_path):
    """Two processes (2 CPU devices each): SIGTERM to process 1 only; both save one agreed
    step (JAX's preemption sync, or the per-step all-gather) and exit 75."""
    import socket

    _, _, cache = reference
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    workdir, env = tmp_path / "w", _env(cache)
    env["XLA_FLAGS"] = "--xla_force_host_platform_device_count=2"
    procs = [
        subprocess.Popen(
            [
                sys.executable,
                WORKER,
                "multi",
                str(workdir),
                str(NUM_STEPS),
                str(EVERY),
                f"127.0.0.1:{port}",
                "2",
                str(i),
                "0.01",
            ],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )  # fmt: skip
        for i in range(2)
    ]
    try:
        metrics, deadline = workdir / "metrics.jsonl", time.monotonic() + 150
        while not (metrics.exists() and metrics.read_text().count("\n") >= 3):
            assert all(p.poll() is None for p in procs) and time.monotonic() < deadline
            time.sleep(0.02)
        procs[1].send_signal(signal.SIGTERM)
        outputs = [p.communicate(timeout=150)[0] for p in procs]
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
    stops = []
    for proc, output in zip(procs, outputs):
        assert proc.returncode == PREEMPTED_EXIT_CODE, output[-3000:]
        (line,) = [x for x in output.splitlines() if x.startswith("STOPPED ")]
        stops.append(json.loads(line[len("STOPPED ") :]))
    print("stops:", stops)
    assert stops[0]["step"] == stops[1]["step"] < NUM_STEPS, stops
    stops = [s["step"] for s in stops]
    assert stops[0] in _steps(workdir)


# ---------------------------------------------------------------- damaged checkpoints


def _truncate_blobs(step_dir):
    """Cuts every OCDBT data file to half its size (an interrupted copy or upload)."""
    blobs = [p for p in (step_dir / "state").rglob("*") if p.is_file() and p.parent.name == "d"]
    assert blobs
    for blob in blobs:
        blob.write_bytes(blob.read_bytes()[: blob.stat().st_size // 2])


DAMAGE = {
    "truncated-blob": (_truncate_blobs, "unreadable"),
    "missing-manifest": (lambda d: (d / "state" / "manifest.ocdbt").unlink(), "missing-manifest"),
    "missing-metadata": (lambda d: (d / "state" / "_METADATA").unlink(), "missing-metadata"),
    "missing-step-metadata": (
        lambda d: (d / "_CHECKPOINT_METADATA").unlink(),
        "missing-checkpoint-metadata",
    ),
    "deleted-state": (lambda d: shutil.rmtree(d / "state"), "missing-state"),
    "deleted-data": (lambda d: shutil.rmtree(d / "data"), "missing-data"),
}


@pytest.fixture(scope="module")
def abstract_state():
    return resume_worker.abstract_train_state(NUM_STEPS)


def _damaged_copy(reference, tmp_path, kind):
    workdir = tmp_path / "w"
    shutil.copytree(reference[0], workdir)
    DAMAGE[kind][0](workdir / "checkpoints" / "64")
    files = sorted(
        str(p.relative_to(workdir / "checkpoints" / "64"))
        for p in (workdir / "checkpoints" / "64").rglob("*")
    )
    return workdir, files


def _restore(workdir, abstract_state, strict=False):
    checkpointer = Checkpointer(workdir)
    try:
        data_iter = resume_worker.make_iterator()
        state = checkpointer.restore_latest(
            abstract_state, data_iter, resume_worker.checkpoint_config(NUM_STEPS), strict=strict
        )
        return state, data_iter
    finally:
        checkpointer.close()


@pytest.mark.parametrize("kind", sorted(DAMAGE))
def test_damaged_latest_falls_back_and_is_moved_aside(
    reference, abstract_state, tmp_path, kind, caplog
):
    workdir, files = _damaged_copy(reference, tmp_path, kind)
    state, data_iter = _restore(workdir, abstract_state)
    assert int(jax.device_get(state.step)) == 56
    expected_iter = resume_worker.make_iterator()
    for _ in range(56):
        next(expected_iter)
    assert data_iter.get_state() == expected_iter.get_state()  # iterator from step 56 too
    assert _steps(workdir) == [48, 56]
    (moved,) = os.listdir(workdir / CORRUPT_DIR)
    reason = DAMAGE[kind][1]
    assert moved.startswith(f"64-{reason}-"), moved
    kept = workdir / CORRUPT_DIR / moved
    assert sorted(str(p.relative_to(kept)) for p in kept.rglob("*")) == sorted(
        [*files, "ERROR.txt"]
    )
    warning = " ".join(r.getMessage() for r in caplog.records if r.levelname == "WARNING")
    assert "step 64" in warning and "from step 56" in warning and reason in warning


def test_strict_restore_raises_and_moves_nothing(reference, abstract_state, tmp_path):
    workdir, _ = _damaged_copy(reference, tmp_path, "truncated-blob")
    with pytest.raises(CorruptCheckpointError, match=r"checkpoints/64.*strict_restore=True"):
        _restore(workdir, abstract_state, strict=True)
    assert _steps(workdir) == [48, 56, 64] and not (workdir / CORRUPT_DIR).exists()


def test_no_readable_checkpoint_raises_and_moves_nothing(reference, abstract_state, tmp_path):
    workdir, _ = _damaged_copy(reference, tmp_path, "deleted-state")
    for step in (48, 56):
        shutil.rmtree(workdir / "checkpoints" / str(step) / "state")
    with pytest.raises(CorruptCheckpointError, match="no readable checkpoint"):
        _restore(workdir, abstract_state)
    assert _steps(workdir) == [48, 56, 64] and not (workdir / CORRUPT_DIR).exists()


def test_fit_resumes_past_a_damaged_checkpoint(reference, tmp_path):
    """Through fit: falls back to 56, redoes 57..64, ends equal to the reference."""
    _, ref_params, cache = reference
    workdir, _ = _damaged_copy(reference, tmp_path, "truncated-blob")
    out = tmp_path / "resumed.npz"
    output = _finish(_start(cache, workdir, NUM_STEPS, EVERY, out))
    assert "step 64 cannot be read" in output and "resuming from step 56" in output
    _assert_same_params(ref_params, out)
    assert _steps(workdir) == [48, 56, 64]  # the redone step 64 is a new, intact checkpoint
