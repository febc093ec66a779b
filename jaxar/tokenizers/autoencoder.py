"""Conv VQ autoencoder (VQGAN / LlamaGen layout): encoder + quantizer + decoder.

``Encoder``: conv_in, per resolution level ``num_res_blocks`` ResnetBlocks (+ AttnBlocks at the
lowest resolution) and a Downsample between levels, a mid block (res, attn, res), GroupNorm,
swish, conv_out to ``z_channels``. ``Decoder`` mirrors it with ``num_res_blocks + 1`` blocks per
level. ``Tokenizer`` adds ``quant_conv`` (z_channels -> code dim; 1x1, or 3x3 as VAR's VQVAE) and
``post_quant_conv``.
Module names follow LlamaGen's state dict (``conv_blocks_{i}_res_{j}`` <-> ``conv_blocks.i.res.j``)
so that ``jaxar.convert.llamagen_vq`` converts released checkpoints by renaming.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxar.layers.conv import AttnBlock, Downsample, ResnetBlock, Upsample, conv, group_norm
from jaxar.presets import from_preset
from jaxar.quantizers import QUANTIZERS, QuantizerOutput


@dataclasses.dataclass(frozen=True)
class TokenizerConfig:
    """Hyperparameters of a conv tokenizer. ``quantizer`` is one of vq, rq, msvq, fsq, lfq, ibq,
    or kl (a continuous tokenizer: a diagonal Gaussian bottleneck whose latents are float
    vectors of ``code_dim``); the fields after it configure the chosen quantizer (others are
    ignored)."""

    image_channels: int = 3
    ch: int = 128
    ch_mult: tuple[int, ...] = (1, 1, 2, 2, 4)
    num_res_blocks: int = 2
    z_channels: int = 256
    norm_groups: int = 32
    dropout: float = 0.0
    quantizer: str = "vq"
    codebook_size: int = 16384
    code_dim: int = 8
    l2_norm: bool = True
    beta: float = 0.25
    entropy_weight: float = 0.0
    entropy_temperature: float = 0.01
    use_ema: bool = False
    ema_decay: float = 0.99
    dead_code_steps: int = 0
    rq_depth: int = 4
    scales: tuple[int, ...] = (1, 2, 3, 4, 5, 6, 8, 10, 13, 16)
    quant_resi: float = 0.5
    num_phi: int = 4
    fsq_levels: tuple[int, ...] = (8, 8, 8, 5, 5, 5)
    quant_conv_kernel: int = 1  # quant_conv / post_quant_conv size (VAR's VQVAE: 3)
    kl_weight: float = 1e-6  # kl: weight of the per-element KL (see jaxar.quantizers.gaussian)
    sample_latents: bool = True  # kl: decode posterior samples in training (else the means)
    double_z: bool = True  # kl: the encoder's conv_out gives 2 * z_channels (LDM)
    decoder_attn: bool = True  # attention in the decoder's lowest level (LDM's KL-16: False)

    def __post_init__(self):
        if self.quantizer not in QUANTIZERS:
            raise ValueError(f"unknown quantizer {self.quantizer!r}; known: {sorted(QUANTIZERS)}")
        if self.image_channels < 1 or self.ch < 1 or not self.ch_mult or self.num_res_blocks < 1:
            raise ValueError(f"bad tokenizer sizes in {self}")
        if self.quant_conv_kernel < 1 or self.quant_conv_kernel % 2 == 0:
            raise ValueError(f"quant_conv_kernel must be odd, got {self.quant_conv_kernel}")
        for width in [self.ch * m for m in self.ch_mult]:
            if width % self.norm_groups:
                raise ValueError(f"norm_groups={self.norm_groups} does not divide width {width}")

    @property
    def downsample_factor(self) -> int:
        return 2 ** (len(self.ch_mult) - 1)

    @property
    def continuous(self) -> bool:
        """Whether tokens are float latent vectors (kl) rather than code ids."""
        return self.quantizer == "kl"

    @property
    def latent_dim(self) -> int:
        """Channels of one quantized latent (the decoder's input; a continuous token's size)."""
        return len(self.fsq_levels) if self.quantizer == "fsq" else self.code_dim

    @property
    def moments_dim(self) -> int:
        """Channels entering the quantizer (``quant_conv``'s output): 2 * code_dim for kl."""
        return 2 * self.code_dim if self.continuous else self.latent_dim

    @property
    def encoder_channels(self) -> int:
        """Channels of the encoder's output (2 * z_channels for kl with double_z)."""
        return 2 * self.z_channels if self.continuous and self.double_z else self.z_channels

    @property
    def vocab_size(self) -> int:
        """Number of distinct codes per token."""
        if self.continuous:
            raise ValueError(
                "a continuous (kl) tokenizer has no code vocabulary: its tokens are float "
                f"latents of {self.code_dim} channels; train a continuous-token family (mar)"
            )
        if self.quantizer == "fsq":
            size = 1
            for level in self.fsq_levels:
                size *= level
            return size
        return 2**self.code_dim if self.quantizer == "lfq" else self.codebook_size

    def code_shape(self, image_size: int) -> tuple:
        """Shape of one image's codes: (h, w); (h, w, depth) for rq; ((s, s), ...) for msvq;
        (h, w, code_dim) float latents for kl."""
        if image_size % self.downsample_factor:
            raise ValueError(
                f"image size {image_size} is not divisible by the downsampling factor "
                f"{self.downsample_factor}"
            )
        h = image_size // self.downsample_factor
        if self.quantizer == "rq":
            return (h, h, self.rq_depth)
        if self.continuous:
            return (h, h, self.code_dim)
        if self.quantizer == "msvq":
            if self.scales[-1] != h:
                raise ValueError(f"msvq: last scale {self.scales[-1]} != latent size {h}")
            return tuple((s, s) for s in self.scales)
        return (h, h)


def make_quantizer(cfg: TokenizerConfig, name: str = "quantizer") -> nn.Module:
    """The quantizer module a config describes."""
    k, d, q = cfg.codebook_size, cfg.code_dim, cfg.quantizer
    if q == "vq":
        return QUANTIZERS[q](
            codebook_size=k, code_dim=d, beta=cfg.beta, l2_norm=cfg.l2_norm,
            entropy_weight=cfg.entropy_weight, entropy_temperature=cfg.entropy_temperature,
            use_ema=cfg.use_ema, ema_decay=cfg.ema_decay, dead_code_steps=cfg.dead_code_steps,
            name=name,
        )  # fmt: skip
    if q == "rq":
        return QUANTIZERS[q](
            codebook_size=k, code_dim=d, depth=cfg.rq_depth, beta=cfg.beta, name=name
        )
    if q == "msvq":
        return QUANTIZERS[q](
            codebook_size=k, code_dim=d, scales=cfg.scales, beta=cfg.beta,
            quant_resi=cfg.quant_resi, num_phi=cfg.num_phi, l2_norm=cfg.l2_norm, name=name,
        )  # fmt: skip
    if q == "fsq":
        return QUANTIZERS[q](levels=cfg.fsq_levels, name=name)
    if q == "kl":
        return QUANTIZERS[q](
            code_dim=d, kl_weight=cfg.kl_weight, sample_latents=cfg.sample_latents, name=name
        )
    if q == "lfq":
        return QUANTIZERS[q](
            code_dim=d, beta=cfg.beta, entropy_weight=cfg.entropy_weight,
            temperature=cfg.entropy_temperature, name=name,
        )  # fmt: skip
    return QUANTIZERS[q](
        codebook_size=k, code_dim=d, beta=cfg.beta, entropy_weight=cfg.entropy_weight,
        entropy_temperature=cfg.entropy_temperature, name=name,
    )  # fmt: skip


class Encoder(nn.Module):
    """Images [B, H, W, C] -> latents [B, H/f, W/f, z_channels], f = 2^(len(ch_mult)-1)."""

    ch: int
    ch_mult: Sequence[int]
    num_res_blocks: int
    z_channels: int
    norm_groups: int = 32
    dropout: float = 0.0

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        g, levels = self.norm_groups, len(self.ch_mult)
        h = conv(self.ch, name="conv_in")(x)
        for i, mult in enumerate(self.ch_mult):
            for j in range(self.num_res_blocks):
                h = ResnetBlock(self.ch * mult, g, self.dropout, name=f"conv_blocks_{i}_res_{j}")(
                    h, train
                )
                if i == levels - 1:
                    h = AttnBlock(g, name=f"conv_blocks_{i}_attn_{j}")(h)
            if i != levels - 1:
                h = Downsample(name=f"conv_blocks_{i}_downsample")(h)
        width = h.shape[-1]
        h = ResnetBlock(width, g, self.dropout, name="mid_0")(h, train)
        h = AttnBlock(g, name="mid_1")(h)
        h = ResnetBlock(width, g, self.dropout, name="mid_2")(h, train)
        h = nn.swish(group_norm(g, width, name="norm_out")(h))
        return conv(self.z_channels, name="conv_out")(h)


class Decoder(nn.Module):
    """Latents [B, h, w, z_channels] -> images [B, h*f, w*f, out_channels].

    With ``return_features`` it stops before ``conv_out`` and returns its input
    [B, H, W, ch * ch_mult[0]] (used for the adaptive GAN weight)."""

    ch: int
    ch_mult: Sequence[int]
    num_res_blocks: int
    out_channels: int
    norm_groups: int = 32
    dropout: float = 0.0
    attn: bool = True  # AttnBlocks in the lowest-resolution level (not in LDM's KL decoders)

    @nn.compact
    def __call__(self, z: jax.Array, train: bool = False, return_features: bool = False):
        g, levels = self.norm_groups, len(self.ch_mult)
        width = self.ch * self.ch_mult[-1]
        h = conv(width, name="conv_in")(z)
        h = ResnetBlock(width, g, self.dropout, name="mid_0")(h, train)
        h = AttnBlock(g, name="mid_1")(h)
        h = ResnetBlock(width, g, self.dropout, name="mid_2")(h, train)
        for i, mult in enumerate(reversed(self.ch_mult)):  # i = 0 is the lowest resolution
            for j in range(self.num_res_blocks + 1):
                h = ResnetBlock(self.ch * mult, g, self.dropout, name=f"conv_blocks_{i}_res_{j}")(
                    h, train
                )
                if i == 0 and self.attn:
                    h = AttnBlock(g, name=f"conv_blocks_{i}_attn_{j}")(h)
            if i != levels - 1:
                h = Upsample(name=f"conv_blocks_{i}_upsample")(h)
        h = nn.swish(group_norm(g, h.shape[-1], name="norm_out")(h))
        if return_features:
            return h
        return conv(self.out_channels, name="conv_out", shard_out=False)(h)


def apply_conv_out(features: jax.Array, kernel: jax.Array, bias: jax.Array) -> jax.Array:
    """The decoder's last 3x3 conv as a pure function of its params (for gradients w.r.t. it).
    features [B, H, W, Cin], kernel [3, 3, Cin, Cout], bias [Cout] -> [B, H, W, Cout]."""
    out = jax.lax.conv_general_dilated(
        features, kernel, (1, 1), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC")
    )
    return out + bias


class Tokenizer(nn.Module):
    """Encoder -> quant_conv -> quantizer -> post_quant_conv -> decoder."""

    config: TokenizerConfig

    def setup(self):
        c = self.config
        self.encoder = Encoder(
            c.ch, c.ch_mult, c.num_res_blocks, c.encoder_channels, c.norm_groups, c.dropout
        )
        k = c.quant_conv_kernel
        self.quant_conv = conv(c.moments_dim, k, padding=k // 2, shard_out=False)
        self.quantizer = make_quantizer(c)
        self.post_quant_conv = conv(c.z_channels, k, padding=k // 2)
        self.decoder = Decoder(
            c.ch, c.ch_mult, c.num_res_blocks, c.image_channels, c.norm_groups, c.dropout,
            attn=c.decoder_attn,
        )  # fmt: skip

    def _check_images(self, images: jax.Array) -> None:
        c = self.config
        if images.ndim != 4:
            raise ValueError(f"Tokenizer: expected images [B, H, W, C], got shape {images.shape}")
        if images.shape[-1] != c.image_channels:
            raise ValueError(
                f"Tokenizer: expected {c.image_channels} image channels, got {images.shape[-1]}"
            )
        f = c.downsample_factor
        if images.shape[1] % f or images.shape[2] % f:
            raise ValueError(
                f"Tokenizer: image size {images.shape[1]}x{images.shape[2]} is not divisible by "
                f"the downsampling factor {f}"
            )
        if c.quantizer == "msvq" and images.shape[1] // f != c.scales[-1]:
            raise ValueError(f"Tokenizer: msvq needs images of size {c.scales[-1] * f}")

    def encode(self, images: jax.Array, train: bool = False) -> jax.Array:
        """Images [B, H, W, C] -> pre-quantization latents [B, h, w, moments_dim]."""
        self._check_images(images)
        return self.quant_conv(self.encoder(images, train))

    def decode_latents(self, quantized: jax.Array, train: bool = False) -> jax.Array:
        """Quantized latents [B, h, w, latent_dim] -> images [B, H, W, C] (not clipped)."""
        return self.decoder(self.post_quant_conv(quantized), train)

    def __call__(self, images: jax.Array, train: bool = False) -> tuple[jax.Array, QuantizerOutput]:
        """Images [B, H, W, C] in [-1, 1] -> (reconstruction [B, H, W, C], QuantizerOutput)."""
        out = self.quantizer(self.encode(images, train), train=train)
        return self.decode_latents(out.quantized, train), out

    def forward_features(self, images: jax.Array, train: bool = False):
        """Like ``__call__`` but returns the decoder's features before ``conv_out``."""
        out = self.quantizer(self.encode(images, train), train=train)
        features = self.decoder(self.post_quant_conv(out.quantized), train, return_features=True)
        return features, out

    def encode_to_codes(self, images: jax.Array) -> Any:
        """Images [B, H, W, C] -> codes (int32 [B, h, w]; see ``TokenizerConfig.code_shape``;
        kl: the posterior means, float32 [B, h, w, code_dim])."""
        return self.quantizer.encode_to_codes(self.encode(images))

    def decode_codes(self, codes: Any) -> jax.Array:
        """Codes -> images [B, H, W, C] clipped to [-1, 1]."""
        return jnp.clip(self.decode_latents(self.quantizer.decode_codes(codes)), -1.0, 1.0)

    def code_shape(self, image_size: int) -> tuple:
        return self.config.code_shape(image_size)

    def next_scale_inputs(self, codes: Sequence[jax.Array]) -> jax.Array:
        """msvq only: VAR teacher-forcing inputs [B, sum_{k>=1} s_k^2, code_dim]."""
        if self.config.quantizer != "msvq":
            raise ValueError("next_scale_inputs needs the msvq quantizer")
        return self.quantizer.next_scale_inputs(codes)

    def partial_sums(self, codes: jax.Array) -> jax.Array:
        """rq only: cumulative depth embeddings [B, h, w, depth, code_dim]."""
        if self.config.quantizer != "rq":
            raise ValueError("partial_sums needs the rq quantizer")
        return self.quantizer.partial_sums(codes)


_DIGITS = dict(
    image_channels=1, ch=32, ch_mult=(1, 2), num_res_blocks=1, z_channels=32, norm_groups=8,
    codebook_size=256, code_dim=8,
)  # fmt: skip

PRESETS: dict[str, TokenizerConfig] = {
    # LlamaGen VQ-16: 16x downsampling, 16384 x 8 l2-normalised codebook.
    "vq16": TokenizerConfig(),
    # LlamaGen VQ-8.
    "vq8": TokenizerConfig(ch_mult=(1, 2, 2, 4)),
    # VAR's VQVAE (vae_ch160v4096z32.pth): 4096 x 32 codes, 3x3 quant convs, 256 px scales.
    "var_vqvae": TokenizerConfig(
        ch=160,
        z_channels=32,
        quantizer="msvq",
        codebook_size=4096,
        code_dim=32,
        l2_norm=False,
        quant_conv_kernel=3,
    ),  # fmt: skip
    # Tiny tokenizers for 16x16 grey digits (8x8 latent grid).
    "digits_vq": TokenizerConfig(**_DIGITS),
    "digits_rq": TokenizerConfig(**_DIGITS, quantizer="rq", rq_depth=2),
    "digits_msvq": TokenizerConfig(
        **_DIGITS, quantizer="msvq", l2_norm=False, scales=(1, 2, 4, 6, 8)
    ),
    "digits_fsq": TokenizerConfig(**_DIGITS, quantizer="fsq", fsq_levels=(8, 6, 5)),
    "digits_lfq": TokenizerConfig(**_DIGITS, quantizer="lfq", entropy_weight=0.1),
    "digits_ibq": TokenizerConfig(**_DIGITS, quantizer="ibq", entropy_weight=0.1),
    # MAR's KL-16 VAE (LDM AutoencoderKL, kl16.ckpt): 16-channel latents at 16x downsampling;
    # attention only in the encoder's lowest level and the mid blocks.
    "kl16": TokenizerConfig(
        z_channels=16, quantizer="kl", code_dim=16, double_z=True, decoder_attn=False
    ),
    # A continuous tokenizer for 16x16 grey digits: 8x8 latents of 4 channels.
    "digits_kl": TokenizerConfig(
        **{**_DIGITS, "code_dim": 4}, quantizer="kl", kl_weight=1e-6, decoder_attn=False
    ),
}


def vq16(**overrides: Any) -> TokenizerConfig:
    """LlamaGen's VQ-16 tokenizer config (ch=128, ch_mult=(1,1,2,2,4), 16384 x 8 codes)."""
    return get_preset("vq16", **overrides)


def get_preset(name: str, **overrides: Any) -> TokenizerConfig:
    """A named config from ``PRESETS`` with fields replaced by ``overrides``."""
    return from_preset(PRESETS, name, "tokenizer", **overrides)
