"""PNG grids of sample images."""

from __future__ import annotations

import io
import os
from collections.abc import Sequence

import numpy as np
from PIL import Image, ImageDraw

from jaxar.paths import resolve

LABEL_HEIGHT = 12  # pixels of caption strip above each tile when labels are given


def make_image_grid(
    images: np.ndarray, nrow: int = 8, padding: int = 2, labels: Sequence[str] | None = None
) -> np.ndarray:
    """Tiles ``images`` uint8 [N, H, W, C] (C in 1, 3) into one uint8 [H', W', C] grid.

    ``nrow`` images per row; with ``labels`` (N strings) a caption is drawn above each tile.
    """
    images = np.asarray(images)
    if images.ndim != 4 or images.shape[-1] not in (1, 3):
        raise ValueError(f"images must be [N, H, W, C] with C in (1, 3), got {images.shape}")
    if images.dtype != np.uint8:
        raise ValueError(f"images must be uint8, got {images.dtype}")
    if nrow < 1:
        raise ValueError(f"nrow must be >= 1, got {nrow}")
    if labels is not None and len(labels) != len(images):
        raise ValueError(f"got {len(labels)} labels for {len(images)} images")
    n, h, w, c = images.shape
    cols = min(nrow, n)
    rows = -(-n // cols)
    top = LABEL_HEIGHT if labels is not None else 0
    cell_h, cell_w = h + top + padding, w + padding
    grid = np.zeros((rows * cell_h + padding, cols * cell_w + padding, c), np.uint8)
    for i, image in enumerate(images):
        y, x = (i // cols) * cell_h + padding, (i % cols) * cell_w + padding
        grid[y + top : y + top + h, x : x + w] = image
    if labels is not None:
        canvas = Image.fromarray(grid[..., 0] if c == 1 else grid)
        draw = ImageDraw.Draw(canvas)
        for i, label in enumerate(labels):
            y, x = (i // cols) * cell_h + padding, (i % cols) * cell_w + padding
            draw.text((x, y), str(label), fill=255 if c == 1 else (255, 255, 255))
        grid = np.asarray(canvas).reshape(grid.shape)
    return grid


def save_image_grid(
    images: np.ndarray,
    path: str | os.PathLike,
    nrow: int = 8,
    labels: Sequence[str] | None = None,
    padding: int = 2,
) -> np.ndarray:
    """Writes ``images`` uint8 [N, H, W, C] as one PNG grid at ``path``; returns the grid."""
    grid = make_image_grid(images, nrow=nrow, padding=padding, labels=labels)
    path = resolve(path)  # local or gs://
    path.parent.mkdir(parents=True, exist_ok=True)
    buffer = io.BytesIO()
    Image.fromarray(grid[..., 0] if grid.shape[-1] == 1 else grid).save(buffer, format="PNG")
    path.write_bytes(buffer.getvalue())
    return grid
