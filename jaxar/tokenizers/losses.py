"""Tokenizer training losses (VQGAN / LlamaGen): reconstruction, GAN terms, adaptive weight.

The generator objective is
    rec_weight * rec + perceptual_weight * lpips + adaptive * disc_weight(step) * gen_adv
    + codebook_weight * quantizer loss
and the discriminator's is disc_weight(step) * disc_loss(real, fake). ``disc_weight(step)`` is
zero before ``disc_start`` (LlamaGen's ``adopt_weight``). The adaptive weight is VQGAN's
||grad_W nll|| / (||grad_W gen_adv|| + 1e-4), clipped to [0, 1e4], with W the decoder's last
conv kernel.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp


@dataclasses.dataclass(frozen=True)
class LossConfig:
    """Weights of the tokenizer objective. ``disc_weight = 0`` turns the GAN off."""

    recon_loss: str = "l2"  # l1 | l2
    recon_weight: float = 1.0
    perceptual_weight: float = 0.0  # LlamaGen uses 1.0 with LPIPS weights from a file
    lpips_path: str | None = None
    codebook_weight: float = 1.0
    disc_weight: float = 0.0  # LlamaGen: 0.5
    disc_start: int = 20000
    disc_loss: str = "hinge"  # hinge | vanilla | non_saturating
    gen_loss: str = "hinge"  # hinge | non_saturating
    adaptive_weight: bool = True
    disc_channels: int = 64
    disc_layers: int = 3

    def __post_init__(self):
        if self.recon_loss not in ("l1", "l2"):
            raise ValueError(f"recon_loss must be 'l1' or 'l2', got {self.recon_loss!r}")
        if self.disc_loss not in DISC_LOSSES:
            raise ValueError(f"disc_loss must be one of {sorted(DISC_LOSSES)}")
        if self.gen_loss not in GEN_LOSSES:
            raise ValueError(f"gen_loss must be one of {sorted(GEN_LOSSES)}")

    @property
    def use_gan(self) -> bool:
        return self.disc_weight > 0


def reconstruction_loss(images: jax.Array, recon: jax.Array, kind: str = "l2") -> jax.Array:
    """Mean absolute ('l1') or squared ('l2') error over all elements. Scalar."""
    if images.shape != recon.shape:
        raise ValueError(f"reconstruction_loss: shapes differ {images.shape} vs {recon.shape}")
    diff = images.astype(jnp.float32) - recon.astype(jnp.float32)
    if kind == "l1":
        return jnp.mean(jnp.abs(diff))
    if kind == "l2":
        return jnp.mean(jnp.square(diff))
    raise ValueError(f"unknown reconstruction loss {kind!r}")


def hinge_d_loss(logits_real: jax.Array, logits_fake: jax.Array) -> jax.Array:
    """0.5 * (mean relu(1 - real) + mean relu(1 + fake))."""
    return 0.5 * (
        jnp.mean(jax.nn.relu(1.0 - logits_real)) + jnp.mean(jax.nn.relu(1.0 + logits_fake))
    )


def vanilla_d_loss(logits_real: jax.Array, logits_fake: jax.Array) -> jax.Array:
    """0.5 * (mean softplus(-real) + mean softplus(fake))."""
    return 0.5 * (jnp.mean(jax.nn.softplus(-logits_real)) + jnp.mean(jax.nn.softplus(logits_fake)))


def non_saturating_d_loss(logits_real: jax.Array, logits_fake: jax.Array) -> jax.Array:
    """Binary cross-entropy with real -> 1, fake -> 0 (equal in value to the vanilla loss)."""
    return vanilla_d_loss(logits_real, logits_fake)


def hinge_gen_loss(logits_fake: jax.Array) -> jax.Array:
    """-mean(fake)."""
    return -jnp.mean(logits_fake)


def non_saturating_gen_loss(logits_fake: jax.Array) -> jax.Array:
    """Binary cross-entropy with fake -> 1: mean softplus(-fake)."""
    return jnp.mean(jax.nn.softplus(-logits_fake))


DISC_LOSSES = {
    "hinge": hinge_d_loss,
    "vanilla": vanilla_d_loss,
    "non_saturating": non_saturating_d_loss,
}
GEN_LOSSES = {"hinge": hinge_gen_loss, "non_saturating": non_saturating_gen_loss}


def adaptive_gan_weight(nll_grads: jax.Array, gan_grads: jax.Array, max_weight: float = 1e4):
    """||nll_grads|| / (||gan_grads|| + 1e-4), clipped to [0, max_weight], no gradient.
    Both are the gradients w.r.t. the decoder's last layer."""
    weight = jnp.linalg.norm(nll_grads.reshape(-1)) / (
        jnp.linalg.norm(gan_grads.reshape(-1)) + 1e-4
    )
    return jax.lax.stop_gradient(jnp.clip(weight, 0.0, max_weight))


def disc_weight_at(step: jax.Array | int, disc_start: int, weight: float) -> jax.Array:
    """``weight`` from step ``disc_start`` on, 0 before."""
    return jnp.where(jnp.asarray(step) >= disc_start, weight, 0.0).astype(jnp.float32)


def quantizer_terms(losses: dict[str, jax.Array], prefix: str = "quant/") -> dict[str, jax.Array]:
    """Quantizer loss terms (codebook, commitment, entropy, ...) as prefixed metrics."""
    return {f"{prefix}{name}": value for name, value in losses.items()}
