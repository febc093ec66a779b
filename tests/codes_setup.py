"""Shared set-up of the codes tests (not collected): a small image folder, a one-step tokenizer
and a tiny GPT config that trains on the folder's codes through ``train_generator``."""

from __future__ import annotations

import os

import ml_collections
import numpy as np
from PIL import Image

IMAGE_SIZE, CLASSES = 16, 4


def write_image_folder(root, count: int, size: int = IMAGE_SIZE, seed: int = 0, ext="png"):
    """``root/class_<k>/<i>.<ext>``: ``count`` RGB images, class k a noisy colour pattern."""
    rng = np.random.default_rng(seed)
    for i in range(count):
        label = i % CLASSES
        base = np.zeros((size, size, 3), np.float32)
        base[..., label % 3] = 200.0
        base[: size // 2 * (1 + label // 3)] += 40.0
        image = np.clip(base + rng.normal(0, 30, base.shape), 0, 255).astype(np.uint8)
        folder = os.path.join(root, f"class_{label}")
        os.makedirs(folder, exist_ok=True)
        Image.fromarray(image).save(os.path.join(folder, f"{i:05d}.{ext}"))
    return root


def data_config(folder, batch_size: int = 8) -> dict:
    return dict(name="folder", path=str(folder), image_size=IMAGE_SIZE, channels=1,
                batch_size=batch_size, seed=0)  # fmt: skip


def train_tiny_tokenizer(
    workdir, folder, steps: int = 1, codebook_size: int = 64, preset: str = "digits_vq"
):
    """A digits tokenizer (``preset``: digits_vq, or digits_kl for a continuous one) trained
    ``steps`` steps on ``folder`` (weights ~ random)."""
    from jaxar.recipes.tokenizer import train_tokenizer

    c = ml_collections.ConfigDict()
    c.seed = 0
    c.mesh = dict(data=-1, fsdp=1, tensor=1)
    c.data = data_config(folder)
    c.tokenizer = dict(preset=preset, codebook_size=codebook_size)
    c.loss = dict(recon_loss="l2", codebook_weight=1.0, perceptual_weight=0.0, disc_weight=0.0)
    c.train = dict(
        num_steps=steps, log_every=1, checkpoint_every=steps, sample_every=0,
        keep_checkpoints=2, ema_decay=None, progress_bar=False,
        optimizer=dict(learning_rate=1e-3, warmup_steps=0, total_steps=4),
    )  # fmt: skip
    c.preview_count = 2
    train_tokenizer(c, workdir)
    return workdir


def shared_setup(tmp_path_factory, tokenizer_steps: int = 1):
    """(image folder of 32 images, tokenizer trained ``tokenizer_steps`` steps on it), made
    once per test session and shared by the codes tests."""
    root = tmp_path_factory.getbasetemp() / "codes_shared"
    images = root / "images"
    if not images.exists():
        write_image_folder(root / "images.tmp", 32)
        (root / "images.tmp").rename(images)
    tokenizer = root / f"tokenizer_{tokenizer_steps}"
    if not tokenizer.exists():
        train_tiny_tokenizer(root / f"tokenizer_{tokenizer_steps}.tmp", images, tokenizer_steps)
        (root / f"tokenizer_{tokenizer_steps}.tmp").rename(tokenizer)
    return images, tokenizer


def generator_config(folder, tokenizer_workdir, steps: int, batch_size: int = 8, **codes):
    """Tiny deterministic GPT (no dropout, no EMA, no previews) over the folder's codes."""
    c = ml_collections.ConfigDict()
    c.seed = 0
    c.mesh = dict(data=-1, fsdp=1, tensor=1)
    c.data = data_config(folder, batch_size)
    c.tokenizer_workdir = str(tokenizer_workdir)
    c.codes_dir = None
    c.codes = {**dict(augment="none", shard_size=8, batch_size=8, read_threads=2), **codes}
    c.model = dict(family="gpt", preset="GPT-tiny", num_layers=1, dim=32, num_heads=2,
                   num_classes=CLASSES, class_dropout_prob=0.0, token_dropout=0.0,
                   resid_dropout=0.0, ffn_dropout=0.0, attn_dropout=0.0)  # fmt: skip
    c.loss = dict(label_smoothing=0.0)
    c.train = dict(
        num_steps=steps, log_every=1, checkpoint_every=steps, sample_every=0,
        keep_checkpoints=2, ema_decay=None, progress_bar=False,
        optimizer=dict(learning_rate=1e-2, warmup_steps=0, total_steps=steps),
    )  # fmt: skip
    c.sampling = dict(cfg_scale=1.0, temperature=1.0, top_k=0, top_p=1.0)
    return c


def extracted_codes(split_dir) -> np.ndarray:
    """Every record's codes of an extracted split, in record order: int32 [N, L(, D)]."""
    from jaxar.data.codes import CodesSource, ParseCodes

    source = CodesSource(split_dir)
    parse = ParseCodes(source.index["layout"])
    return np.stack([parse.map(source[i])["codes"] for i in range(len(source))])
