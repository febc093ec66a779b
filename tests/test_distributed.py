"""jaxar.distributed: argument checks, single-process no-op, a real two-process CPU run."""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys

import numpy as np
import pytest

from jaxar import distributed

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
WORKER = os.path.join(REPO, "tests", "multiprocess_worker.py")


@pytest.fixture(autouse=True)
def fresh_state(monkeypatch):
    monkeypatch.setattr(distributed, "_STATE", None)
    for name in (
        distributed.ENV_COORDINATOR,
        distributed.ENV_NUM_PROCESSES,
        distributed.ENV_PROCESS_ID,
    ):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("JAX_PLATFORMS", "cpu")  # never auto-detect a TPU here


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(coordinator_address="127.0.0.1:1234", num_processes=2, process_id=2), "process_id=2"),
        (dict(coordinator_address="127.0.0.1:1234", num_processes=2, process_id=-1), "process_id"),
        (dict(num_processes=2, process_id=0), "coordinator address"),
        (dict(coordinator_address="127.0.0.1", num_processes=2, process_id=0), "host:port"),
        (dict(coordinator_address="127.0.0.1:1234", num_processes=2), "needs a process_id"),
        (dict(process_id=1), "without num_processes"),
        (dict(num_processes=0), "num_processes must be >= 1"),
        (dict(num_processes=1, process_id=1), "process_id=1"),
    ],
)
def test_bad_combinations_raise(kwargs, message):
    with pytest.raises(ValueError, match=message):
        distributed.initialize_distributed(**kwargs)


def test_env_values_are_used_and_checked(monkeypatch):
    monkeypatch.setenv(distributed.ENV_NUM_PROCESSES, "4")
    monkeypatch.setenv(distributed.ENV_PROCESS_ID, "4")
    monkeypatch.setenv(distributed.ENV_COORDINATOR, "10.0.0.1:8476")
    with pytest.raises(ValueError, match=r"process_id=4 must be in \[0, num_processes=4\)"):
        distributed.initialize_distributed()
    monkeypatch.setenv(distributed.ENV_NUM_PROCESSES, "two")
    with pytest.raises(ValueError, match="JAXAR_NUM_PROCESSES"):
        distributed.initialize_distributed()


def test_single_process_is_a_noop_and_idempotent():
    first = distributed.initialize_distributed()
    assert first == distributed.DistributedInfo(0, 1, None, "single")
    assert distributed.initialize_distributed(num_processes=1) is first
    with pytest.raises(ValueError, match="already initialized with 1 processes"):
        distributed.initialize_distributed(
            coordinator_address="127.0.0.1:1", num_processes=2, process_id=0
        )
    assert distributed.is_primary()


def test_tpu_detection_from_environment(monkeypatch):
    monkeypatch.setenv("JAX_PLATFORMS", "")
    monkeypatch.setenv("TPU_WORKER_HOSTNAMES", "10.0.0.2,10.0.0.3")
    assert distributed.tpu_environment()
    monkeypatch.setenv("JAX_PLATFORMS", "cpu")
    assert not distributed.tpu_environment()


def test_flags_parse_into_initialize_arguments():
    parser = distributed.add_distributed_flags(argparse.ArgumentParser())
    args = parser.parse_args(
        "--coordinator-address h:1 --num-processes 3 --process-id 5 --local-device-ids 0,1".split()
    )
    assert args.local_device_ids == [0, 1]
    with pytest.raises(ValueError, match="process_id=5"):
        distributed.initialize_from_flags(args)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def run_local_processes(task: str, num_processes: int = 2, devices_per_process: int = 2):
    """Starts ``num_processes`` workers on 127.0.0.1 and returns their parsed RESULT dicts."""
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    env["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={devices_per_process}"
    address = f"127.0.0.1:{_free_port()}"
    procs = [
        subprocess.Popen(
            [sys.executable, WORKER, "--task", task, "--coordinator-address", address,
             "--num-processes", str(num_processes), "--process-id", str(i)],
            env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        )
        for i in range(num_processes)
    ]  # fmt: skip
    outputs = []
    try:
        for proc in procs:
            outputs.append(proc.communicate(timeout=150)[0])
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
    return results


def test_two_cpu_processes_agree_on_global_reductions():
    from multiprocess_worker import global_data

    results = run_local_processes("psum")
    data = global_data()
    assert [r["process_index"] for r in results] == [0, 1]
    for r in results:
        assert (r["process_count"], r["global_devices"], r["local_devices"]) == (2, 4, 2)
        assert r["mode"] == "explicit"
        np.testing.assert_allclose(r["column_mean"], data.mean(axis=0), rtol=1e-6)
        np.testing.assert_allclose(r["psum"], data.sum(axis=0), rtol=1e-6)
    assert results[0]["column_mean"] == results[1]["column_mean"]
    assert results[0]["psum"] == results[1]["psum"]
