"""MaskGIT (Chang et al. 2022): a bidirectional transformer over VQ codes trained to fill in
masked tokens, sampled by iterative parallel decoding (``jaxar.sampling.masked``).

Sequence layout: ``[class token, t_0, ..., t_{L-1}]`` with learned position embeddings; image
tokens are codes in ``[0, V)`` or the mask token ``V``. The class table has ``num_classes + 1``
rows, the last being the null class used for classifier-free guidance (rows of a training
batch are switched to it with probability ``class_dropout_prob``).

Training (MaskGIT's class-conditional trainer): per example draw ``r ~ U(0, 1)``, mask
``ceil(mask_ratio(r) * L)`` random positions (cosine schedule by default) and take the cross
entropy (optionally label-smoothed) on the masked positions only.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax

from jaxar.checks import check_int_input
from jaxar.generators.mask_schedule import check_mask_schedule, num_masked_for_training
from jaxar.layers.conditioning import drop_labels
from jaxar.layers.mlp import dense_init
from jaxar.layers.norms import RMSNorm
from jaxar.layers.scan import check_stack_options
from jaxar.layers.transformer import block_stack, run_blocks
from jaxar.presets import from_preset
from jaxar.task import Task


@dataclasses.dataclass(frozen=True)
class MaskGITConfig:
    """MaskGIT transformer and training hyperparameters (MaskGIT's names in comments)."""

    vocab_size: int = 1024  # codebook_size; the mask token id is vocab_size
    block_size: int = 256  # image tokens, a square grid (16 x 16)
    num_layers: int = 24  # transformer.num_layers
    dim: int = 768  # transformer.hidden_size
    num_heads: int = 16  # transformer.num_heads
    ffn_dim: int = 3072  # transformer.intermediate_size
    num_classes: int = 1000
    class_dropout_prob: float = 0.1  # for CFG (MaskGIT itself trained without it: 0)
    dropout: float = 0.1  # transformer.dropout_rate / attention_dropout_rate
    label_smoothing: float = 0.1
    mask_schedule: str = "cosine"  # training mask schedule
    norm_eps: float = 1e-5
    init_std: float = 0.02
    dtype: str = "float32"
    scan_layers: bool = False  # one nn.scan over the blocks (params [L, ...])
    remat_policy: str = "none"  # "none" | "full" | "dots" | "dots_no_batch"

    def __post_init__(self):
        check_stack_options("MaskGITConfig", self.scan_layers, self.remat_policy)
        for name in ("vocab_size", "block_size", "num_layers", "dim", "num_heads", "ffn_dim"):
            if getattr(self, name) <= 0:
                raise ValueError(
                    f"MaskGITConfig.{name} must be positive, got {getattr(self, name)}"
                )
        if self.num_classes <= 0:
            raise ValueError(f"MaskGITConfig.num_classes must be positive, got {self.num_classes}")
        if self.dim % self.num_heads:
            raise ValueError(f"dim {self.dim} is not divisible by num_heads {self.num_heads}")
        if not 0.0 <= self.class_dropout_prob < 1.0:
            raise ValueError(f"class_dropout_prob must be in [0, 1), got {self.class_dropout_prob}")
        if not 0.0 <= self.label_smoothing < 1.0:
            raise ValueError(f"label_smoothing must be in [0, 1), got {self.label_smoothing}")
        check_mask_schedule(self.mask_schedule)

    @property
    def mask_token_id(self) -> int:
        return self.vocab_size

    @property
    def null_class(self) -> int:
        return self.num_classes


MASKGIT_CONFIGS: dict[str, MaskGITConfig] = {
    # ImageNet 256x256 with a 16x16 grid of 1024 VQGAN codes (the paper's setting).
    "MaskGIT-ImageNet256": MaskGITConfig(scan_layers=True),
    # ImageNet 512x512: 32x32 grid.
    "MaskGIT-ImageNet512": MaskGITConfig(block_size=1024, scan_layers=True),
    # Bundled digits: 8x8 grid of 256 codes, 10 classes.
    "MaskGIT-digits": MaskGITConfig(
        vocab_size=256, block_size=64, num_layers=4, dim=128, num_heads=4, ffn_dim=384,
        num_classes=10, dropout=0.0, label_smoothing=0.0,
    ),
    # Tests.
    "MaskGIT-tiny": MaskGITConfig(
        vocab_size=32, block_size=16, num_layers=1, dim=32, num_heads=2, ffn_dim=64,
        num_classes=10, dropout=0.0, label_smoothing=0.0,
    ),
}  # fmt: skip


def maskgit_config(name: str, **overrides: Any) -> MaskGITConfig:
    """A named preset with fields replaced, e.g. ``maskgit_config("MaskGIT-digits", dim=64)``."""
    return from_preset(MASKGIT_CONFIGS, name, "MaskGIT", **overrides)


class MaskGIT(nn.Module):
    """Bidirectional transformer: tokens [B, L] (codes or mask id) + labels [B] -> logits
    float32 [B, L, V] over the codebook (the mask token is never predicted)."""

    config: MaskGITConfig

    def setup(self):
        cfg = self.config
        dtype = jnp.dtype(cfg.dtype)
        emb_init = dense_init(cfg.init_std)
        self.tok_embeddings = nn.Embed(
            cfg.vocab_size + 1,  # + the mask token
            cfg.dim,
            embedding_init=nn.with_logical_partitioning(emb_init, ("vocab", "embed")),
            dtype=dtype,
        )
        self.cls_embedding = nn.Embed(
            cfg.num_classes + 1,  # + the CFG null class
            cfg.dim,
            embedding_init=nn.with_logical_partitioning(emb_init, (None, "embed")),
            dtype=dtype,
        )
        self.pos_embedding = self.param(
            "pos_embedding",
            nn.with_logical_partitioning(emb_init, ("length", "embed")),
            (cfg.block_size + 1, cfg.dim),
        )
        self.layers = block_stack(
            cfg.num_layers,
            scan=cfg.scan_layers,
            remat_policy=cfg.remat_policy,
            num_heads=cfg.num_heads,
            ffn_hidden_dim=cfg.ffn_dim,
            causal=False,
            norm_eps=cfg.norm_eps,
            attn_dropout_rate=cfg.dropout,
            resid_dropout_rate=cfg.dropout,
            ffn_dropout_rate=cfg.dropout,
            init_std=cfg.init_std,
            dtype=dtype,
        )
        self.embed_dropout = nn.Dropout(cfg.dropout)
        self.norm = RMSNorm(cfg.norm_eps)
        self.output = nn.Dense(
            cfg.vocab_size,
            kernel_init=nn.with_logical_partitioning(dense_init(cfg.init_std), ("embed", "vocab")),
            bias_init=nn.with_logical_partitioning(nn.initializers.zeros, ("vocab",)),
            dtype=dtype,
        )

    def class_rows(
        self, labels: jax.Array, *, train: bool, force_drop: jax.Array | None
    ) -> jax.Array:
        """Labels [B] with dropped rows (random in training, or ``force_drop``) set to null."""
        cfg = self.config
        rng = self.make_rng("dropout") if train and cfg.class_dropout_prob > 0 else None
        return drop_labels(labels, cfg.null_class, cfg.class_dropout_prob, rng, force_drop)

    def __call__(
        self,
        tokens: jax.Array,
        labels: jax.Array,
        *,
        train: bool = False,
        force_drop: jax.Array | None = None,
    ) -> jax.Array:
        cfg = self.config
        check_int_input("tokens", tokens, 2, cfg.vocab_size + 1)
        check_int_input("labels", labels, 1, cfg.num_classes + 1)
        if tokens.shape[1] != cfg.block_size:
            raise ValueError(f"MaskGIT needs {cfg.block_size} tokens, got {tokens.shape}")
        if labels.shape[0] != tokens.shape[0]:
            raise ValueError(f"labels {labels.shape} do not match tokens {tokens.shape}")
        labels = self.class_rows(labels, train=train, force_drop=force_drop)
        h = jnp.concatenate(
            [self.cls_embedding(labels)[:, None], self.tok_embeddings(tokens)], axis=1
        )  # [B, 1 + L, D]
        h = h + self.pos_embedding.astype(h.dtype)[None]
        h = self.embed_dropout(h, deterministic=not train)
        h = nn.with_logical_constraint(h, ("batch", "length", "embed"))
        h, _ = run_blocks(self.layers, h, train=train)
        logits = self.output(self.norm(h[:, 1:])).astype(jnp.float32)
        return nn.with_logical_constraint(logits, ("batch", "length", "vocab"))


def random_mask(rng: jax.Array, batch: int, length: int, method: str = "cosine") -> jax.Array:
    """MaskGIT training mask: bool [B, L], True at ``ceil(mask_ratio(r) L)`` random positions
    per row (``r ~ U(0, 1)`` per row)."""
    count_rng, order_rng = jax.random.split(rng)
    count = num_masked_for_training(count_rng, batch, length, method)  # [B]
    scores = jax.random.uniform(order_rng, (batch, length))
    rank = jnp.argsort(jnp.argsort(scores, axis=-1), axis=-1)  # a random permutation per row
    return rank < count[:, None]


def maskgit_loss(
    model: MaskGIT, params: Any, batch: dict[str, jax.Array], rng: jax.Array, *, train: bool = True
) -> tuple[jax.Array, dict[str, jax.Array]]:
    """Masked-token cross entropy. batch: {"codes": int [B, L] or [B, h, w], "label": int [B]}.

    Returns (loss, {loss, accuracy (on masked tokens), mask_fraction})."""
    cfg = model.config
    codes = batch["codes"]
    codes = codes.reshape(codes.shape[0], -1)
    check_int_input("codes", codes, 2, cfg.vocab_size)
    mask_rng, dropout_rng = jax.random.split(rng)
    masked = random_mask(mask_rng, codes.shape[0], codes.shape[1], cfg.mask_schedule)
    tokens = jnp.where(masked, cfg.mask_token_id, codes)
    logits = model.apply(
        {"params": params}, tokens, batch["label"], train=train, rngs={"dropout": dropout_rng}
    )
    targets = optax.smooth_labels(jax.nn.one_hot(codes, cfg.vocab_size), cfg.label_smoothing)
    weights = masked.astype(jnp.float32)
    per_token = optax.softmax_cross_entropy(logits, targets)
    loss = jnp.sum(per_token * weights) / jnp.maximum(weights.sum(), 1.0)
    correct = (logits.argmax(-1) == codes).astype(jnp.float32)
    accuracy = jnp.sum(correct * weights) / jnp.maximum(weights.sum(), 1.0)
    return loss, {"loss": loss, "accuracy": accuracy, "mask_fraction": weights.mean()}


def make_maskgit_task(cfg: MaskGITConfig) -> Task:
    """A ``Task`` training ``MaskGIT(cfg)`` on {"codes", "label"} batches."""
    model = MaskGIT(cfg)

    def init(rng: jax.Array, batch: dict[str, Any]) -> tuple[Any, dict]:
        codes = jnp.asarray(batch["codes"]).reshape(len(batch["codes"]), -1)
        params = model.init({"params": rng}, codes, jnp.asarray(batch["label"]))["params"]
        return params, {}

    def loss_fn(params, model_state, batch, rng, step):
        del step
        loss, metrics = maskgit_loss(model, params, batch, rng)
        return loss, (metrics, model_state)

    return Task(name="maskgit", init=init, loss_fn=loss_fn, sample_images=None)
