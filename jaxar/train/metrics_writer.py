"""Scalar metrics to TensorBoard event files, ``metrics.jsonl`` and stdout."""

from __future__ import annotations

import json
import os
import sys
from typing import Any

import numpy as np


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
        self.workdir = os.fspath(workdir)
        os.makedirs(self.workdir, exist_ok=True)
        self.to_stdout = to_stdout
        self._tb = _summary_writer_class()(logdir=os.path.join(self.workdir, "tensorboard"))
        self._jsonl = open(os.path.join(self.workdir, "metrics.jsonl"), "a")  # noqa: SIM115

    def write_scalars(self, step: int, scalars: dict[str, Any]) -> None:
        values = {name: float(np.asarray(value)) for name, value in scalars.items()}
        for name, value in values.items():
            self._tb.add_scalar(name, value, global_step=step)
        line = json.dumps({"step": int(step), **values})
        self._jsonl.write(line + "\n")
        self._jsonl.flush()
        if self.to_stdout:
            print(line, file=sys.stdout, flush=True)

    def write_images(self, step: int, name: str, grid: np.ndarray) -> None:
        """Adds a uint8 [H, W, C] image to TensorBoard."""
        self._tb.add_image(name, np.asarray(grid), global_step=step, dataformats="HWC")

    def flush(self) -> None:
        self._tb.flush()
        self._jsonl.flush()

    def close(self) -> None:
        self._tb.close()
        self._jsonl.close()
