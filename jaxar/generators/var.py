"""VAR: visual autoregressive modeling by next-scale prediction (Tian et al. 2024).

A class-conditional transformer over the token pyramid of a multi-scale VQ tokenizer
(``jaxar.quantizers.MultiScaleQuantizer``). The sequence is every scale's code map, small to
large, flattened row-major and concatenated: ``L = sum_k s_k^2`` tokens (680 for 256 px).

- Scale 0 input: class embedding + ``pos_start`` (``first_l = s_0^2`` tokens).
- Scale k > 0 input: ``word_embed`` (Linear code_dim -> D) of the accumulated quantizer
  output ``f_hat`` after scales < k, area-downsampled to s_k x s_k
  (``MultiScaleQuantizer.next_scale_inputs``).
- Every token adds its scale's level embedding and its absolute position embedding.
- AdaLN blocks conditioned on the class embedding; block-causal attention (a token sees all
  tokens of its own and earlier scales); ``AdaLNBeforeHead`` + Linear head -> logits.

Code storage for training data: one int32 array ``codes`` [B, L], the scales concatenated
small to large, each ``s_k x s_k`` map flattened row-major (VAR's ``gt_BL``);
``split_scales`` / ``concat_scales`` convert to and from per-scale maps.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

from jaxar.checks import check_int_input
from jaxar.layers.adaln import AdaLNBeforeHead, AdaLNSelfAttn, chunk_scaled_init, trunc_normal
from jaxar.layers.caches import StackCache, init_stack_cache
from jaxar.layers.conditioning import drop_labels
from jaxar.layers.scan import check_stack_options
from jaxar.layers.transformer import block_stack, run_blocks
from jaxar.presets import from_preset
from jaxar.quantizers.multiscale import MultiScaleQuantizer
from jaxar.task import Task


@dataclasses.dataclass(frozen=True)
class VARConfig:
    """VAR hyperparameters (VAR's names in comments)."""

    vocab_size: int = 4096  # V
    code_dim: int = 32  # Cvae
    depth: int = 16
    embed_dim: int = 1024  # C = D = 64 * depth in the released models
    num_heads: int = 16  # = depth
    mlp_ratio: float = 4.0
    num_classes: int = 1000
    class_dropout_prob: float = 0.1  # cond_drop_rate
    patch_nums: tuple[int, ...] = (1, 2, 3, 4, 5, 6, 8, 10, 13, 16)
    norm_eps: float = 1e-6
    shared_aln: bool = False
    attn_l2_norm: bool = True  # build_vae_var's default (released checkpoints)
    drop_rate: float = 0.0
    attn_drop_rate: float = 0.0
    drop_path: float = 0.0  # drop_path_rate, linear over blocks
    init_std: float = -1.0  # < 0: sqrt(1 / (3 C)) as VAR's automated init
    init_head: float = 0.02
    init_adaln: float = 0.5
    init_adaln_gamma: float = 1e-5
    dtype: str = "float32"  # compute dtype; params stay float32
    scan_layers: bool = False  # one nn.scan over the blocks (params [L, ...])
    remat_policy: str = "none"  # "none" | "full" | "dots" | "dots_no_batch"

    def __post_init__(self):
        check_stack_options("VARConfig", self.scan_layers, self.remat_policy)
        for name in ("vocab_size", "code_dim", "depth", "embed_dim", "num_heads", "num_classes"):
            if getattr(self, name) <= 0:
                raise ValueError(f"VARConfig.{name} must be positive, got {getattr(self, name)}")
        if self.embed_dim % self.num_heads:
            raise ValueError(f"embed_dim {self.embed_dim} not divisible by heads {self.num_heads}")
        pn = tuple(self.patch_nums)
        if len(pn) < 2 or list(pn) != sorted(set(pn)) or pn[0] < 1:
            raise ValueError(f"patch_nums must be >= 2 increasing positive sizes, got {pn}")
        if not 0.0 <= self.class_dropout_prob < 1.0:
            raise ValueError(f"class_dropout_prob must be in [0, 1), got {self.class_dropout_prob}")

    @property
    def num_scales(self) -> int:
        return len(self.patch_nums)

    @property
    def seq_len(self) -> int:
        """L = sum_k s_k^2."""
        return sum(p * p for p in self.patch_nums)

    @property
    def first_l(self) -> int:
        return self.patch_nums[0] ** 2

    @property
    def begin_ends(self) -> tuple[tuple[int, int], ...]:
        """Token range [begin, end) of every scale in the concatenated sequence."""
        ends = np.cumsum([p * p for p in self.patch_nums])
        return tuple((int(e - p * p), int(e)) for p, e in zip(self.patch_nums, ends))

    @property
    def head_dim(self) -> int:
        return self.embed_dim // self.num_heads

    @property
    def std(self) -> float:
        return self.init_std if self.init_std >= 0 else math.sqrt(1.0 / self.embed_dim / 3)

    @property
    def null_class(self) -> int:
        return self.num_classes

    def level_ids(self) -> np.ndarray:
        """Scale index of every token. -> int32 [L]"""
        return np.concatenate([np.full(p * p, i, np.int32) for i, p in enumerate(self.patch_nums)])

    def block_causal_mask(self) -> np.ndarray:
        """bool [L, L]: token i may attend token j iff scale(j) <= scale(i)."""
        lvl = self.level_ids()
        return lvl[None, :] <= lvl[:, None]


# VAR's scale schedules (``--pn 256 / 512 / 1024`` in its utils/arg_util.py), by image size
# for its 16x-downsampling VQVAE.
SCALE_SCHEDULES: dict[int, tuple[int, ...]] = {
    256: (1, 2, 3, 4, 5, 6, 8, 10, 13, 16),
    512: (1, 2, 3, 4, 6, 9, 13, 18, 24, 32),
    1024: (1, 2, 3, 4, 5, 7, 9, 12, 16, 21, 27, 36, 48, 64),
}


def scale_schedule(image_size: int) -> tuple[int, ...]:
    """VAR's scale schedule for ``image_size`` (256, 512 or 1024)."""
    if image_size not in SCALE_SCHEDULES:
        raise ValueError(
            f"VAR has scale schedules for image sizes {sorted(SCALE_SCHEDULES)}, not "
            f"{image_size}; pass the scales explicitly (patch_nums)"
        )
    return SCALE_SCHEDULES[image_size]


def _preset(depth: int, **kw: Any) -> VARConfig:
    """Released VAR-d{depth}: width 64 * depth, depth heads, drop path 0.1 * depth / 24; the
    blocks are scanned (``scan_layers``)."""
    return VARConfig(
        depth=depth, embed_dim=64 * depth, num_heads=depth, drop_path=0.1 * depth / 24,
        scan_layers=True, **kw,
    )  # fmt: skip


VAR_CONFIGS: dict[str, VARConfig] = {
    "VAR-d16": _preset(16),  # 310M
    "VAR-d20": _preset(20),  # 600M
    "VAR-d24": _preset(24),  # 1.0B
    "VAR-d30": _preset(30),  # 2.0B
    # 512 px, shared adaLN ("d36-s": --saln=1 --pn=512 in VAR's README)
    "VAR-d36": _preset(36, shared_aln=True, patch_nums=SCALE_SCHEDULES[512]),  # 2.3B
    # tests: 4 scales up to 4x4 (16x16 images with a downsample-4 tokenizer)
    "VAR-tiny": VARConfig(
        vocab_size=32, code_dim=4, depth=2, embed_dim=32, num_heads=2, num_classes=10,
        patch_nums=(1, 2, 3, 4),
    ),
    # the bundled digits data: tokenizer preset digits_msvq (16x16, 8x8 latents, 256 x 8 codes)
    "VAR-digits": VARConfig(
        vocab_size=256, code_dim=8, depth=4, embed_dim=128, num_heads=4, num_classes=10,
        patch_nums=(1, 2, 4, 6, 8),
    ),
}  # fmt: skip


def var_config(name: str, **overrides: Any) -> VARConfig:
    """A named preset with fields replaced, e.g. ``var_config("VAR-d16", num_classes=10)``."""
    return from_preset(VAR_CONFIGS, name, "VAR", **overrides)


def split_scales(codes: jax.Array, patch_nums: Sequence[int]) -> list[jax.Array]:
    """Concatenated codes [B, L] -> per-scale maps [B, s_k, s_k]."""
    total = sum(p * p for p in patch_nums)
    if codes.ndim != 2 or codes.shape[1] != total:
        raise ValueError(f"codes must be [B, {total}] for patch_nums {tuple(patch_nums)}, "
                         f"got shape {codes.shape}")  # fmt: skip
    ends = np.cumsum([p * p for p in patch_nums])
    return [codes[:, e - p * p : e].reshape(-1, p, p) for p, e in zip(patch_nums, ends)]


def concat_scales(maps: Sequence[jax.Array]) -> jax.Array:
    """Per-scale maps [B, s_k, s_k] (or [B, s_k^2]) -> concatenated codes [B, L]."""
    return jnp.concatenate([m.reshape(m.shape[0], -1) for m in maps], axis=1)


def _embed(num: int, dim: int, std: float, axes, name: str) -> nn.Embed:
    init = nn.with_logical_partitioning(trunc_normal(std), axes)
    return nn.Embed(num, dim, embedding_init=init, name=name)


class VAR(nn.Module):
    """VAR transformer. Parameter names mirror VAR's state dict (see ``jaxar.convert.var``)."""

    config: VARConfig

    def setup(self):
        cfg, std, dim = self.config, self.config.std, self.config.embed_dim
        dtype = jnp.dtype(cfg.dtype)
        self.class_emb = _embed(cfg.num_classes + 1, dim, std, (None, "embed"), "class_emb")
        self.lvl_embed = _embed(cfg.num_scales, dim, std, (None, "embed"), "lvl_embed")
        pos_init = nn.with_logical_partitioning(trunc_normal(std), ("length", "embed"))
        self.pos_start = self.param("pos_start", pos_init, (cfg.first_l, dim))
        self.pos_1LC = self.param("pos_1LC", pos_init, (cfg.seq_len, dim))
        self.word_embed = nn.Dense(
            dim,
            kernel_init=nn.with_logical_partitioning(trunc_normal(std), (None, "embed")),
            bias_init=nn.with_logical_partitioning(nn.initializers.zeros, ("embed",)),
            dtype=dtype,
        )
        if cfg.shared_aln:
            self.shared_ada_lin = nn.Dense(
                6 * dim,
                kernel_init=nn.with_logical_partitioning(trunc_normal(std), ("embed", "mlp")),
                bias_init=nn.with_logical_partitioning(nn.initializers.zeros, ("mlp",)),
            )
        self.blocks = block_stack(
            cfg.depth, cfg.drop_path, block_cls=AdaLNSelfAttn, scan=cfg.scan_layers,
            remat_policy=cfg.remat_policy, num_heads=cfg.num_heads,
            mlp_ratio=cfg.mlp_ratio, norm_eps=cfg.norm_eps, shared_aln=cfg.shared_aln,
            attn_l2_norm=cfg.attn_l2_norm, drop_rate=cfg.drop_rate,
            attn_drop_rate=cfg.attn_drop_rate, init_std=std,
            proj_std=std / math.sqrt(2 * cfg.depth), init_adaln=cfg.init_adaln,
            init_adaln_gamma=cfg.init_adaln_gamma, dtype=dtype,
        )  # fmt: skip
        self.head_nm = AdaLNBeforeHead(cfg.norm_eps, std, cfg.init_adaln)
        self.head = nn.Dense(
            cfg.vocab_size,
            kernel_init=nn.with_logical_partitioning(
                chunk_scaled_init(std, (cfg.init_head,)), ("embed", "vocab")
            ),
            bias_init=nn.with_logical_partitioning(nn.initializers.zeros, ("vocab",)),
        )

    def embed_condition(
        self, labels: jax.Array, *, train: bool = False, force_drop: jax.Array | None = None
    ) -> jax.Array:
        """Class embedding [B, D]. In training each label becomes the null class with prob
        ``class_dropout_prob``; ``force_drop`` (bool [B]) drops rows explicitly (CFG)."""
        cfg = self.config
        check_int_input("labels", labels, 1, cfg.num_classes + 1)
        rng = self.make_rng("dropout") if train and cfg.class_dropout_prob > 0 else None
        labels = drop_labels(labels, cfg.null_class, cfg.class_dropout_prob, rng, force_drop)
        return self.class_emb(labels)

    def level_position(self, begin: int, end: int) -> jax.Array:
        """Level + absolute position embeddings of tokens [begin, end). -> [end - begin, D]"""
        lvl = jnp.asarray(self.config.level_ids()[begin:end])
        return self.lvl_embed(lvl) + self.pos_1LC[begin:end]

    def scale_inputs(self, cond: jax.Array, scale_index: int, inputs: jax.Array | None):
        """Token embeddings of one scale [B, s_k^2, D]: scale 0 from the class embedding
        ``cond`` [B, D]; later scales from teacher inputs [B, s_k^2, code_dim]."""
        begin, end = self.config.begin_ends[scale_index]
        if scale_index == 0:
            x = cond[:, None, :] + self.pos_start[None]
        else:
            x = self.word_embed(inputs.astype(jnp.float32))
        return x + self.level_position(begin, end)[None]

    def _run(self, x, cond, mask, cache, kv_len, train):
        """Blocks + head: x [B, T, D] -> float32 logits [B, T, V] (and the new caches)."""
        x = nn.with_logical_constraint(
            x.astype(jnp.dtype(self.config.dtype)), ("batch", "length", "embed")
        )
        block_cond = cond  # [B, D], or the shared projection [B, 6, D]
        if self.config.shared_aln:
            block_cond = self.shared_ada_lin(nn.silu(cond)).reshape(-1, 6, x.shape[-1])
        x, new_cache = run_blocks(
            self.blocks, x, cache, cond=block_cond, mask=mask, kv_len=kv_len, train=train
        )
        logits = self.head(self.head_nm(x.astype(jnp.float32), cond)).astype(jnp.float32)
        return nn.with_logical_constraint(logits, ("batch", "length", "vocab")), new_cache

    def __call__(
        self,
        labels: jax.Array,
        inputs: jax.Array,
        *,
        train: bool = False,
        force_drop: jax.Array | None = None,
    ) -> jax.Array:
        """Teacher-forced logits of all scales. labels: int [B]; inputs: the next-scale inputs
        [B, L - first_l, code_dim] -> float32 logits [B, L, V]."""
        cfg = self.config
        want = (labels.shape[0], cfg.seq_len - cfg.first_l, cfg.code_dim)
        if inputs.ndim != 3 or inputs.shape != want:
            raise ValueError(f"VAR inputs must be {want} (batch, L - first_l, code_dim), "
                             f"got {inputs.shape}")  # fmt: skip
        cond = self.embed_condition(labels, train=train, force_drop=force_drop)
        first = cond[:, None, :] + self.pos_start[None]
        x = jnp.concatenate([first, self.word_embed(inputs.astype(jnp.float32))], axis=1)
        x = x + self.level_position(0, cfg.seq_len)[None]
        logits, _ = self._run(x, cond, jnp.asarray(cfg.block_causal_mask()), None, None, train)
        return logits

    def scale_step(
        self,
        cond: jax.Array,
        scale_index: int,
        inputs: jax.Array | None,
        cache: StackCache,
    ) -> tuple[jax.Array, StackCache]:
        """One cached decode step: all s_k^2 tokens of scale ``scale_index`` (static) at once,
        attending to the cached earlier scales. cond: class embedding [B, D]; inputs: None for
        scale 0, else [B, s_k^2, code_dim]. Returns logits [B, s_k^2, V] and the caches."""
        x = self.scale_inputs(cond, scale_index, inputs)
        end = self.config.begin_ends[scale_index][1]
        return self._run(x, cond, None, cache, end, False)


def init_var_cache(cfg: VARConfig, batch: int, dtype: Any = None) -> StackCache:
    """Empty KV caches holding all L tokens of ``batch`` rows (per block, or stacked with
    ``scan_layers``)."""
    dtype = jnp.dtype(cfg.dtype) if dtype is None else dtype
    return init_stack_cache(
        cfg.depth, batch, cfg.seq_len, cfg.num_heads, cfg.head_dim, dtype, cfg.scan_layers
    )


def var_loss(
    model: VAR,
    params: Any,
    batch: dict[str, jax.Array],
    rng: jax.Array,
    inputs: jax.Array,
    *,
    train: bool = True,
    label_smoothing: float = 0.0,
) -> tuple[jax.Array, dict[str, jax.Array]]:
    """Cross entropy over all L tokens (VAR weights every token 1 / L).

    batch: {"codes": int [B, L] concatenated scales, "label": int [B]}; inputs: teacher
    inputs [B, L - first_l, code_dim]. Returns (loss, {loss, accuracy, accuracy_tail,
    perplexity}); ``accuracy_tail`` is over the last scale.
    """
    cfg = model.config
    codes = batch["codes"]
    check_int_input("codes", codes, 2, cfg.vocab_size)
    logits = model.apply(
        {"params": params}, batch["label"], inputs, train=train, rngs={"dropout": rng}
    )
    targets = optax.smooth_labels(jax.nn.one_hot(codes, cfg.vocab_size), label_smoothing)
    loss = optax.softmax_cross_entropy(logits, targets).mean()
    nll = optax.softmax_cross_entropy_with_integer_labels(logits, codes).mean()
    correct = logits.argmax(-1) == codes
    last = cfg.patch_nums[-1] ** 2
    return loss, {
        "loss": loss,
        "accuracy": correct.mean(),
        "accuracy_tail": correct[:, -last:].mean(),
        "perplexity": jnp.exp(nll),
    }


def make_var_task(
    cfg: VARConfig,
    quantizer: MultiScaleQuantizer,
    quantizer_params: Any,
    *,
    label_smoothing: float = 0.0,
    sample_images=None,
) -> Task:
    """A ``Task`` training ``VAR(cfg)`` on pre-tokenized batches {"codes" [B, L], "label"}.

    The teacher inputs are computed on the fly from the codes with the frozen quantizer
    (``quantizer_params``: its params, e.g. ``tokenizer_params["quantizer"]``).
    """
    if tuple(quantizer.scales) != tuple(cfg.patch_nums) or quantizer.code_dim != cfg.code_dim:
        raise ValueError(
            f"quantizer scales/code_dim {tuple(quantizer.scales)}/{quantizer.code_dim} do not "
            f"match VAR patch_nums/code_dim {cfg.patch_nums}/{cfg.code_dim}"
        )
    if quantizer.codebook_size != cfg.vocab_size:
        raise ValueError(f"codebook size {quantizer.codebook_size} != vocab {cfg.vocab_size}")
    model = VAR(cfg)
    q_vars = {"params": nn.unbox(quantizer_params)}

    def teacher_inputs(codes: jax.Array) -> jax.Array:
        maps = split_scales(jnp.asarray(codes), cfg.patch_nums)
        out = quantizer.apply(q_vars, maps, method=MultiScaleQuantizer.next_scale_inputs)
        return jax.lax.stop_gradient(out)

    def init(rng: jax.Array, batch: dict[str, Any]) -> tuple[Any, dict]:
        codes = jnp.asarray(batch["codes"]).reshape(len(batch["codes"]), -1)
        params = model.init({"params": rng}, jnp.asarray(batch["label"]), teacher_inputs(codes))
        return params["params"], {}

    def loss_fn(params, model_state, batch, rng, step):
        del step
        inputs = teacher_inputs(batch["codes"])
        loss, metrics = var_loss(model, params, batch, rng, inputs, label_smoothing=label_smoothing)
        return loss, (metrics, model_state)

    return Task(name="var", init=init, loss_fn=loss_fn, sample_images=sample_images)
