"""Preemption: a run killed (SIGKILL) or stopped (SIGTERM) and resumed equals one clean run.

Runs ``tests/resume_worker.py`` in subprocesses on 8 fake CPU devices.
"""

import json
import os
import signal
import subprocess
import sys
import time

import numpy as np

from jaxar.train.loop import PREEMPTED_EXIT_CODE

WORKER = os.path.join(os.path.dirname(__file__), "resume_worker.py")
NUM_STEPS, EVERY = 16, 4
SLEEP_PER_EXAMPLE = 0.015  # slows the interrupted runs so signals land mid-run


def _start(workdir, out, sleep_s=0.0):
    env = dict(os.environ)
    env["XLA_FLAGS"] = "--xla_force_host_platform_device_count=8"
    env["JAX_PLATFORMS"] = "cpu"
    args = [
        sys.executable,
        WORKER,
        str(workdir),
        str(NUM_STEPS),
        str(EVERY),
        str(out),
        str(sleep_s),
    ]
    return subprocess.Popen(
        args, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )


def _wait_for_checkpoint(proc, workdir, step, timeout=120.0):
    path = os.path.join(workdir, "checkpoints", str(step))
    deadline = time.monotonic() + timeout
    while not os.path.isdir(path):
        assert proc.poll() is None, f"worker ended early:\n{proc.stdout.read()}"
        assert time.monotonic() < deadline, f"no checkpoint {path} after {timeout} s"
        time.sleep(0.02)


def _finish(proc, expect_rc=0):
    output, _ = proc.communicate(timeout=180)
    assert proc.returncode == expect_rc, output
    return output


def _metrics_by_step(workdir):
    """step -> list of logged metric dicts (one per run that executed that step)."""
    lines = {}
    with open(os.path.join(workdir, "metrics.jsonl")) as f:
        for line in f:
            record = json.loads(line)
            lines.setdefault(record.pop("step"), []).append(record)
    return lines


def _checkpoint_steps(workdir):
    names = os.listdir(os.path.join(workdir, "checkpoints"))
    return sorted(int(n) for n in names if n.isdigit())


def test_killed_and_preempted_runs_resume_exactly(tmp_path):
    clean_dir, chain_dir = tmp_path / "clean", tmp_path / "chain"
    clean = _start(clean_dir, tmp_path / "clean.npz")
    # Run 1: SIGKILL once the step-4 checkpoint is committed.
    run = _start(chain_dir, tmp_path / "unused.npz", SLEEP_PER_EXAMPLE)
    _wait_for_checkpoint(run, chain_dir, EVERY)
    run.send_signal(signal.SIGKILL)
    _finish(run, expect_rc=-signal.SIGKILL)
    killed_at = max(_metrics_by_step(chain_dir))
    assert killed_at < NUM_STEPS
    # Run 2: resumes, then SIGTERM after the step-8 checkpoint: saves at its current step.
    run = _start(chain_dir, tmp_path / "unused.npz", SLEEP_PER_EXAMPLE)
    _wait_for_checkpoint(run, chain_dir, 2 * EVERY)
    run.send_signal(signal.SIGTERM)
    output = _finish(run, expect_rc=PREEMPTED_EXIT_CODE)
    stopped_at = max(_metrics_by_step(chain_dir))
    assert stopped_at < NUM_STEPS
    assert _checkpoint_steps(chain_dir)[-1] == stopped_at  # saved at the current step
    assert f"SIGTERM: checkpoint of step {stopped_at} is on disk" in output
    # Run 3: resumes from the SIGTERM checkpoint and finishes.
    _finish(_start(chain_dir, tmp_path / "chain.npz"))
    _finish(clean)

    clean_params, chain_params = np.load(tmp_path / "clean.npz"), np.load(tmp_path / "chain.npz")
    assert sorted(clean_params) == sorted(chain_params)
    for name in clean_params:
        assert np.array_equal(clean_params[name], chain_params[name]), name

    # Every executed step (including steps redone after the kill) saw the same examples and
    # produced the same loss as the clean run.
    clean_metrics, chain_metrics = _metrics_by_step(clean_dir), _metrics_by_step(chain_dir)
    assert sorted(clean_metrics) == sorted(chain_metrics) == list(range(1, NUM_STEPS + 1))
    assert any(len(records) > 1 for records in chain_metrics.values()) or killed_at == EVERY
    for step, records in chain_metrics.items():
        (expected,) = clean_metrics[step]
        for record in records:
            assert record == expected, f"step {step}: {record} != {expected}"
    ids = [[clean_metrics[s][0][f"id_{i}"] for i in range(8)] for s in range(1, NUM_STEPS + 1)]
    assert len({tuple(row) for row in ids}) == NUM_STEPS  # the ids really vary per step
