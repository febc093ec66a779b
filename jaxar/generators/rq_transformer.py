"""RQ-Transformer (Lee et al. 2022): autoregressive over positions, then over the residual
code stack of each position, trained on residual-quantizer codes [B, h, w, D].

* Spatial transformer (causal over the L = h*w positions): the input at position ``t`` is the
  sum over depths of the code embeddings of position ``t - 1`` plus a learned position
  embedding; the class token (``num_classes`` rows + the CFG null class) starts the sequence.
  Its output at ``t`` is the spatial context ``u_t`` of position ``t``.
* Depth transformer (causal over the D codes of one position, batched over positions): input
  ``[u_t, e_1, ..., e_{D-1}] + depth embedding``, where ``e_d`` is the embedding of code
  ``d - 1`` (or, with ``cumsum_depth_context``, the running sum of the embeddings of codes
  ``< d``, as RQ-Transformer's ``cumsum_depth_ctx``); output ``d`` predicts code ``d``.

Blocks are jaxar's pre-norm ``TransformerBlock`` (RMSNorm, SwiGLU) with learned absolute
position embeddings as in RQ-Transformer. The original's ImageNet models feed the frozen RQ-VAE
codebook vectors through a linear layer; here the code embeddings are learned tables (shared
over depths by default, ``shared_tok_emb``). Sampling: ``jaxar.sampling.rq``.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax

from jaxar.checks import check_int_input
from jaxar.layers.caches import StackCache, init_stack_cache
from jaxar.layers.conditioning import drop_labels
from jaxar.layers.mlp import dense_init, ffn_hidden_dim
from jaxar.layers.norms import RMSNorm
from jaxar.layers.scan import check_stack_options
from jaxar.layers.transformer import block_stack, run_blocks
from jaxar.presets import from_preset
from jaxar.task import Task


@dataclasses.dataclass(frozen=True)
class RQTransformerConfig:
    """RQ-Transformer hyperparameters (RQ-Transformer's names in comments)."""

    vocab_size: int = 16384
    code_depth: int = 4  # block_size[2]
    block_size: int = 64  # h * w (block_size[0] * block_size[1]); 8 x 8 for ImageNet 256
    dim: int = 1536  # embed_dim
    num_heads: int = 24  # n_head
    spatial_layers: int = 42  # body.n_layer
    depth_layers: int = 6  # head.n_layer
    ffn_dim: int | None = None  # None: SwiGLU width rule for dim
    shared_embeddings: bool = True  # shared_tok_emb: one code table for all depths
    cumsum_depth_context: bool = True  # cumsum_depth_ctx
    num_classes: int = 1000  # vocab_size_cond
    class_dropout_prob: float = 0.1  # CFG null class
    embed_dropout: float = 0.0  # embd_pdrop
    resid_dropout: float = 0.1  # resid_pdrop
    attn_dropout: float = 0.0  # attn_pdrop
    norm_eps: float = 1e-5
    init_std: float = 0.02
    dtype: str = "float32"
    scan_layers: bool = False  # one nn.scan over the blocks (params [L, ...])
    remat_policy: str = "none"  # "none" | "full" | "dots" | "dots_no_batch"

    def __post_init__(self):
        check_stack_options("RQTransformerConfig", self.scan_layers, self.remat_policy)
        names = ("vocab_size", "code_depth", "block_size", "dim", "num_heads", "spatial_layers",
                 "depth_layers", "num_classes")  # fmt: skip
        for name in names:
            if getattr(self, name) <= 0:
                raise ValueError(f"RQTransformerConfig.{name} must be positive")
        if self.dim % self.num_heads:
            raise ValueError(f"dim {self.dim} is not divisible by num_heads {self.num_heads}")
        if not 0.0 <= self.class_dropout_prob < 1.0:
            raise ValueError(f"class_dropout_prob must be in [0, 1), got {self.class_dropout_prob}")

    @property
    def head_dim(self) -> int:
        return self.dim // self.num_heads

    @property
    def hidden_dim(self) -> int:
        return self.ffn_dim or ffn_hidden_dim(self.dim, 256 if self.dim >= 256 else 16)

    @property
    def null_class(self) -> int:
        return self.num_classes


def _deep(**fields: Any) -> RQTransformerConfig:
    """A released-size model: its stacks are scanned (``scan_layers``)."""
    return RQTransformerConfig(scan_layers=True, **fields)


RQ_CONFIGS: dict[str, RQTransformerConfig] = {
    # ImageNet 256x256 on 8x8x4 RQ-VAE codes (configs/imagenet256/stage2/*).
    "RQ-480M": _deep(dim=1536, num_heads=24, spatial_layers=12, depth_layers=4),
    "RQ-821M": _deep(dim=1536, num_heads=24, spatial_layers=24, depth_layers=4),
    "RQ-1.4B": _deep(dim=1536, num_heads=24, spatial_layers=42, depth_layers=6),
    "RQ-3.8B": _deep(dim=2560, num_heads=40, spatial_layers=42, depth_layers=6),
    # Bundled digits: 8x8 grid, 2 residual codes of 256 per position.
    "RQ-digits": RQTransformerConfig(
        vocab_size=256, code_depth=2, block_size=64, dim=128, num_heads=4, spatial_layers=4,
        depth_layers=2, num_classes=10, resid_dropout=0.0,
    ),
    "RQ-tiny": RQTransformerConfig(
        vocab_size=32, code_depth=3, block_size=9, dim=32, num_heads=2, spatial_layers=1,
        depth_layers=1, num_classes=10, resid_dropout=0.0,
    ),
}  # fmt: skip


def rq_config(name: str, **overrides: Any) -> RQTransformerConfig:
    """A named preset with fields replaced."""
    return from_preset(RQ_CONFIGS, name, "RQ-Transformer", **overrides)


def flat_codes(codes: jax.Array, cfg: RQTransformerConfig) -> jax.Array:
    """[B, h, w, D] or [B, L, D] -> [B, L, D], checking shape, dtype and range."""
    if jnp.ndim(codes) == 4:
        codes = codes.reshape(codes.shape[0], -1, codes.shape[-1])
    check_int_input("codes", codes, 3, cfg.vocab_size)
    if codes.shape[1:] != (cfg.block_size, cfg.code_depth):
        raise ValueError(
            f"RQ-Transformer needs codes [B, {cfg.block_size}, {cfg.code_depth}] (or [B, h, w, "
            f"{cfg.code_depth}]), got {codes.shape}"
        )
    return codes


class RQTransformer(nn.Module):
    """Spatial + depth transformers; ``__call__(codes, labels) -> logits [B, L, D, V]``."""

    config: RQTransformerConfig

    def setup(self):
        cfg = self.config
        dtype = jnp.dtype(cfg.dtype)
        init = dense_init(cfg.init_std)
        tables = 1 if cfg.shared_embeddings else cfg.code_depth
        self.tok_embeddings = self.param(
            "tok_embeddings",
            nn.with_logical_partitioning(init, (None, "vocab", "embed")),
            (tables, cfg.vocab_size, cfg.dim),
        )
        self.cls_embedding = nn.Embed(
            cfg.num_classes + 1,
            cfg.dim,
            embedding_init=nn.with_logical_partitioning(init, (None, "embed")),
            dtype=dtype,
        )
        self.pos_emb_hw = self.param(
            "pos_emb_hw", nn.with_logical_partitioning(init, ("length", "embed")),
            (cfg.block_size, cfg.dim),
        )  # fmt: skip
        self.pos_emb_d = self.param(
            "pos_emb_d", nn.with_logical_partitioning(init, ("length", "embed")),
            (cfg.code_depth, cfg.dim),
        )  # fmt: skip
        block = dict(
            num_heads=cfg.num_heads, ffn_hidden_dim=cfg.hidden_dim, norm_eps=cfg.norm_eps,
            attn_dropout_rate=cfg.attn_dropout, resid_dropout_rate=cfg.resid_dropout,
            ffn_dropout_rate=cfg.resid_dropout, init_std=cfg.init_std, dtype=dtype,
        )  # fmt: skip
        stack = dict(scan=cfg.scan_layers, remat_policy=cfg.remat_policy)
        self.spatial_layers = block_stack(cfg.spatial_layers, **stack, **block)
        self.depth_layers = block_stack(cfg.depth_layers, **stack, **block)
        self.spatial_norm = RMSNorm(cfg.norm_eps)
        self.head_norm = RMSNorm(cfg.norm_eps)
        self.head = nn.Dense(
            cfg.vocab_size,
            use_bias=False,
            kernel_init=nn.with_logical_partitioning(init, ("embed", "vocab")),
            dtype=dtype,
        )
        self.dropout = nn.Dropout(cfg.embed_dropout)

    def embed_codes(self, codes: jax.Array, depths: jax.Array | None = None) -> jax.Array:
        """Codes [..., K] at depths [K] (default 0..K-1) -> embeddings [..., K, E]."""
        cfg = self.config
        dtype = jnp.dtype(cfg.dtype)
        if cfg.shared_embeddings:
            return jnp.take(self.tok_embeddings[0], codes, axis=0).astype(dtype)
        depths = jnp.arange(codes.shape[-1]) if depths is None else depths
        return self.tok_embeddings[depths, codes].astype(dtype)

    def embed_condition(
        self, labels: jax.Array, *, train: bool = False, force_drop: jax.Array | None = None
    ) -> jax.Array:
        """Labels [B] -> start token [B, 1, E]; dropped rows use the null class."""
        cfg = self.config
        check_int_input("labels", labels, 1, cfg.num_classes + 1)
        rng = self.make_rng("dropout") if train and cfg.class_dropout_prob > 0 else None
        labels = drop_labels(labels, cfg.null_class, cfg.class_dropout_prob, rng, force_drop)
        return self.cls_embedding(labels)[:, None]

    def spatial_input(self, codes: jax.Array, positions: jax.Array) -> jax.Array:
        """Code stacks [B, T, D] at grid positions [T] -> spatial inputs [B, T, E]."""
        h = self.embed_codes(codes).sum(axis=-2)
        return h + jnp.take(self.pos_emb_hw, positions, axis=0).astype(h.dtype)

    def run_spatial(
        self, h: jax.Array, cache: StackCache | None = None, *, train: bool = False
    ) -> tuple[jax.Array, StackCache | None]:
        """Causal spatial stack: [B, T, E] -> spatial contexts [B, T, E] (normed), caches."""
        h = nn.with_logical_constraint(
            self.dropout(h, deterministic=not train), ("batch", "length", "embed")
        )
        h, new_cache = run_blocks(self.spatial_layers, h, cache, train=train)
        return self.spatial_norm(h), new_cache

    def depth_context(self, codes: jax.Array) -> jax.Array:
        """Code stacks [..., D] -> depth inputs [..., D - 1, E] for depths 1..D-1."""
        emb = self.embed_codes(codes)
        if self.config.cumsum_depth_context:
            emb = jnp.cumsum(emb, axis=-2)
        return emb[..., :-1, :]

    def run_depth(
        self,
        h: jax.Array,
        depths: jax.Array,
        cache: StackCache | None = None,
        *,
        train: bool = False,
    ) -> tuple[jax.Array, StackCache | None]:
        """Causal depth stack: inputs [N, T, E] at depths [T] -> logits float32 [N, T, V]."""
        h = h + jnp.take(self.pos_emb_d, depths, axis=0).astype(h.dtype)
        h, new_cache = run_blocks(self.depth_layers, h, cache, train=train)
        return self.head(self.head_norm(h)).astype(jnp.float32), new_cache

    def __call__(
        self,
        codes: jax.Array,
        labels: jax.Array,
        *,
        train: bool = False,
        force_drop: jax.Array | None = None,
    ) -> jax.Array:
        """Teacher-forced logits: codes [B, h, w, D] | [B, L, D], labels [B] -> [B, L, D, V]."""
        cfg = self.config
        codes = flat_codes(codes, cfg)
        b, length, depth = codes.shape
        if jnp.shape(labels) != (b,):
            raise ValueError(f"labels must be [{b}], got {jnp.shape(labels)}")
        start = self.embed_condition(labels, train=train, force_drop=force_drop)
        h = jnp.concatenate([start, self.spatial_input(codes[:, :-1], jnp.arange(length - 1))], 1)
        ctx, _ = self.run_spatial(h, train=train)  # [B, L, E]
        depth_in = jnp.concatenate([ctx[:, :, None], self.depth_context(codes)], axis=2)
        logits, _ = self.run_depth(
            depth_in.reshape(b * length, depth, -1), jnp.arange(depth), train=train
        )
        return logits.reshape(b, length, depth, -1)


def init_rq_caches(cfg: RQTransformerConfig, batch: int) -> tuple[StackCache, StackCache]:
    """Empty (spatial, depth) KV caches for ``batch`` rows (per layer, or stacked with
    ``scan_layers``)."""
    dtype, heads, dim = jnp.dtype(cfg.dtype), cfg.num_heads, cfg.head_dim
    stacked = cfg.scan_layers
    spatial = init_stack_cache(
        cfg.spatial_layers, batch, cfg.block_size, heads, dim, dtype, stacked
    )
    depth = init_stack_cache(cfg.depth_layers, batch, cfg.code_depth, heads, dim, dtype, stacked)
    return spatial, depth


def rq_loss(
    model: RQTransformer, params: Any, batch: dict[str, jax.Array], rng: jax.Array, *,
    train: bool = True,
) -> tuple[jax.Array, dict[str, jax.Array]]:  # fmt: skip
    """Cross entropy over every (position, depth) code. batch: {"codes": int [B, h, w, D] or
    [B, L, D], "label": int [B]}. Metrics: loss, accuracy, loss_depth<d>."""
    cfg = model.config
    codes = flat_codes(batch["codes"], cfg)
    logits = model.apply(
        {"params": params}, codes, batch["label"], train=train, rngs={"dropout": rng}
    )
    per_code = optax.softmax_cross_entropy_with_integer_labels(logits, codes)  # [B, L, D]
    loss = per_code.mean()
    metrics = {"loss": loss, "accuracy": (logits.argmax(-1) == codes).mean()}
    for d in range(cfg.code_depth):
        metrics[f"loss_depth{d}"] = per_code[..., d].mean()
    return loss, metrics


def make_rq_task(cfg: RQTransformerConfig) -> Task:
    """A ``Task`` training ``RQTransformer(cfg)`` on {"codes", "label"} batches."""
    model = RQTransformer(cfg)

    def init(rng: jax.Array, batch: dict[str, Any]) -> tuple[Any, dict]:
        codes = flat_codes(jnp.asarray(batch["codes"]), cfg)
        return model.init({"params": rng}, codes, jnp.asarray(batch["label"]))["params"], {}

    def loss_fn(params, model_state, batch, rng, step):
        del step
        loss, metrics = rq_loss(model, params, batch, rng)
        return loss, (metrics, model_state)

    return Task(name="rq-transformer", init=init, loss_fn=loss_fn, sample_images=None)
