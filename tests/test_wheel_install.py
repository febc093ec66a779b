"""The demo runs from an installed (not editable) jaxar, from another directory: what it needs
(the configs, the digits) ships in the package."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.mark.slow
def test_demo_runs_from_an_installed_package(tmp_path):
    source, site = tmp_path / "source", tmp_path / "site"  # a copy: the build writes in-tree
    shutil.copytree(
        REPO,
        source,
        symlinks=True,
        ignore=shutil.ignore_patterns(
            ".venv", ".git", "runs", "build", "*.egg-info", "__pycache__", ".pytest_cache"
        ),
    )
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--no-build-isolation",
         "--target", str(site), str(source)],
        check=True, cwd=tmp_path, capture_output=True, text=True,
    )  # fmt: skip
    assert (site / "jaxar" / "configs" / "gpt_digits.py").is_file()
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    env = {**os.environ, "PYTHONPATH": str(site), "JAX_PLATFORMS": "cpu"}
    env.pop("XLA_FLAGS", None)
    where = subprocess.run(
        [sys.executable, "-c", "import jaxar; print(jaxar.__file__)"],
        check=True, cwd=elsewhere, env=env, capture_output=True, text=True,
    )  # fmt: skip
    assert where.stdout.strip().startswith(str(site)), where.stdout  # not the checkout
    demo = subprocess.run(
        [sys.executable, "-m", "jaxar.recipes.demo", "--workdir", "run", "--tokenizer_steps", "2",
         "--generator_steps", "2", "--samples_per_class", "2"],
        cwd=elsewhere, env=env, capture_output=True, text=True, timeout=900,
    )  # fmt: skip
    assert demo.returncode == 0, demo.stderr[-3000:]
    report = json.loads((elsewhere / "run" / "report.json").read_text())
    assert report["family"] == "gpt" and 0.0 <= report["samples"]["class_accuracy"] <= 1.0
    assert (elsewhere / "run" / "samples_grid.png").stat().st_size > 0
