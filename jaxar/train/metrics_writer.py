"""Scalar metrics to TensorBoard event files, ``metrics.jsonl`` and stdout.

Workdirs may be ``gs://`` URLs. Object stores cannot append, so for a URL workdir the JSON lines
are kept and the whole file is rewritten at each flush, and TensorBoard events are written to a
local staging folder and copied to ``<workdir>/tensorboard`` at each flush and on close.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import tempfile
from typing import Any

import numpy as np
from etils import epath

from jaxar.paths import is_url, resolve


def _summary_writer_class():
    """``tensorboardX.SummaryWriter`` without its optional torch import.

    tensorboardX imports torch at module load when it is installed (seconds of start-up) only
    to accept torch tensors; we log numpy values, so hide torch during that import unless it
    is already loaded.
    """
    if "torch" in sys.modules:
        from tensorboardX import SummaryWriter

        return SummaryWriter
    sys.modules["torch"] = None  # makes `import torch` raise ImportError
    try:
        from tensorboardX import SummaryWriter
    finally:
        del sys.modules["torch"]
    return SummaryWriter


class MetricsWriter:
    """Writes scalars as TensorBoard events (``<workdir>/tensorboard``) and JSON lines.

    Each ``write_scalars`` call appends ``{"step": s, **metrics}`` to ``<workdir>/metrics.jsonl``
    and, with ``to_stdout``, prints the same line. Only call it from process 0.
    """

    def __init__(self, workdir: str | os.PathLike, to_stdout: bool = True):
        self.workdir = resolve(workdir)
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.to_stdout = to_stdout
        self._remote = is_url(self.workdir)
        tb_dir = self.workdir / "tensorboard"
        self._staging = tempfile.mkdtemp(prefix="jaxar_tb_") if self._remote else None
        self._tb = _summary_writer_class()(logdir=self._staging or os.fspath(tb_dir))
        self._jsonl = _JsonLines(self.workdir / "metrics.jsonl", remote=self._remote)

    def write_scalars(self, step: int, scalars: dict[str, Any]) -> None:
        values = {name: float(np.asarray(value)) for name, value in scalars.items()}
        for name, value in values.items():
            self._tb.add_scalar(name, value, global_step=step)
        line = json.dumps({"step": int(step), **values})
        self._jsonl.write(line)
        if self._remote:
            self.flush()
        if self.to_stdout:
            print(line, file=sys.stdout, flush=True)

    def write_images(self, step: int, name: str, grid: np.ndarray) -> None:
        """Adds a uint8 [H, W, C] image to TensorBoard."""
        self._tb.add_image(name, np.asarray(grid), global_step=step, dataformats="HWC")

    def flush(self) -> None:
        self._tb.flush()
        self._jsonl.flush()
        self._upload_events()

    def close(self) -> None:
        self._tb.close()
        self._jsonl.close()
        self._upload_events()
        if self._staging is not None:
            shutil.rmtree(self._staging, ignore_errors=True)
            self._staging = None

    def _upload_events(self) -> None:
        if self._staging is None:
            return
        target = self.workdir / "tensorboard"
        target.mkdir(parents=True, exist_ok=True)
        for name in os.listdir(self._staging):
            local = os.path.join(self._staging, name)
            if os.path.isfile(local):
                with open(local, "rb") as f:
                    (target / name).write_bytes(f.read())


class _JsonLines:
    """``metrics.jsonl``: appended in place locally; kept and rewritten whole on a URL."""

    def __init__(self, path: epath.Path, remote: bool):
        self.path, self.remote = path, remote
        if remote:
            self._lines = path.read_text().splitlines() if path.exists() else []
            self._file = None
        else:
            self._file = open(os.fspath(path), "a")  # noqa: SIM115

    def write(self, line: str) -> None:
        if self._file is not None:
            self._file.write(line + "\n")
            self._file.flush()
        else:
            self._lines.append(line)

    def flush(self) -> None:
        if self.remote:
            self.path.write_text("".join(line + "\n" for line in self._lines))

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
        else:
            self.flush()
