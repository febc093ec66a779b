"""RandAR (Pang et al. 2025): a decoder-only GPT that generates image tokens in any order.

Each image token is preceded by a *position instruction* token naming where the next token
goes: one learned vector ``pos_instruct`` [D] viewed as heads [H, Dh] and rotated by the 2D
RoPE of the target grid position. For a permutation ``order`` [B, L] of the grid positions::

    sequence:  [cls, p(order_0), x(order_0), p(order_1), x(order_1), ..., p(order_L-1), x(..)]
    RoPE rows: [cls,  order_0,    order_0,    order_1,    order_1,   ...]

and the logits read at ``p(order_i)`` predict the code at grid position ``order_i``. The class
token carries no rotation (RoPE prefix rows are zero, as in LlamaGen / RandAR's
``zero_class_qk``). Training draws a fresh random permutation per example
(``position_order="random"``) or uses raster order. Sampling: ``jaxar.sampling.random_order``.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

from jaxar.checks import check_int_input
from jaxar.generators.gpt import LlamaShapes, llamagen_layers
from jaxar.layers.caches import StackCache, init_stack_cache
from jaxar.layers.conditioning import drop_labels
from jaxar.layers.mlp import dense_init, ffn_hidden_dim
from jaxar.layers.norms import RMSNorm
from jaxar.layers.rope import apply_rope, gather_rope, rope_table_2d
from jaxar.layers.scan import check_stack_options
from jaxar.layers.transformer import run_blocks
from jaxar.presets import from_preset
from jaxar.task import Task

POSITION_ORDERS = ("random", "raster")


@dataclasses.dataclass(frozen=True)
class RandARConfig(LlamaShapes):
    """RandARTransformer's arguments (jaxar names; RandAR's in comments)."""

    vocab_size: int = 16384
    num_layers: int = 24  # n_layer
    dim: int = 1024
    num_heads: int = 16  # n_head
    num_kv_heads: int | None = None
    multiple_of: int = 256
    ffn_dim: int | None = None  # None: LlamaGen's SwiGLU rule
    rope_base: float = 10000.0
    norm_eps: float = 1e-5
    init_std: float = 0.02  # initializer_range
    num_classes: int = 1000
    class_dropout_prob: float = 0.1
    block_size: int = 256  # image tokens, a square grid
    token_dropout: float = 0.1  # token_dropout_p
    resid_dropout: float = 0.1  # resid_dropout_p
    ffn_dropout: float = 0.1  # ffn_dropout_p
    attn_dropout: float = 0.0
    drop_path: float = 0.0
    position_order: str = "random"  # training order
    num_inference_steps: int = 88  # parallel decoding steps (block_size: one token a step)
    dtype: str = "float32"
    scan_layers: bool = False  # one nn.scan over the blocks (params [L, ...])
    remat_policy: str = "none"  # "none" | "full" | "dots" | "dots_no_batch"

    def __post_init__(self):
        check_stack_options("RandARConfig", self.scan_layers, self.remat_policy)
        for name in ("vocab_size", "num_layers", "dim", "num_heads", "num_classes", "block_size"):
            if getattr(self, name) <= 0:
                raise ValueError(f"RandARConfig.{name} must be positive, got {getattr(self, name)}")
        if self.dim % self.num_heads or self.num_heads % self.kv_heads:
            raise ValueError(f"dim {self.dim} / heads {self.num_heads} / kv heads do not divide")
        if self.head_dim % 4:
            raise ValueError(f"2D RoPE needs head_dim % 4 == 0, got {self.head_dim}")
        if self.grid_size**2 != self.block_size:
            raise ValueError(f"block_size {self.block_size} is not a square grid")
        if self.position_order not in POSITION_ORDERS:
            raise ValueError(f"position_order must be one of {POSITION_ORDERS}")
        if not 1 <= self.num_inference_steps <= self.block_size:
            raise ValueError(f"num_inference_steps must be in [1, {self.block_size}]")
        if not 0.0 <= self.class_dropout_prob < 1.0:
            raise ValueError(f"class_dropout_prob must be in [0, 1), got {self.class_dropout_prob}")

    @property
    def hidden_dim(self) -> int:
        return self.ffn_dim or ffn_hidden_dim(self.dim, self.multiple_of)


RANDAR_CONFIGS: dict[str, RandARConfig] = {
    "RandAR-L": RandARConfig(scan_layers=True, num_layers=24, dim=1024, num_heads=16),  # 0.3B
    "RandAR-XL": RandARConfig(scan_layers=True, num_layers=36, dim=1280, num_heads=20),  # 0.7B
    "RandAR-XXL": RandARConfig(scan_layers=True, num_layers=48, dim=1536, num_heads=24),  # 1.4B
    "RandAR-digits": RandARConfig(
        vocab_size=256, num_layers=4, dim=128, num_heads=4, multiple_of=32, num_classes=10,
        block_size=64, token_dropout=0.0, resid_dropout=0.0, ffn_dropout=0.0,
        num_inference_steps=24,
    ),
    "RandAR-tiny": RandARConfig(
        vocab_size=32, num_layers=1, dim=32, num_heads=2, multiple_of=16, num_classes=10,
        block_size=16, token_dropout=0.0, resid_dropout=0.0, ffn_dropout=0.0,
        num_inference_steps=6,
    ),
}  # fmt: skip


def randar_config(name: str, **overrides: Any) -> RandARConfig:
    """A named preset with fields replaced."""
    return from_preset(RANDAR_CONFIGS, name, "RandAR", **overrides)


def interleave(a: jax.Array, b: jax.Array) -> jax.Array:
    """[B, N, ...] x2 -> [B, 2N, ...] as a_0, b_0, a_1, b_1, ..."""
    return jnp.stack([a, b], axis=2).reshape(a.shape[0], 2 * a.shape[1], *a.shape[2:])


def check_order(order: Any, batch: int, length: int) -> None:
    """ValueError unless ``order`` is int [B, L] with values in [0, L) (a permutation)."""
    check_int_input("order", order, 2, length)
    if tuple(jnp.shape(order)) != (batch, length):
        raise ValueError(f"order must be [{batch}, {length}], got {jnp.shape(order)}")
    if not isinstance(order, jax.core.Tracer):
        host = np.sort(np.asarray(order), axis=-1)
        if not np.array_equal(host, np.broadcast_to(np.arange(length), host.shape)):
            raise ValueError("each row of order must be a permutation of range(L)")


class RandAR(nn.Module):
    """RandAR transformer; parameter names follow RandAR / LlamaGen."""

    config: RandARConfig

    def setup(self):
        cfg = self.config
        dtype = jnp.dtype(cfg.dtype)
        emb_init = dense_init(cfg.init_std)
        self.tok_embeddings = nn.Embed(
            cfg.vocab_size,
            cfg.dim,
            embedding_init=nn.with_logical_partitioning(emb_init, ("vocab", "embed")),
            dtype=dtype,
        )
        self.cls_embedding = nn.Embed(
            cfg.num_classes + 1,
            cfg.dim,
            embedding_init=nn.with_logical_partitioning(emb_init, (None, "embed")),
            dtype=dtype,
        )
        self.pos_instruct = self.param(
            "pos_instruct_embeddings",
            nn.with_logical_partitioning(emb_init, ("embed",)),
            (cfg.dim,),
        )
        self.layers = llamagen_layers(cfg)
        self.norm = RMSNorm(cfg.norm_eps)
        self.output = nn.Dense(
            cfg.vocab_size,
            use_bias=False,
            kernel_init=nn.with_logical_partitioning(nn.initializers.zeros, ("embed", "vocab")),
            dtype=dtype,
        )
        self.token_dropout = nn.Dropout(cfg.token_dropout)

    def rope_table(self) -> tuple[jax.Array, jax.Array]:
        cfg = self.config
        return rope_table_2d(cfg.grid_size, cfg.head_dim, cfg.rope_base, 1, "zero")

    def embed_condition(
        self, labels: jax.Array, *, train: bool = False, force_drop: jax.Array | None = None
    ) -> jax.Array:
        """Labels [B] -> class tokens [B, 1, D]; dropped rows (training / CFG) use the null."""
        cfg = self.config
        check_int_input("labels", labels, 1, cfg.num_classes + 1)
        rng = self.make_rng("dropout") if train and cfg.class_dropout_prob > 0 else None
        labels = drop_labels(labels, cfg.null_class, cfg.class_dropout_prob, rng, force_drop)
        return self.cls_embedding(labels)[:, None, :]

    def embed_tokens(self, codes: jax.Array, *, train: bool = False) -> jax.Array:
        """Codes [B, T] -> [B, T, D] (with token dropout in training)."""
        return self.token_dropout(self.tok_embeddings(codes), deterministic=not train)

    def position_instructions(self, positions: jax.Array) -> jax.Array:
        """Grid positions int [B, T] -> position instruction tokens [B, T, D]."""
        cfg = self.config
        b, t = positions.shape
        base = self.pos_instruct.astype(jnp.dtype(cfg.dtype)).reshape(1, 1, cfg.num_heads, -1)
        base = jnp.broadcast_to(base, (b, t, cfg.num_heads, cfg.head_dim))
        rotated = apply_rope(base, *gather_rope(self.rope_table(), positions + 1))
        return rotated.reshape(b, t, cfg.dim)

    def run(
        self,
        h: jax.Array,
        rope_rows: jax.Array,
        cache: StackCache | None = None,
        *,
        train: bool = False,
    ) -> tuple[jax.Array, StackCache | None]:
        """Causal body: h [B, T, D] with RoPE table rows [B, T] (0 = class token, 1 + grid
        position otherwise), optional per-layer caches -> (logits float32 [B, T, V], caches)."""
        h = nn.with_logical_constraint(h, ("batch", "length", "embed"))
        rope = gather_rope(self.rope_table(), rope_rows)
        h, new_cache = run_blocks(self.layers, h, cache, rope=rope, train=train)
        logits = self.output(self.norm(h)).astype(jnp.float32)
        return nn.with_logical_constraint(logits, ("batch", "length", "vocab")), new_cache

    def __call__(
        self,
        codes: jax.Array,
        labels: jax.Array,
        order: jax.Array,
        *,
        train: bool = False,
        force_drop: jax.Array | None = None,
    ) -> jax.Array:
        """Teacher-forced logits in generation order: codes [B, L] (raster), labels [B],
        order [B, L] -> float32 [B, L, V], row i predicting ``codes[:, order[:, i]]``."""
        cfg = self.config
        check_int_input("codes", codes, 2, cfg.vocab_size)
        if codes.shape[1] != cfg.block_size:
            raise ValueError(f"RandAR needs {cfg.block_size} codes per image, got {codes.shape}")
        check_order(order, codes.shape[0], cfg.block_size)
        ordered = jnp.take_along_axis(codes, order, axis=1)
        h = interleave(self.position_instructions(order), self.embed_tokens(ordered, train=train))
        h = jnp.concatenate(
            [self.embed_condition(labels, train=train, force_drop=force_drop), h], 1
        )
        rope_rows = jnp.concatenate(
            [jnp.zeros((codes.shape[0], 1), jnp.int32), interleave(order + 1, order + 1)], axis=1
        )
        logits, _ = self.run(h, rope_rows, train=train)
        return logits[:, 1::2]  # at the position instruction tokens


def init_randar_cache(cfg: RandARConfig, batch: int, max_len: int) -> StackCache:
    """Empty KV caches of ``max_len`` slots (per layer, or stacked with ``scan_layers``)."""
    return init_stack_cache(
        cfg.num_layers, batch, max_len, cfg.kv_heads, cfg.head_dim, jnp.dtype(cfg.dtype),
        cfg.scan_layers,
    )  # fmt: skip


def random_orders(rng: jax.Array, batch: int, length: int) -> jax.Array:
    """A random permutation of range(L) per row: int32 [B, L]."""
    return jnp.argsort(jax.random.uniform(rng, (batch, length)), axis=-1).astype(jnp.int32)


def randar_loss(
    model: RandAR, params: Any, batch: dict[str, jax.Array], rng: jax.Array, *, train: bool = True
) -> tuple[jax.Array, dict[str, jax.Array]]:
    """Next-token cross entropy in a random (or raster) order per example.

    batch: {"codes": int [B, L] or [B, h, w], "label": int [B]}."""
    cfg = model.config
    codes = batch["codes"].reshape(batch["codes"].shape[0], -1)
    order_rng, dropout_rng = jax.random.split(rng)
    if cfg.position_order == "random":
        order = random_orders(order_rng, codes.shape[0], codes.shape[1])
    else:
        order = jnp.broadcast_to(jnp.arange(codes.shape[1], dtype=jnp.int32), codes.shape)
    logits = model.apply(
        {"params": params}, codes, batch["label"], order, train=train,
        rngs={"dropout": dropout_rng},
    )  # fmt: skip
    targets = jnp.take_along_axis(codes, order, axis=1)
    loss = optax.softmax_cross_entropy_with_integer_labels(logits, targets).mean()
    accuracy = (logits.argmax(-1) == targets).mean()
    return loss, {"loss": loss, "accuracy": accuracy, "perplexity": jnp.exp(loss)}


def make_randar_task(cfg: RandARConfig) -> Task:
    """A ``Task`` training ``RandAR(cfg)`` on {"codes", "label"} batches."""
    model = RandAR(cfg)

    def init(rng: jax.Array, batch: dict[str, Any]) -> tuple[Any, dict]:
        codes = jnp.asarray(batch["codes"]).reshape(len(batch["codes"]), -1)
        order = jnp.broadcast_to(jnp.arange(codes.shape[1], dtype=jnp.int32), codes.shape)
        params = model.init({"params": rng}, codes, jnp.asarray(batch["label"]), order)
        return params["params"], {}

    def loss_fn(params, model_state, batch, rng, step):
        del step
        loss, metrics = randar_loss(model, params, batch, rng)
        return loss, (metrics, model_state)

    return Task(name="randar", init=init, loss_fn=loss_fn, sample_images=None)
