"""What every experiment script shares: config loading, overrides and process set-up.

``--config path/to/config.py[:ARG]`` loads ``get_config(ARG)`` from the file (ml_collections);
a name that is not a file is looked up among the packaged configs (``jaxar/configs``, also
reachable as ``experiments/configs`` in a checkout), so ``--config gpt_digits`` or
``--config tokenizer_digits:msvq`` work from an installed wheel too;
``--config.key.sub=value`` (the ``ml_collections.config_flags`` form of flax examples and
big_vision; ``--config.key.sub value`` too) or ``--set key.sub=value`` overrides single fields
(values parsed as Python literals when they parse, strings otherwise; unknown fields are errors);
``--set +key.sub=value`` adds a field the config does not have yet (e.g. a model override on top
of a preset).
"""

from __future__ import annotations

import argparse
import ast
import importlib.util
import os
from typing import Any

import ml_collections

from jaxar.distributed import add_distributed_flags, initialize_from_flags

PACKAGED_CONFIGS = os.path.join(os.path.dirname(os.path.dirname(__file__)), "configs")


def config_path(name: str) -> str:
    """A config file: ``name`` itself when it is a file, else the packaged ``jaxar/configs``
    file of that name (``.py`` optional). FileNotFoundError lists the packaged ones."""
    if os.path.isfile(name):
        return name
    base = os.path.basename(name)
    packaged = os.path.join(PACKAGED_CONFIGS, base if base.endswith(".py") else base + ".py")
    if os.path.isfile(packaged):
        return packaged
    known = sorted(f[:-3] for f in os.listdir(PACKAGED_CONFIGS) if f.endswith(".py") and
                   not f.startswith("_"))  # fmt: skip
    raise FileNotFoundError(f"config file not found: {name} (packaged configs: {known})")


def load_config(spec: str) -> ml_collections.ConfigDict:
    """``"file.py"`` or ``"file.py:arg"`` (or a packaged config name) -> ``get_config(arg)``."""
    name, _, arg = spec.partition(":")
    path = config_path(name)
    module_spec = importlib.util.spec_from_file_location("_jaxar_config", path)
    module = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(module)
    if not hasattr(module, "get_config"):
        raise ValueError(f"config file {path} defines no get_config()")
    return module.get_config(arg) if arg else module.get_config()


def _literal(text: str) -> Any:
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError):
        return text


def apply_overrides(config: ml_collections.ConfigDict, overrides: list[str]):
    """Applies ``key.sub=value`` strings in place; unknown keys raise a KeyError unless the
    key is written ``+key.sub``."""
    for item in overrides:
        key, sep, value = item.partition("=")
        if not sep:
            raise ValueError(f"override {item!r} is not of the form key=value")
        adding = key.startswith("+")
        key = key.lstrip("+")
        *parents, leaf = key.split(".")
        node = config
        for name in parents:
            node = node[name]
        if leaf not in node and not adding:
            raise KeyError(f"override {key!r}: no such config field (use +{key}=... to add it)")
        node[leaf] = _literal(value)
    return config


def config_flag_overrides(extra: list[str]) -> list[str]:
    """``["--config.a.b=1", "--config.c", "x"]`` -> ``["a.b=1", "c=x"]``; ValueError naming any
    other left-over argument."""
    out, rest = [], list(extra)
    while rest:
        item = rest.pop(0)
        if not item.startswith("--config."):
            raise ValueError(f"unrecognized argument {item!r}")
        key, sep, value = item[len("--config.") :].partition("=")
        if not sep:
            if not rest:
                raise ValueError(f"{item} needs a value (--config.{key}=VALUE)")
            value = rest.pop(0)
        out.append(f"{key}={value}")
    return out


def setup(parser: argparse.ArgumentParser, argv=None):
    """Adds the shared flags, parses, initialises multi-host JAX; -> (config, args)."""
    parser.add_argument("--config", required=True, help="config file (or packaged name)[:ARG]")
    parser.add_argument("--workdir", required=True, help="checkpoints, logs and outputs")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    add_distributed_flags(parser)
    args, extra = parser.parse_known_args(argv)
    try:
        overrides = config_flag_overrides(extra)
    except ValueError as err:
        parser.error(str(err))
    initialize_from_flags(args)
    config = apply_overrides(load_config(args.config), overrides + args.set)
    return config, args
