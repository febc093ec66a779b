"""MAR (Li et al. 2024, "Autoregressive Image Generation without Vector Quantization"):
masked autoregressive generation over continuous tokens with a per-token diffusion loss.

Tokens are a continuous tokenizer's latents in the flat layout ``[B, h*w, C]`` (already
multiplied by the tokenizer's latent scale), grouped into ``patch_size`` x ``patch_size``
patches (MAR's ``patchify``: a token is the ``C * p * p`` values in channel-major order).

Model (names follow MAR's state dict so ``jaxar.convert.mar`` renames mechanically):

- MAE-style encoder: ``z_proj`` (Linear), ``buffer_size`` buffer slots in front of the tokens
  all holding the class embedding (``class_emb``, or the learned ``fake_latent`` for the null
  class / dropped labels), ``encoder_pos_embed_learned``, ``z_proj_ln`` (LayerNorm), ViT blocks
  over the buffer and the *known* tokens only (masked tokens are dropped), ``encoder_norm``.
- decoder: ``decoder_embed``, the dropped positions filled with ``mask_token``,
  ``decoder_pos_embed_learned``, ViT blocks over all positions, ``decoder_norm``; the buffer is
  cut off and ``diffusion_pos_embed_learned`` added: ``z [B, L, decoder_dim]``, one
  condition vector per token.
- the diffusion head (``jaxar.layers.diffusion_head.DiffusionMLP``, MAR's ``SimpleMLPAdaLN``)
  predicts noise (and the variance interpolation) of a token from ``(x_t, t, z)``.

Dropping masked tokens without dynamic shapes: the known tokens are gathered (stable order)
into ``capacity`` slots and the slots past the known count are excluded from attention by a
key mask. The encoder output at the known tokens is then exactly MAR's (attention, LayerNorm
and MLP act per token or over the known keys only). Training uses the smallest capacity any
mask of the ratio distribution needs (``buffer + L - ceil(L * mask_ratio_min)``), sampling
the full length (``capacity=None``).

Training (``mar_loss``): per batch a mask ratio ``r`` from the truncated normal on
``[mask_ratio_min, 1]`` centred at 1 with std 0.25, ``ceil(r * L)`` masked tokens per row in a
random order per row; labels dropped with ``label_drop_prob``; the diffusion loss
(``jaxar.layers.diffusion.diffusion_loss``: noise MSE + the variational term of the learned
variance, cosine schedule, ``diffusion_steps`` steps) on ``diffusion_batch_mul`` copies of
every token with independent timesteps and noise, averaged over the masked tokens only.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxar.checks import check_int_input
from jaxar.layers.diffusion import diffusion_loss, make_diffusion
from jaxar.layers.diffusion_head import DiffusionMLP
from jaxar.layers.scan import check_stack_options
from jaxar.layers.transformer import block_stack, run_blocks
from jaxar.layers.vit import ViTBlock, layer_norm, xavier_dense
from jaxar.presets import from_preset
from jaxar.task import Task

NOISE_SCHEDULES = ("cosine", "linear")


@dataclasses.dataclass(frozen=True)
class MARConfig:
    """MAR hyperparameters (MAR's argument names in comments)."""

    latent_dim: int = 16  # vae_embed_dim: channels of the tokenizer's latents
    latent_grid: int = 16  # img_size // vae_stride: the latent map is latent_grid^2
    patch_size: int = 1  # patch_size: latents grouped p x p into one token
    encoder_dim: int = 1024  # encoder_embed_dim
    encoder_depth: int = 16
    encoder_heads: int = 16
    decoder_dim: int = 1024  # decoder_embed_dim
    decoder_depth: int = 16
    decoder_heads: int = 16
    mlp_ratio: float = 4.0
    norm_eps: float = 1e-6
    num_classes: int = 1000  # class_num
    buffer_size: int = 64
    label_drop_prob: float = 0.1
    mask_ratio_min: float = 0.7
    attn_dropout: float = 0.1
    proj_dropout: float = 0.1
    drop_path: float = 0.0
    head_depth: int = 3  # diffloss_d
    head_width: int = 1024  # diffloss_w
    diffusion_steps: int = 1000  # training steps of the noise schedule
    noise_schedule: str = "cosine"
    diffusion_batch_mul: int = 4
    dtype: str = "float32"
    scan_layers: bool = False
    remat_policy: str = "none"

    def __post_init__(self):
        check_stack_options("MARConfig", self.scan_layers, self.remat_policy)
        for name in ("latent_dim", "latent_grid", "patch_size", "encoder_dim", "encoder_depth",
                     "encoder_heads", "decoder_dim", "decoder_depth", "decoder_heads",
                     "num_classes", "head_depth", "head_width", "diffusion_steps",
                     "diffusion_batch_mul"):  # fmt: skip
            if getattr(self, name) <= 0:
                raise ValueError(f"MARConfig.{name} must be positive, got {getattr(self, name)}")
        if self.buffer_size < 1:
            raise ValueError(f"MARConfig.buffer_size must be >= 1, got {self.buffer_size}")
        if self.latent_grid % self.patch_size:
            raise ValueError(
                f"latent_grid {self.latent_grid} is not divisible by patch_size {self.patch_size}"
            )
        for dim, heads in ((self.encoder_dim, self.encoder_heads),
                           (self.decoder_dim, self.decoder_heads)):  # fmt: skip
            if dim % heads:
                raise ValueError(f"width {dim} is not divisible by {heads} heads")
        if not 0.0 < self.mask_ratio_min <= 1.0:
            raise ValueError(f"mask_ratio_min must be in (0, 1], got {self.mask_ratio_min}")
        if not 0.0 <= self.label_drop_prob < 1.0:
            raise ValueError(f"label_drop_prob must be in [0, 1), got {self.label_drop_prob}")
        if self.noise_schedule not in NOISE_SCHEDULES:
            raise ValueError(f"noise_schedule must be one of {NOISE_SCHEDULES}")

    @property
    def seq_len(self) -> int:
        """Tokens per image after patchifying."""
        return (self.latent_grid // self.patch_size) ** 2

    @property
    def token_dim(self) -> int:
        return self.latent_dim * self.patch_size**2

    @property
    def null_class(self) -> int:
        return self.num_classes

    @property
    def train_capacity(self) -> int:
        """Encoder slots a training mask can need: the buffer and the most tokens any mask
        ratio >= mask_ratio_min keeps."""
        kept = self.seq_len - math.ceil(self.seq_len * self.mask_ratio_min)
        return self.buffer_size + max(kept, 0)


_RELEASE = dict(latent_dim=16, latent_grid=16, patch_size=1, scan_layers=True)

MAR_CONFIGS: dict[str, MARConfig] = {
    # The released ImageNet 256 models (KL-16 latents, 16x16 tokens; README's diffloss_d/w).
    "MAR-B": MARConfig(encoder_dim=768, encoder_depth=12, encoder_heads=12, decoder_dim=768,
                       decoder_depth=12, decoder_heads=12, head_depth=6, head_width=1024,
                       **_RELEASE),
    "MAR-L": MARConfig(encoder_dim=1024, encoder_depth=16, encoder_heads=16, decoder_dim=1024,
                       decoder_depth=16, decoder_heads=16, head_depth=8, head_width=1280,
                       **_RELEASE),
    "MAR-H": MARConfig(encoder_dim=1280, encoder_depth=20, encoder_heads=16, decoder_dim=1280,
                       decoder_depth=20, decoder_heads=16, head_depth=12, head_width=1536,
                       **_RELEASE),
    # Bundled digits: 8x8 latents of the digits KL tokenizer, 10 classes (CPU, minutes).
    # 8x8 latents of 4 channels in 2x2 patches: 16 tokens of 16 values (CPU: ~0.3 s a step).
    "MAR-digits": MARConfig(latent_dim=4, latent_grid=8, patch_size=2, encoder_dim=128,
                            encoder_depth=3, encoder_heads=4, decoder_dim=128, decoder_depth=3,
                            decoder_heads=4, num_classes=10, buffer_size=4, attn_dropout=0.0,
                            proj_dropout=0.0, head_depth=3, head_width=256,
                            diffusion_batch_mul=2),
    # Tests.
    "MAR-tiny": MARConfig(latent_dim=4, latent_grid=4, encoder_dim=32, encoder_depth=1,
                          encoder_heads=2, decoder_dim=32, decoder_depth=1, decoder_heads=2,
                          num_classes=10, buffer_size=2, attn_dropout=0.0, proj_dropout=0.0,
                          head_depth=1, head_width=32, diffusion_batch_mul=2),
}  # fmt: skip


def mar_config(name: str, **overrides: Any) -> MARConfig:
    """A named preset with fields replaced, e.g. ``mar_config("MAR-B", dtype="bfloat16")``."""
    return from_preset(MAR_CONFIGS, name, "MAR", **overrides)


def patchify(latents: jax.Array, cfg: MARConfig) -> jax.Array:
    """Flat latents [B, h*w, C] (raster order) -> tokens [B, L, C * p * p] (MAR's layout:
    channel-major within a patch)."""
    b, length, c = latents.shape
    g, p = cfg.latent_grid, cfg.patch_size
    if length != g * g or c != cfg.latent_dim:
        raise ValueError(
            f"MAR expects latents [B, {g * g}, {cfg.latent_dim}], got shape {latents.shape}"
        )
    x = latents.reshape(b, g // p, p, g // p, p, c)
    return x.transpose(0, 1, 3, 5, 2, 4).reshape(b, cfg.seq_len, cfg.token_dim)


def unpatchify(tokens: jax.Array, cfg: MARConfig) -> jax.Array:
    """Inverse of ``patchify``: [B, L, C * p * p] -> flat latents [B, h*w, C]."""
    b = tokens.shape[0]
    g, p, c = cfg.latent_grid, cfg.patch_size, cfg.latent_dim
    x = tokens.reshape(b, g // p, g // p, c, p, p).transpose(0, 1, 4, 2, 5, 3)
    return x.reshape(b, g * g, c)


def _normal(std: float, axes: tuple):
    return nn.with_logical_partitioning(nn.initializers.normal(std), axes)


class MAR(nn.Module):
    """``(tokens [B, L, token_dim], labels [B], mask bool [B, L] (True = unknown)) -> z
    [B, L, decoder_dim]``; ``head(x_t, t, z)`` is the diffusion head."""

    config: MARConfig

    def setup(self):
        cfg = self.config
        dtype = jnp.dtype(cfg.dtype)
        total = cfg.seq_len + cfg.buffer_size
        self.class_emb = nn.Embed(
            cfg.num_classes, cfg.encoder_dim, dtype=dtype,
            embedding_init=_normal(0.02, (None, "embed")),
        )  # fmt: skip
        self.fake_latent = self.param("fake_latent", _normal(0.02, (None, "embed")),
                                      (1, cfg.encoder_dim))  # fmt: skip
        self.z_proj = xavier_dense(cfg.encoder_dim, (None, "embed"), "z_proj", dtype)
        self.z_proj_ln = layer_norm(1e-6, "z_proj_ln", dtype)
        self.encoder_pos_embed_learned = self.param(
            "encoder_pos_embed_learned", _normal(0.02, (None, "length", "embed")),
            (1, total, cfg.encoder_dim),
        )  # fmt: skip
        blocks = dict(
            mlp_ratio=cfg.mlp_ratio,
            norm_eps=cfg.norm_eps,
            dtype=dtype,
            attn_dropout_rate=cfg.attn_dropout,
            proj_dropout_rate=cfg.proj_dropout,
        )
        stack = dict(block_cls=ViTBlock, scan=cfg.scan_layers, remat_policy=cfg.remat_policy)
        self.encoder_blocks = block_stack(
            cfg.encoder_depth, cfg.drop_path, num_heads=cfg.encoder_heads, **stack, **blocks
        )
        self.encoder_norm = layer_norm(cfg.norm_eps, "encoder_norm", dtype)
        self.decoder_embed = xavier_dense(cfg.decoder_dim, ("embed", "mlp"), "decoder_embed",
                                          dtype)  # fmt: skip
        self.mask_token = self.param("mask_token", _normal(0.02, (None, None, "embed")),
                                     (1, 1, cfg.decoder_dim))  # fmt: skip
        self.decoder_pos_embed_learned = self.param(
            "decoder_pos_embed_learned", _normal(0.02, (None, "length", "embed")),
            (1, total, cfg.decoder_dim),
        )  # fmt: skip
        self.decoder_blocks = block_stack(
            cfg.decoder_depth, cfg.drop_path, num_heads=cfg.decoder_heads, **stack, **blocks
        )
        self.decoder_norm = layer_norm(cfg.norm_eps, "decoder_norm", dtype)
        self.diffusion_pos_embed_learned = self.param(
            "diffusion_pos_embed_learned", _normal(0.02, (None, "length", "embed")),
            (1, cfg.seq_len, cfg.decoder_dim),
        )  # fmt: skip
        self.diffloss = DiffusionMLP(
            in_channels=cfg.token_dim, width=cfg.head_width, depth=cfg.head_depth,
            dtype=dtype,
        )  # fmt: skip

    def class_embedding(
        self, labels: jax.Array, *, train: bool, force_drop: jax.Array | None = None
    ) -> jax.Array:
        """[B] labels (``num_classes`` = the null class) -> [B, encoder_dim]; rows dropped in
        training (prob ``label_drop_prob``) or by ``force_drop`` use ``fake_latent``."""
        cfg = self.config
        check_int_input("labels", labels, 1, cfg.num_classes + 1)
        drop = labels == cfg.null_class
        if force_drop is not None:
            drop = drop | jnp.asarray(force_drop, bool)
        if train and cfg.label_drop_prob > 0:
            rng = self.make_rng("dropout")
            drop = drop | jax.random.bernoulli(rng, cfg.label_drop_prob, labels.shape)
        emb = self.class_emb(jnp.minimum(labels, cfg.num_classes - 1))
        fake = self.fake_latent.astype(emb.dtype)
        return jnp.where(drop[:, None], fake, emb)

    def encode(
        self,
        tokens: jax.Array,
        mask: jax.Array,
        class_embedding: jax.Array,
        *,
        capacity: int | None = None,
        train: bool = False,
    ) -> tuple[jax.Array, jax.Array, jax.Array]:
        """MAE encoder over the buffer and known tokens. Returns (h [B, N, encoder_dim],
        positions int32 [B, N] of each slot in the buffered sequence, valid bool [B, N]);
        ``N = capacity`` (default: the whole buffered length)."""
        cfg = self.config
        b = tokens.shape[0]
        x = self.z_proj(tokens)
        buffer = jnp.broadcast_to(class_embedding[:, None].astype(x.dtype),
                                  (b, cfg.buffer_size, x.shape[-1]))  # fmt: skip
        x = jnp.concatenate([buffer, x], axis=1)
        x = self.z_proj_ln(x + self.encoder_pos_embed_learned.astype(x.dtype))
        keep = jnp.concatenate([jnp.ones((b, cfg.buffer_size), bool), ~mask], axis=1)
        total = keep.shape[1]
        capacity = total if capacity is None else min(capacity, total)
        # known slots first, each group in sequence order (a stable sort of "is dropped")
        positions = jnp.argsort(~keep, axis=1, stable=True)[:, :capacity].astype(jnp.int32)
        valid = jnp.take_along_axis(keep, positions, axis=1)
        x = jnp.take_along_axis(x, positions[..., None], axis=1)
        x = nn.with_logical_constraint(x, ("batch", "length", "embed"))
        x, _ = run_blocks(self.encoder_blocks, x, mask=valid[:, None, :], train=train)
        return self.encoder_norm(x), positions, valid

    def decode(self, h: jax.Array, positions: jax.Array, valid: jax.Array, *, train: bool):
        """MAE decoder: encoder slots back at their positions, mask tokens elsewhere ->
        z [B, L, decoder_dim] (buffer removed, diffusion position embedding added)."""
        cfg = self.config
        b = h.shape[0]
        total = cfg.seq_len + cfg.buffer_size
        x = self.decoder_embed(h)
        mask_token = self.mask_token.astype(x.dtype)
        x = jnp.where(valid[..., None], x, mask_token)
        full = jnp.broadcast_to(mask_token, (b, total, x.shape[-1]))
        full = full.at[jnp.arange(b)[:, None], positions].set(x)
        full = full + self.decoder_pos_embed_learned.astype(x.dtype)
        full = nn.with_logical_constraint(full, ("batch", "length", "embed"))
        full, _ = run_blocks(self.decoder_blocks, full, train=train)
        z = self.decoder_norm(full)[:, cfg.buffer_size :]
        return z + self.diffusion_pos_embed_learned.astype(z.dtype)

    def __call__(
        self,
        tokens: jax.Array,
        labels: jax.Array,
        mask: jax.Array,
        *,
        train: bool = False,
        force_drop: jax.Array | None = None,
        capacity: int | None = None,
    ) -> jax.Array:
        cfg = self.config
        if tokens.ndim != 3 or tokens.shape[1:] != (cfg.seq_len, cfg.token_dim):
            raise ValueError(
                f"MAR expects tokens [B, {cfg.seq_len}, {cfg.token_dim}], got {tokens.shape}"
            )
        if mask.shape != tokens.shape[:2] or labels.shape != tokens.shape[:1]:
            raise ValueError(
                f"mask {mask.shape} / labels {labels.shape} do not match tokens {tokens.shape}"
            )
        cls = self.class_embedding(labels, train=train, force_drop=force_drop)
        h, positions, valid = self.encode(
            tokens.astype(jnp.dtype(cfg.dtype)), mask, cls, capacity=capacity, train=train
        )
        return self.decode(h, positions, valid, train=train)

    def head(self, x_t: jax.Array, t: jax.Array, z: jax.Array) -> jax.Array:
        """The diffusion head: x_t [N, token_dim], t int [N], z [N, decoder_dim] ->
        [N, 2 * token_dim] (predicted noise, variance interpolation)."""
        return self.diffloss(x_t, t, z)


def truncated_mask_ratio(rng: jax.Array, mask_ratio_min: float) -> jax.Array:
    """MAR's mask ratio: a draw of N(1, 0.25^2) truncated to [mask_ratio_min, 1]."""
    lower = (mask_ratio_min - 1.0) / 0.25
    return 1.0 + 0.25 * jax.random.truncated_normal(rng, lower, 0.0, (), jnp.float32)


def random_order_mask(rng: jax.Array, batch: int, length: int, num_masked: jax.Array):
    """bool [B, L]: the first ``num_masked`` positions of a random order per row."""
    scores = jax.random.uniform(rng, (batch, length))
    rank = jnp.argsort(jnp.argsort(scores, axis=-1), axis=-1)
    return rank < num_masked


def training_mask(rng: jax.Array, cfg: MARConfig, batch: int) -> jax.Array:
    """A training mask bool [B, L]: ``ceil(r * L)`` random tokens per row, ``r`` from
    ``truncated_mask_ratio`` (one ratio per batch, as MAR)."""
    ratio_rng, order_rng = jax.random.split(rng)
    ratio = truncated_mask_ratio(ratio_rng, cfg.mask_ratio_min)
    num_masked = jnp.ceil(cfg.seq_len * ratio).astype(jnp.int32)
    num_masked = jnp.clip(num_masked, math.ceil(cfg.seq_len * cfg.mask_ratio_min), cfg.seq_len)
    return random_order_mask(order_rng, batch, cfg.seq_len, num_masked)


def check_latents(latents: Any, cfg: MARConfig) -> None:
    """ValueError unless ``latents`` is a float [B, latent_grid^2, latent_dim] array."""
    shape = (cfg.latent_grid**2, cfg.latent_dim)
    if jnp.ndim(latents) != 3 or tuple(jnp.shape(latents)[1:]) != shape:
        raise ValueError(
            f"MAR expects latents [B, {shape[0]}, {shape[1]}] (a continuous tokenizer's flat "
            f"layout), got shape {jnp.shape(latents)}"
        )
    if not jnp.issubdtype(jnp.result_type(latents), jnp.floating):
        raise ValueError(
            f"MAR trains on continuous latents, got dtype {jnp.result_type(latents)} (a "
            "discrete tokenizer's codes?)"
        )


def mar_loss(
    model: MAR, params: Any, batch: dict[str, jax.Array], rng: jax.Array, *, train: bool = True
) -> tuple[jax.Array, dict[str, jax.Array]]:
    """MAR's training loss. batch: {"codes": float [B, h*w, C] latents, "label": int [B]}.

    Returns (loss, {loss, mask_fraction})."""
    cfg = model.config
    check_latents(batch["codes"], cfg)
    tokens = patchify(jnp.asarray(batch["codes"], jnp.float32), cfg)
    b, length, c = tokens.shape
    mask_rng, drop_rng, t_rng, noise_rng = jax.random.split(rng, 4)
    mask = training_mask(mask_rng, cfg, b)
    variables = {"params": params}
    z = model.apply(
        variables, tokens, batch["label"], mask, train=train, capacity=cfg.train_capacity,
        rngs={"dropout": drop_rng},
    )  # fmt: skip
    mul = cfg.diffusion_batch_mul
    target = jnp.tile(tokens.reshape(b * length, c), (mul, 1))
    cond = jnp.tile(z.reshape(b * length, -1), (mul, 1))
    weights = jnp.tile(mask.reshape(b * length).astype(jnp.float32), (mul,))
    diffusion = make_diffusion(cfg.diffusion_steps, cfg.noise_schedule)
    t = jax.random.randint(t_rng, (target.shape[0],), 0, cfg.diffusion_steps)
    noise = jax.random.normal(noise_rng, target.shape, jnp.float32)

    def model_fn(x_t, timesteps):
        out = model.apply(variables, x_t, timesteps, cond, method=MAR.head)
        return out.astype(jnp.float32)

    per_row = diffusion_loss(diffusion, model_fn, target, t, noise)
    loss = jnp.sum(per_row * weights) / jnp.maximum(weights.sum(), 1.0)
    return loss, {"loss": loss, "mask_fraction": mask.astype(jnp.float32).mean()}


def make_mar_task(cfg: MARConfig) -> Task:
    """A ``Task`` training ``MAR(cfg)`` on {"codes": latents, "label"} batches."""
    model = MAR(cfg)

    def init(rng: jax.Array, batch: dict[str, Any]) -> tuple[Any, dict]:
        latents = jnp.asarray(batch["codes"], jnp.float32)
        check_latents(latents, cfg)
        tokens = patchify(latents, cfg)
        mask = jnp.zeros(tokens.shape[:2], bool)
        labels = jnp.asarray(batch["label"])

        def both(module, tokens, labels, mask):
            z = module(tokens, labels, mask)
            n = tokens.shape[0] * tokens.shape[1]
            t = jnp.zeros((n,), jnp.int32)
            return module.head(tokens.reshape(n, -1), t, z.reshape(n, -1))

        return model.init({"params": rng}, tokens, labels, mask, method=both)["params"], {}

    def loss_fn(params, model_state, batch, rng, step):
        del step
        loss, metrics = mar_loss(model, params, batch, rng)
        return loss, (metrics, model_state)

    return Task(name="mar", init=init, loss_fn=loss_fn, sample_images=None)


__all__ = [
    "MAR",
    "MARConfig",
    "MAR_CONFIGS",
    "check_latents",
    "make_mar_task",
    "mar_config",
    "mar_loss",
    "patchify",
    "random_order_mask",
    "training_mask",
    "truncated_mask_ratio",
    "unpatchify",
]
