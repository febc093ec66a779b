"""One process of a local multi-process JAX run (launched by tests, not collected by pytest).

    XLA_FLAGS=--xla_force_host_platform_device_count=2 JAX_PLATFORMS=cpu \
    python tests/multiprocess_worker.py --task psum \
        --coordinator-address 127.0.0.1:PORT --num-processes 2 --process-id 0

Prints one line ``RESULT {json}`` for the parent to compare across processes. New tasks are
added to ``TASKS`` (a function ``args -> dict`` run after ``initialize_distributed``).
"""

from __future__ import annotations

import argparse
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax  # noqa: E402
import numpy as np  # noqa: E402
from jax.sharding import PartitionSpec as P  # noqa: E402

from jaxar import distributed, sharding  # noqa: E402

GLOBAL_ROWS, COLUMNS = 8, 3


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


TASKS = {"psum": run_psum}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--task", choices=sorted(TASKS), default="psum")
    distributed.add_distributed_flags(parser)
    args = parser.parse_args(argv)
    info = distributed.initialize_from_flags(args)
    result = TASKS[args.task](args)
    result["mode"] = info.mode
    print("RESULT " + json.dumps(result, sort_keys=True), flush=True)
    jax.distributed.shutdown()


if __name__ == "__main__":
    main()
