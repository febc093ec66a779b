"""LlamaGen GPT: a LLaMA-style decoder over image-token grids, class (c2i) or caption (t2i)
conditioned, with 2D RoPE, SwiGLU, RMSNorm, a CFG null class and a functional KV cache.

Sequence layout: ``[prefix (cls_token_num tokens), codes[0], ..., codes[L-2]]``; the output at
position ``cls_token_num - 1 + t`` predicts ``codes[t]`` (teacher forcing).
"""

from __future__ import annotations

import dataclasses
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax

from jaxar.checks import check_int_input
from jaxar.layers.caches import StackCache, cache_slots, init_stack_cache
from jaxar.layers.conditioning import condition_drop_mask
from jaxar.layers.mlp import dense_init, ffn_hidden_dim
from jaxar.layers.norms import RMSNorm
from jaxar.layers.rope import PREFIX_MODES, gather_rope, rope_table_2d
from jaxar.layers.scan import ScannedBlocks, check_stack_options
from jaxar.layers.transformer import TransformerBlock, block_stack, run_blocks
from jaxar.presets import from_preset
from jaxar.task import Task

MODEL_TYPES = ("c2i", "t2i")


class LlamaShapes:
    """Derived sizes shared by LlamaGen-style configs (GPT, RandAR): they need ``dim``,
    ``num_heads``, ``num_kv_heads``, ``block_size`` (a square grid) and ``num_classes``."""

    @property
    def kv_heads(self) -> int:
        return self.num_kv_heads or self.num_heads

    @property
    def head_dim(self) -> int:
        return self.dim // self.num_heads

    @property
    def grid_size(self) -> int:
        return int(round(self.block_size**0.5))

    @property
    def null_class(self) -> int:
        return self.num_classes


@dataclasses.dataclass(frozen=True)
class GPTConfig(LlamaShapes):
    """LlamaGen ``ModelArgs`` (names follow jaxar; LlamaGen's in comments)."""

    vocab_size: int = 16384  # codebook size
    num_layers: int = 12  # n_layer
    dim: int = 768
    num_heads: int = 12  # n_head
    num_kv_heads: int | None = None  # n_kv_head (GQA); None = num_heads
    multiple_of: int = 256
    ffn_dim_multiplier: float | None = None
    ffn_dim: int | None = None  # explicit SwiGLU width; None = LlamaGen's rule
    rope_base: float = 10000.0
    prefix_rope: str = "zero"  # "zero" as released LlamaGen (zeroes prefix q/k) | "identity"
    norm_eps: float = 1e-5
    init_std: float = 0.02  # initializer_range
    num_classes: int = 1000
    class_dropout_prob: float = 0.1
    cls_token_num: int = 1
    caption_dim: int = 2048  # t2i caption feature width
    block_size: int = 256  # image tokens per sample, a square grid
    model_type: str = "c2i"
    token_dropout: float = 0.1  # token_dropout_p
    resid_dropout: float = 0.1  # resid_dropout_p
    ffn_dropout: float = 0.1  # ffn_dropout_p
    attn_dropout: float = 0.0  # attn_dropout_p
    drop_path: float = 0.0  # drop_path_rate (linearly increasing over layers)
    dtype: str = "float32"  # compute dtype; params stay float32
    scan_layers: bool = False  # one nn.scan over the blocks (params [L, ...])
    remat_policy: str = "none"  # "none" | "full" | "dots" | "dots_no_batch"

    def __post_init__(self):
        check_stack_options("GPTConfig", self.scan_layers, self.remat_policy)
        for name in ("vocab_size", "num_layers", "dim", "num_heads", "num_classes", "block_size"):
            if getattr(self, name) <= 0:
                raise ValueError(f"GPTConfig.{name} must be positive, got {getattr(self, name)}")
        if self.dim % self.num_heads:
            raise ValueError(f"dim {self.dim} is not divisible by num_heads {self.num_heads}")
        if self.num_heads % self.kv_heads:
            raise ValueError(f"num_heads {self.num_heads} not a multiple of num_kv_heads")
        if self.head_dim % 4:
            raise ValueError(f"2D RoPE needs head_dim % 4 == 0, got {self.head_dim}")
        if self.grid_size**2 != self.block_size:
            raise ValueError(f"block_size {self.block_size} is not a square grid")
        if self.model_type not in MODEL_TYPES:
            raise ValueError(f"model_type must be one of {MODEL_TYPES}, got {self.model_type!r}")
        if self.model_type == "c2i" and self.cls_token_num != 1:
            raise ValueError("c2i models use exactly one class token (cls_token_num=1)")
        if self.prefix_rope not in PREFIX_MODES:
            raise ValueError(f"prefix_rope must be one of {PREFIX_MODES}")
        if not 0.0 <= self.class_dropout_prob < 1.0:
            raise ValueError(f"class_dropout_prob must be in [0, 1), got {self.class_dropout_prob}")

    @property
    def hidden_dim(self) -> int:
        if self.ffn_dim is not None:
            return self.ffn_dim
        return ffn_hidden_dim(self.dim, self.multiple_of, self.ffn_dim_multiplier)

    @property
    def cache_len(self) -> int:
        """KV-cache slots for one image: prefix + block_size."""
        return self.cls_token_num + self.block_size


GPT_CONFIGS: dict[str, GPTConfig] = {  # deep presets scan their layers (scan_layers)
    # class-conditional (LlamaGen c2i)
    "GPT-B": GPTConfig(scan_layers=True, num_layers=12, dim=768, num_heads=12),  # 111M
    "GPT-L": GPTConfig(scan_layers=True, num_layers=24, dim=1024, num_heads=16),  # 343M
    "GPT-XL": GPTConfig(scan_layers=True, num_layers=36, dim=1280, num_heads=20),  # 775M
    "GPT-XXL": GPTConfig(scan_layers=True, num_layers=48, dim=1536, num_heads=24),  # 1.4B
    "GPT-XXXL": GPTConfig(scan_layers=True, num_layers=48, dim=2560, num_heads=40),  # 3.9B
    # text-conditional (LlamaGen t2i; 120 caption tokens of flan-t5-xl features)
    "GPT-1B": GPTConfig(scan_layers=True, num_layers=22, dim=2048, num_heads=32),
    "GPT-3B": GPTConfig(scan_layers=True, num_layers=24, dim=3200, num_heads=32),
    "GPT-7B": GPTConfig(scan_layers=True, num_layers=32, dim=4096, num_heads=32),
    # small models for the bundled digits data and tests (4x4 token grid, 10 classes)
    "GPT-tiny": GPTConfig(
        vocab_size=256, num_layers=2, dim=64, num_heads=4, multiple_of=32, num_classes=10,
        block_size=16, token_dropout=0.0, resid_dropout=0.0, ffn_dropout=0.0,
    ),
}  # fmt: skip


def gpt_config(name: str, **overrides: Any) -> GPTConfig:
    """A named preset with fields replaced, e.g. ``gpt_config("GPT-B", vocab_size=4096)``."""
    return from_preset(GPT_CONFIGS, name, "GPT", **overrides)


def caption_attention_mask(
    caption_mask: jax.Array, query_positions: jax.Array, num_keys: int
) -> jax.Array:
    """LlamaGen's t2i attention mask: causal, no query sees a padded caption token (mask 0),
    and every token sees itself (so a padded row is not empty).

    caption_mask: [B, Lc] (1 / True = a real token); query_positions: [T] | [B, T] sequence
    positions of the queries; num_keys: S key slots. -> bool [B, T, S]."""
    caption_mask = jnp.asarray(caption_mask).astype(bool)
    batch, lc = caption_mask.shape
    if num_keys < lc:
        raise ValueError(f"{num_keys} key slots cannot hold {lc} caption tokens")
    key_ok = jnp.concatenate([caption_mask, jnp.ones((batch, num_keys - lc), bool)], axis=1)
    queries = jnp.broadcast_to(
        jnp.asarray(query_positions), (batch, jnp.shape(query_positions)[-1])
    )
    keys = jnp.arange(num_keys)[None, None, :]
    causal = keys <= queries[:, :, None]
    return (causal & key_ok[:, None, :]) | (keys == queries[:, :, None])


def llamagen_layers(cfg: Any) -> list[TransformerBlock] | ScannedBlocks:
    """LlamaGen's ``num_layers`` blocks (drop path rising linearly to ``drop_path``) for a
    ``GPTConfig`` or a config with the same transformer fields (``RandARConfig``). Assign the
    result to ``self.layers`` in ``setup`` so the blocks are named ``layers_<i>`` (with
    ``scan_layers``: one stack ``layers`` with params [num_layers, ...])."""
    return block_stack(
        cfg.num_layers,
        cfg.drop_path,
        scan=cfg.scan_layers,
        remat_policy=cfg.remat_policy,
        num_heads=cfg.num_heads,
        ffn_hidden_dim=cfg.hidden_dim,
        num_kv_heads=cfg.kv_heads,
        norm_eps=cfg.norm_eps,
        attn_dropout_rate=cfg.attn_dropout,
        resid_dropout_rate=cfg.resid_dropout,
        ffn_dropout_rate=cfg.ffn_dropout,
        init_std=cfg.init_std,
        dtype=jnp.dtype(cfg.dtype),
    )


class CaptionEmbedder(nn.Module):
    """t2i prefix: caption features [B, Lc, C] -> MLP (GELU-tanh) -> [B, Lc, D]; dropped
    captions are replaced by the fixed ``uncond_embedding`` [Lc, C]."""

    dim: int
    num_tokens: int
    caption_dim: int
    init_std: float = 0.02

    @nn.compact
    def __call__(self, caption: jax.Array, drop: jax.Array | None) -> jax.Array:
        uncond = self.param(
            "uncond_embedding",
            nn.with_logical_partitioning(
                nn.initializers.normal(self.caption_dim**-0.5), (None, None)
            ),
            (self.num_tokens, self.caption_dim),
        )
        if drop is not None:  # a fixed buffer in LlamaGen: no gradient
            uncond = jax.lax.stop_gradient(uncond).astype(caption.dtype)
            caption = jnp.where(drop[:, None, None], uncond[None], caption)

        def dense(axes, name):
            init = nn.with_logical_partitioning(dense_init(self.init_std), axes)
            return nn.Dense(self.dim, use_bias=False, kernel_init=init, name=name)

        hidden = nn.gelu(dense((None, "mlp"), "fc1")(caption), approximate=True)
        return dense(("mlp", "embed"), "fc2")(hidden)


class GPT(nn.Module):
    """LlamaGen Transformer. Parameter names mirror LlamaGen's state dict.

    ``cond`` is int32 labels [B] (c2i; row ``num_classes`` of the class table is the CFG null
    class) or float caption features [B, cls_token_num, caption_dim] (t2i).
    """

    config: GPTConfig

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
        if cfg.model_type == "c2i":
            self.cls_embedding = nn.Embed(
                cfg.num_classes + 1,  # + the CFG null class
                cfg.dim,
                embedding_init=nn.with_logical_partitioning(emb_init, (None, "embed")),
                dtype=dtype,
            )
        else:
            self.cls_embedding = CaptionEmbedder(
                cfg.dim, cfg.cls_token_num, cfg.caption_dim, cfg.init_std
            )
        self.layers = llamagen_layers(cfg)
        self.norm = RMSNorm(cfg.norm_eps)
        self.output = nn.Dense(
            cfg.vocab_size,
            use_bias=False,
            kernel_init=nn.with_logical_partitioning(nn.initializers.zeros, ("embed", "vocab")),
            dtype=jnp.float32,  # float32 logits under any compute dtype
        )
        self.token_dropout = nn.Dropout(cfg.token_dropout)

    def rope_table(self) -> tuple[jax.Array, jax.Array]:
        cfg = self.config
        return rope_table_2d(
            cfg.grid_size, cfg.head_dim, cfg.rope_base, cfg.cls_token_num, cfg.prefix_rope
        )

    def embed_condition(
        self, cond: jax.Array, *, train: bool = False, force_drop: jax.Array | None = None
    ) -> jax.Array:
        """Prefix embeddings [B, cls_token_num, D]. In training, each row's condition is
        replaced by the null class / null caption with prob ``class_dropout_prob``;
        ``force_drop`` (bool [B]) drops rows explicitly (CFG's unconditional branch)."""
        cfg = self.config
        rng = self.make_rng("dropout") if train and cfg.class_dropout_prob > 0 else None
        drop = condition_drop_mask(jnp.shape(cond)[0], cfg.class_dropout_prob, rng, force_drop)
        if cfg.model_type == "t2i":
            want = (cfg.cls_token_num, cfg.caption_dim)
            if jnp.ndim(cond) != 3 or tuple(jnp.shape(cond)[1:]) != want:
                raise ValueError(
                    f"t2i caption must be [B, {want[0]}, {want[1]}], got {jnp.shape(cond)}"
                )
            return self.cls_embedding(cond, drop)
        check_int_input("labels", cond, 1, cfg.num_classes + 1)
        if drop is not None:
            cond = jnp.where(drop, cfg.null_class, cond)
        return self.cls_embedding(cond)[:, None, :]

    def _run(
        self,
        h: jax.Array,
        positions: jax.Array,
        cache: StackCache | None,
        train: bool,
        caption_mask: jax.Array | None = None,
        kv_len: int | None = None,
    ) -> tuple[jax.Array, StackCache | None]:
        """Transformer body: h [B, T, D] at sequence positions [T] | [B, T] -> logits [B, T, V].
        ``caption_mask`` [B, Lc] (t2i): padded caption tokens are hidden from every query."""
        h = nn.with_logical_constraint(
            self.token_dropout(h, deterministic=not train), ("batch", "length", "embed")
        )
        rope = gather_rope(self.rope_table(), positions)
        mask = None
        if caption_mask is not None:
            if self.config.model_type != "t2i":
                raise ValueError("caption_mask is for t2i models only")
            want = (h.shape[0], self.config.cls_token_num)
            if tuple(jnp.shape(caption_mask)) != want:
                raise ValueError(
                    f"caption_mask must be {list(want)}, got {jnp.shape(caption_mask)}"
                )
            slots = h.shape[1] if cache is None else (kv_len or cache_slots(cache))
            mask = caption_attention_mask(caption_mask, positions, slots)
        extra = {} if kv_len is None else {"kv_len": kv_len}
        h, new_cache = run_blocks(self.layers, h, cache, rope=rope, mask=mask, train=train, **extra)
        logits = self.output(self.norm(h)).astype(jnp.float32)
        return nn.with_logical_constraint(logits, ("batch", "length", "vocab")), new_cache

    def __call__(
        self,
        codes: jax.Array,
        cond: jax.Array,
        *,
        train: bool = False,
        force_drop: jax.Array | None = None,
        caption_mask: jax.Array | None = None,
    ) -> jax.Array:
        """Teacher-forced logits. codes: int [B, L] (L <= block_size) -> float32 [B, L, V].
        ``caption_mask`` (t2i): [B, Lc], 0 at padded caption tokens."""
        cfg = self.config
        check_int_input("codes", codes, 2, cfg.vocab_size)
        if codes.shape[1] > cfg.block_size:
            raise ValueError(f"codes length {codes.shape[1]} exceeds block_size {cfg.block_size}")
        if jnp.shape(cond)[0] != codes.shape[0]:
            raise ValueError(f"batch of cond {jnp.shape(cond)} does not match codes {codes.shape}")
        prefix = self.embed_condition(cond, train=train, force_drop=force_drop)
        h = jnp.concatenate([prefix, self.tok_embeddings(codes[:, :-1])], axis=1)
        logits, _ = self._run(h, jnp.arange(h.shape[1]), None, train, caption_mask)
        return logits[:, cfg.cls_token_num - 1 :]

    def prefill(
        self,
        cond: jax.Array,
        cache: StackCache,
        *,
        force_drop: jax.Array | None = None,
        caption_mask: jax.Array | None = None,
    ) -> tuple[jax.Array, StackCache]:
        """Runs the prefix into an empty cache. Returns logits for codes[0] [B, V] and cache.
        ``caption_mask`` (t2i): [B, Lc], 0 at padded caption tokens."""
        prefix = self.embed_condition(cond, force_drop=force_drop)
        positions = jnp.arange(prefix.shape[1])
        logits, cache = self._run(prefix, positions, cache, False, caption_mask)
        return logits[:, -1], cache

    def decode_step(
        self,
        tokens: jax.Array,
        positions: jax.Array,
        cache: StackCache,
        caption_mask: jax.Array | None = None,
        kv_len: int | None = None,
    ) -> tuple[jax.Array, StackCache]:
        """Feeds image tokens [B, S] at sequence positions [S] | [B, S] (code t sits at
        ``cls_token_num + t``) after the cached ones. Returns logits [B, S, V] and cache.
        ``caption_mask`` (t2i): the prefill's [B, Lc] mask, hiding padded caption tokens.
        ``kv_len`` (static): attention reads only the first ``kv_len`` cache slots (the
        caller guarantees every written slot, these tokens' included, lies below it)."""
        check_int_input("tokens", tokens, 2, self.config.vocab_size)
        h = self.tok_embeddings(tokens)
        return self._run(h, positions, cache, False, caption_mask, kv_len)


def init_gpt_cache(
    cfg: GPTConfig, batch: int, max_len: int | None = None, dtype: Any = None
) -> StackCache:
    """Empty KV caches for ``batch`` rows (``max_len`` defaults to cfg.cache_len): per layer,
    or stacked with ``scan_layers`` (``jaxar.layers.caches``)."""
    dtype = jnp.dtype(cfg.dtype) if dtype is None else dtype
    max_len = cfg.cache_len if max_len is None else max_len
    return init_stack_cache(
        cfg.num_layers, batch, max_len, cfg.kv_heads, cfg.head_dim, dtype, cfg.scan_layers
    )


def gpt_loss(
    model: GPT,
    params: Any,
    batch: dict[str, jax.Array],
    rng: jax.Array,
    *,
    train: bool = True,
    label_smoothing: float = 0.0,
) -> tuple[jax.Array, dict[str, jax.Array]]:
    """Next-token cross entropy over all codes. batch: {"codes": int [B, L], "label": int [B]}
    (t2i: "caption" [B, Lc, C] instead of "label"). Returns (loss, {loss, accuracy, perplexity})."""
    codes = batch["codes"]
    if codes.ndim == 3:  # [B, h, w] grids
        codes = codes.reshape(codes.shape[0], -1)
    cond = batch["caption"] if model.config.model_type == "t2i" else batch["label"]
    logits = model.apply({"params": params}, codes, cond, train=train, rngs={"dropout": rng})
    targets = optax.smooth_labels(jax.nn.one_hot(codes, logits.shape[-1]), label_smoothing)
    loss = optax.softmax_cross_entropy(logits, targets).mean()
    nll = optax.softmax_cross_entropy_with_integer_labels(logits, codes).mean()
    accuracy = (logits.argmax(-1) == codes).mean()
    return loss, {"loss": loss, "accuracy": accuracy, "perplexity": jnp.exp(nll)}


def make_gpt_task(cfg: GPTConfig, label_smoothing: float = 0.0) -> Task:
    """A ``jaxar.task.Task`` training ``GPT(cfg)`` on pre-tokenized batches."""
    model = GPT(cfg)

    def init(rng: jax.Array, batch: dict[str, Any]) -> tuple[Any, dict]:
        codes = jnp.asarray(batch["codes"])
        codes = codes.reshape(codes.shape[0], -1)
        cond = batch["caption"] if cfg.model_type == "t2i" else batch["label"]
        params = model.init({"params": rng}, codes, jnp.asarray(cond))["params"]
        return params, {}

    def loss_fn(params, model_state, batch, rng, step):
        del step
        loss, metrics = gpt_loss(model, params, batch, rng, label_smoothing=label_smoothing)
        return loss, (metrics, model_state)

    return Task(name=f"gpt-{cfg.model_type}", init=init, loss_fn=loss_fn, sample_images=None)
