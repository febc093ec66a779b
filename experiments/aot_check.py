"""Ahead-of-time check of a training config on a target mesh, before booking TPUs.

    python experiments/aot_check.py --config experiments/configs/llamagen_b.py \\
        --data 16 --fsdp 1 --tensor 1 [--json report.json]

Compiles the train step for a (data, fsdp, tensor) mesh of fake CPU devices (as many as the
mesh needs; set automatically) and prints per-device argument / output / temporary bytes and
FLOPs. ``--real-devices`` compiles for the devices present instead (e.g. on a TPU VM).
"""

from __future__ import annotations

import argparse
import importlib.util
import inspect
import math
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from jaxar import aot  # noqa: E402
from jaxar.aot import AotTarget  # noqa: E402


def load_config(spec: str):
    """``path.py`` or ``path.py:arg`` -> the module's ``get_config(arg)``."""
    path, _, arg = spec.partition(":")
    if not os.path.isfile(path):
        raise ValueError(f"config file {path!r} does not exist")
    module_spec = importlib.util.spec_from_file_location("aot_config", path)
    module = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(module)
    if not hasattr(module, "get_config"):
        raise ValueError(f"{path} has no get_config()")
    takes_arg = len(inspect.signature(module.get_config).parameters) > 0
    return module.get_config(arg or None) if takes_arg else module.get_config()


def build_target(config, mesh_shape: tuple[int, int, int]) -> AotTarget:
    """The train step of a generator ``config`` (needs ``config.tokens``; see
    ``jaxar.recipes.aot_target``) with abstract (state, batch, rng) and their shardings."""
    del mesh_shape  # shardings are callables of the mesh
    from jaxar.recipes.aot_target import generator_train_target

    return generator_train_target(config)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", required=True, help="path.py or path.py:arg")
    parser.add_argument("--data", type=int, default=1)
    parser.add_argument("--fsdp", type=int, default=1)
    parser.add_argument("--tensor", type=int, default=1)
    parser.add_argument("--json", default=None, help="also write the report here")
    parser.add_argument("--real-devices", action="store_true", help="no fake CPU devices")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    mesh_shape = (args.data, args.fsdp, args.tensor)
    if not args.real_devices:
        aot.ensure_host_devices(math.prod(mesh_shape))
    config = load_config(args.config)
    report = aot.compile_target(build_target(config, mesh_shape), mesh_shape)
    print(report.summary())
    print(report.to_json())
    if args.json:
        with open(args.json, "w") as f:
            f.write(report.to_json() + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
