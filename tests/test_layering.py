"""The package is a stack: every import inside ``jaxar`` points down (docs/DESIGN.md).

Parses every module (function-level imports included) and checks each subpackage imports only
the layers below it, so that models never import training, eval never imports the jobs, and
the shared checks / presets / Task sit at the bottom."""

from __future__ import annotations

import ast
import pathlib

import pytest

PACKAGE = pathlib.Path(__file__).resolve().parent.parent / "jaxar"
BOTTOM = {"checks", "presets", "task", "paths"}
ALLOWED = {  # layer -> the jaxar layers it may import (besides itself)
    "checks": set(),
    "presets": set(),
    "task": set(),
    "paths": set(),
    "sharding": set(),
    "layers": BOTTOM,
    "quantizers": BOTTOM | {"layers"},
    "data": BOTTOM,
    "tokenizers": BOTTOM | {"layers", "quantizers", "data"},
    "generators": BOTTOM | {"layers", "quantizers"},
    "sampling": BOTTOM | {"layers", "quantizers", "generators"},
    "train": BOTTOM | {"data", "sharding"},
    "eval": BOTTOM | {"data", "sharding"},
}


def _imports(path: pathlib.Path) -> set[str]:
    """The ``jaxar.<layer>`` names a module imports, anywhere in it."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        names = []
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [node.module]
        elif isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        found |= {n.split(".")[1] for n in names if n.startswith("jaxar.") and "." in n}
    return found


def _layer(path: pathlib.Path) -> str:
    return path.relative_to(PACKAGE).with_suffix("").parts[0]


def test_imports_point_down():
    wrong = []
    for path in sorted(PACKAGE.rglob("*.py")):
        layer = _layer(path)
        if layer not in ALLOWED:
            continue  # recipes, convert, configs, aot, distributed: the top may use anything
        for target in _imports(path) - {layer} - ALLOWED[layer]:
            wrong.append(f"{path.relative_to(PACKAGE.parent)} ({layer}) imports jaxar.{target}")
    assert not wrong, "\n".join(wrong)


@pytest.mark.parametrize("source, bad", [
    ("from jaxar.train.loop import fit\n", "train"),
    ("def f():\n    from jaxar.recipes.generator import load_generator\n", "recipes"),
    ("import jaxar.sampling.base\n", "sampling"),
])  # fmt: skip
def test_the_check_sees_every_kind_of_import(tmp_path, source, bad):
    path = tmp_path / "mod.py"
    path.write_text(source)
    assert _imports(path) == {bad} and bad not in ALLOWED["generators"]
