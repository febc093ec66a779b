"""Multi-process start-up: one call at the top of every experiment script.

``initialize_distributed`` picks one of three routes:

- **TPU slice** (TPU device files or TPU worker variables present): ``jax.distributed.initialize()``
  with no arguments; JAX reads the coordinator, process count and id from the TPU metadata, so
  the same command line runs unchanged on every worker (``--worker=all``).
- **explicit** (flags or ``JAXAR_COORDINATOR`` / ``JAXAR_NUM_PROCESSES`` / ``JAXAR_PROCESS_ID``):
  CPU or GPU clusters without auto-detection, and the two-process CPU test. On CPU the gloo
  cross-process collectives are switched on first.
- **single process**: nothing to do.

It must run before anything touches a JAX backend (``jax.devices()``, an array, a jit call).
Calling it again returns the state of the first call.
"""

from __future__ import annotations

import argparse
import dataclasses
import glob
import os
import re
from collections.abc import Sequence

import jax

ENV_COORDINATOR = "JAXAR_COORDINATOR"
ENV_NUM_PROCESSES = "JAXAR_NUM_PROCESSES"
ENV_PROCESS_ID = "JAXAR_PROCESS_ID"

# Variables set on Cloud TPU workers (or by launchers on them) that mean "this is a TPU slice".
_TPU_ENV_VARS = (
    "TPU_WORKER_HOSTNAMES",
    "TPU_PROCESS_ADDRESSES",
    "TPU_WORKER_ID",
    "TPU_ACCELERATOR_TYPE",
    "MEGASCALE_COORDINATOR_ADDRESS",
)
# TPU chips appear as /dev/accel* (v2-v5e) or /dev/vfio/<n> (v5p, v6e).
_TPU_DEVICE_GLOBS = ("/dev/accel*", "/dev/vfio/[0-9]*")
_ADDRESS = re.compile(r"^[\w.\-\[\]:]+:\d{1,5}$")


@dataclasses.dataclass(frozen=True)
class DistributedInfo:
    """What ``initialize_distributed`` did. ``mode``: single | explicit | tpu-auto | external."""

    process_index: int
    process_count: int
    coordinator_address: str | None
    mode: str


_STATE: DistributedInfo | None = None


def tpu_environment() -> bool:
    """True on a Cloud TPU VM (device files or TPU worker variables), unless JAX_PLATFORMS
    names platforms other than TPU. Touches no JAX backend."""
    platforms = os.environ.get("JAX_PLATFORMS", "").strip().lower()
    if platforms and "tpu" not in platforms.split(","):
        return False
    if any(os.environ.get(name) for name in _TPU_ENV_VARS):
        return True
    return any(glob.glob(pattern) for pattern in _TPU_DEVICE_GLOBS)


def _from_env(value, name: str, cast=str):
    if value is not None:
        return value
    raw = os.environ.get(name)
    if raw is None or raw == "":
        return None
    try:
        return cast(raw)
    except ValueError as err:
        raise ValueError(
            f"environment variable {name}={raw!r} is not a valid {cast.__name__}"
        ) from err


def _check_explicit(coordinator: str | None, num_processes: int | None, process_id: int | None):
    if num_processes is not None and num_processes < 1:
        raise ValueError(f"num_processes must be >= 1, got {num_processes}")
    if process_id is not None and num_processes is None:
        raise ValueError(f"process_id={process_id} given without num_processes")
    if num_processes is None or num_processes == 1:
        if process_id not in (None, 0):
            raise ValueError(
                f"process_id={process_id} must be < num_processes={num_processes or 1}"
            )
        return
    if not coordinator:
        raise ValueError(
            f"num_processes={num_processes} needs a coordinator address (host:port), given by "
            f"--coordinator-address or {ENV_COORDINATOR}"
        )
    if not _ADDRESS.match(coordinator):
        raise ValueError(f"coordinator address must look like host:port, got {coordinator!r}")
    if process_id is None:
        raise ValueError(
            f"num_processes={num_processes} needs a process_id in [0, {num_processes})"
        )
    if not 0 <= process_id < num_processes:
        raise ValueError(f"process_id={process_id} must be in [0, num_processes={num_processes})")


def _check_same_as_before(num_processes: int | None, process_id: int | None) -> None:
    assert _STATE is not None
    if num_processes is not None and num_processes != _STATE.process_count:
        raise ValueError(
            f"already initialized with {_STATE.process_count} processes, asked for {num_processes}"
        )
    if process_id is not None and process_id != _STATE.process_index:
        raise ValueError(
            f"already initialized as process {_STATE.process_index}, asked for {process_id}"
        )


def _backends_started() -> bool:
    try:
        from jax._src import xla_bridge

        return bool(xla_bridge.backends_are_initialized())
    except (ImportError, AttributeError):  # private API moved: let jax report the problem
        return False


def initialize_distributed(
    coordinator_address: str | None = None,
    num_processes: int | None = None,
    process_id: int | None = None,
    local_device_ids: Sequence[int] | None = None,
) -> DistributedInfo:
    """Initializes multi-process JAX once; a no-op for a single process.

    Arguments left as None fall back to ``JAXAR_COORDINATOR``, ``JAXAR_NUM_PROCESSES`` and
    ``JAXAR_PROCESS_ID``. With none of them set on a TPU VM, JAX auto-detects the slice.
    Raises ValueError for inconsistent settings (process_id >= num_processes, no coordinator
    for several processes, a second call with different values).
    """
    global _STATE
    coordinator_address = _from_env(coordinator_address, ENV_COORDINATOR)
    num_processes = _from_env(num_processes, ENV_NUM_PROCESSES, int)
    process_id = _from_env(process_id, ENV_PROCESS_ID, int)
    _check_explicit(coordinator_address, num_processes, process_id)
    if _STATE is not None:
        _check_same_as_before(num_processes, process_id)
        return _STATE
    if jax.distributed.is_initialized():  # someone called jax.distributed.initialize directly
        _STATE = DistributedInfo(jax.process_index(), jax.process_count(), None, "external")
        _check_same_as_before(num_processes, process_id)
        return _STATE
    explicit = num_processes is not None and num_processes > 1
    if not explicit and not (num_processes is None and tpu_environment()):
        _STATE = DistributedInfo(0, 1, None, "single")
        return _STATE
    if _backends_started():
        raise RuntimeError(
            "initialize_distributed must run before any JAX computation or jax.devices() call"
        )
    if explicit:
        # Cross-process collectives on CPU need an implementation; gloo ships with jaxlib.
        jax.config.update("jax_cpu_collectives_implementation", "gloo")
        jax.distributed.initialize(
            coordinator_address=coordinator_address,
            num_processes=num_processes,
            process_id=process_id,
            local_device_ids=local_device_ids,
        )
        mode = "explicit"
    else:
        jax.distributed.initialize(local_device_ids=local_device_ids)
        mode = "tpu-auto"
    _STATE = DistributedInfo(jax.process_index(), jax.process_count(), coordinator_address, mode)
    return _STATE


def is_primary() -> bool:
    """True on process 0: the one that writes logs, sample grids and config files."""
    return jax.process_index() == 0


def add_distributed_flags(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Adds --coordinator-address, --num-processes, --process-id, --local-device-ids."""
    group = parser.add_argument_group("multi-process (not needed on Cloud TPU)")
    group.add_argument("--coordinator-address", default=None, help="host:port of process 0")
    group.add_argument("--num-processes", type=int, default=None)
    group.add_argument("--process-id", type=int, default=None)
    group.add_argument(
        "--local-device-ids",
        type=lambda s: [int(x) for x in s.split(",") if x],
        default=None,
        help="comma-separated local device ids for this process",
    )
    return parser


def initialize_from_flags(args: argparse.Namespace) -> DistributedInfo:
    """``initialize_distributed`` with the values parsed from ``add_distributed_flags``."""
    return initialize_distributed(
        coordinator_address=args.coordinator_address,
        num_processes=args.num_processes,
        process_id=args.process_id,
        local_device_ids=args.local_device_ids,
    )
